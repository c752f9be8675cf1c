// Package relay is the relay: it accepts authenticated uplinks from
// message servers and passes Forward, Ack and Kick frames to the link of
// their destination server. It keeps no state beyond its live links: message
// servers own retries, acks and presence.
package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/internal/netx"
	"github.com/chatrelay/chatrelay/wire"
)

// Config holds the relay's settings. Zero values take the defaults below.
type Config struct {
	// ID names this relay in handshakes and logs (e.g. the host name).
	ID string
	// Secret is the shared link secret message servers must prove.
	Secret []byte
	// TLS, if set, makes the link port serve TLS (certs.ServerConfig, its
	// certificate reloaded on renewal); with ClientAuth set to
	// tls.RequireAndVerifyClientCert it is mutual, and each server's id is
	// bound to its certificate (tls.go). Nil serves plaintext.
	TLS *tls.Config
	// MaxFrame is the largest frame accepted from a link, in bytes.
	MaxFrame int
	// MaxQueueBytes bounds each link's unwritten outbound bytes; a link
	// past it is cut as a slow consumer (its server resends after reconnect).
	MaxQueueBytes int
	// HandshakeTimeout bounds the whole handshake.
	HandshakeTimeout time.Duration
	// PingInterval is how often the relay pings each idle link.
	PingInterval time.Duration
	// DeadAfter closes a link that has sent nothing for this long.
	DeadAfter time.Duration
	// WriteTimeout bounds each write to a link.
	WriteTimeout time.Duration
	// Logger receives the relay's events; nil means slog.Default().
	Logger *slog.Logger
	// Metrics, if not nil, records link and forwarding metrics.
	Metrics *Metrics
}

// Defaults for Config fields left zero.
const (
	DefaultMaxFrame         = 1 << 20
	DefaultMaxQueueBytes    = 64 << 20
	DefaultHandshakeTimeout = 5 * time.Second
	DefaultPingInterval     = 200 * time.Millisecond
	DefaultDeadAfter        = time.Second
	DefaultWriteTimeout     = 5 * time.Second
)

func (c *Config) setDefaults() {
	if c.MaxFrame == 0 {
		c.MaxFrame = DefaultMaxFrame
	}
	if c.MaxQueueBytes == 0 {
		c.MaxQueueBytes = DefaultMaxQueueBytes
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.PingInterval == 0 {
		c.PingInterval = DefaultPingInterval
	}
	if c.DeadAfter == 0 {
		c.DeadAfter = DefaultDeadAfter
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports every problem with the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.ID == "" || len(c.ID) > wire.MaxIDLen {
		errs = append(errs, fmt.Errorf("relay id must be 1..%d bytes", wire.MaxIDLen))
	}
	if len(c.Secret) < wire.MinSecretLen {
		errs = append(errs, fmt.Errorf("link secret must be at least %d bytes", wire.MinSecretLen))
	}
	if c.MaxFrame < 1024 {
		errs = append(errs, fmt.Errorf("max frame %d is below 1024 bytes", c.MaxFrame))
	}
	if c.MaxQueueBytes < c.MaxFrame {
		errs = append(errs, fmt.Errorf("max queue %d bytes is below max frame %d", c.MaxQueueBytes, c.MaxFrame))
	}
	if c.PingInterval >= c.DeadAfter {
		errs = append(errs, fmt.Errorf("ping interval %s must be shorter than dead-after %s", c.PingInterval, c.DeadAfter))
	}
	return errors.Join(errs...)
}

// Relay is a running relay.
type Relay struct {
	cfg Config
	log *slog.Logger
	m   *Metrics

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	started time.Time

	mu           sync.RWMutex
	vip          *VIPWatcher        // nil when no VIP is configured
	noLinksSince time.Time          // when the last link went down (or start); zero while links are up
	routes       map[string]*link   // server id -> its live link
	seen         map[string]*status // server id -> last known state, kept after it goes down
	listeners    map[net.Listener]struct{}
	conns        map[net.Conn]struct{} // every accepted conn, for Close
}

// New checks cfg and returns a relay ready to Serve.
func New(cfg Config) (*Relay, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("relay config: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Relay{
		cfg:          cfg,
		log:          cfg.Logger.With("relay", cfg.ID),
		m:            cfg.Metrics,
		ctx:          ctx,
		cancel:       cancel,
		started:      time.Now(),
		noLinksSince: time.Now(),
		routes:       make(map[string]*link),
		seen:         make(map[string]*status),
		listeners:    make(map[net.Listener]struct{}),
		conns:        make(map[net.Conn]struct{}),
	}, nil
}

// Serve accepts links on ln until Close. It returns nil after Close.
func (r *Relay) Serve(ln net.Listener) error {
	r.mu.Lock()
	if r.ctx.Err() != nil {
		r.mu.Unlock()
		ln.Close()
		return nil
	}
	r.listeners[ln] = struct{}{}
	r.mu.Unlock()
	r.log.Info("relay listening", "addr", ln.Addr().String(), "tls", r.cfg.TLS != nil, "mutual", r.cfg.TLS != nil && r.cfg.TLS.ClientAuth == tls.RequireAndVerifyClientCert)
	for {
		conn, err := netx.Accept(ln, r.log, func() bool { return r.ctx.Err() != nil })
		if conn == nil {
			return err
		}
		if !r.track(conn) {
			conn.Close()
			return nil
		}
		go func() {
			defer r.wg.Done()
			defer r.untrack(conn)
			r.serveConn(conn)
		}()
	}
}

// track registers an accepted connection and counts its goroutine, under
// the lock Close takes, so Close waits for every connection it did not refuse.
func (r *Relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctx.Err() != nil {
		return false
	}
	r.conns[c] = struct{}{}
	r.wg.Add(1)
	return true
}

func (r *Relay) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
	c.Close()
}

// Close stops accepting, closes every link and waits for their goroutines.
func (r *Relay) Close() error {
	r.mu.Lock()
	r.cancel()
	for ln := range r.listeners {
		ln.Close()
	}
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
	return nil
}

// DropLinks closes every link whose local address is ip (or every link when
// ip is nil), so their servers reconnect at once: the relay does this when
// it loses the VIP.
func (r *Relay) DropLinks(ip net.IP) int {
	r.mu.RLock()
	var victims []net.Conn
	for c := range r.conns {
		if ip == nil {
			victims = append(victims, c)
			continue
		}
		if a, ok := c.LocalAddr().(*net.TCPAddr); ok && a.IP.Equal(ip) {
			victims = append(victims, c)
		}
	}
	r.mu.RUnlock()
	for _, c := range victims {
		c.Close()
	}
	return len(victims)
}

// register makes l the route for its server, replacing (and closing) an
// older link of the same server.
func (r *Relay) register(l *link) {
	r.mu.Lock()
	old := r.routes[l.server]
	r.routes[l.server] = l
	r.noLinksSince = time.Time{}
	st := r.seen[l.server]
	if st == nil {
		st = &status{}
		r.seen[l.server] = st
	}
	st.up(l)
	r.m.linkUp(l.server, len(r.routes)) // under the lock: a late linkDown cannot overwrite it
	r.mu.Unlock()
	if old != nil {
		r.log.Info("link replaced by a newer one", "server", l.server, "old_remote", old.remote)
		old.close()
	}
}

// unregister removes l if it is still the route for its server.
func (r *Relay) unregister(l *link) {
	r.mu.Lock()
	current := r.routes[l.server] == l
	if current {
		delete(r.routes, l.server)
		if len(r.routes) == 0 {
			r.noLinksSince = time.Now()
		}
		if st := r.seen[l.server]; st != nil {
			st.down(l)
		}
		r.m.linkDown(l.server, len(r.routes))
	}
	r.mu.Unlock()
}

func (r *Relay) route(dest []byte) *link {
	r.mu.RLock()
	l := r.routes[string(dest)] // no allocation: the compiler special-cases this lookup
	r.mu.RUnlock()
	return l
}
