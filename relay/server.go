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
	"slices"
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
	// NextSecret, if set, is accepted as well as Secret: the other secret
	// of a rotation in progress (README, Operations).
	NextSecret []byte
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
	// MaxPendingHandshakes bounds the connections that have not proved the
	// secret yet; past it the oldest of them is closed (guard.go).
	MaxPendingHandshakes int
	// MaxPendingPerIP bounds them per source address (IPv6: per /64); a
	// connection past it is closed at once.
	MaxPendingPerIP int
	// ForgetAfter is how long a server whose link is down stays in
	// /healthz and /metrics.
	ForgetAfter time.Duration
	// MaxKnownServers bounds the servers remembered; past it those down
	// longest are forgotten first (a server whose link is up never is).
	MaxKnownServers int
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
	DefaultMaxPending       = 1024
	DefaultMaxPendingPerIP  = 64
	DefaultForgetAfter      = 24 * time.Hour
	DefaultMaxKnownServers  = 1024
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
	if c.MaxPendingHandshakes == 0 {
		c.MaxPendingHandshakes = DefaultMaxPending
	}
	if c.MaxPendingPerIP == 0 {
		c.MaxPendingPerIP = DefaultMaxPendingPerIP
	}
	if c.ForgetAfter == 0 {
		c.ForgetAfter = DefaultForgetAfter
	}
	if c.MaxKnownServers == 0 {
		c.MaxKnownServers = DefaultMaxKnownServers
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
	if c.NextSecret != nil && len(c.NextSecret) < wire.MinSecretLen {
		errs = append(errs, fmt.Errorf("next link secret must be at least %d bytes", wire.MinSecretLen))
	}
	if c.MaxPendingHandshakes < 0 || c.MaxPendingPerIP < 0 || c.MaxKnownServers < 0 || c.ForgetAfter < 0 {
		errs = append(errs, errors.New("pending handshake limits, max known servers and forget-after must not be negative"))
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

	started  time.Time
	gate     *handshakeGate
	refusals *refusalLog
	// staleAfter is the silence after which a link is presumed dead when
	// its server links again (admit).
	staleAfter time.Duration

	mu           sync.RWMutex
	vips         []*VIPWatcher      // one per VIP; none when no VIP is configured
	noLinksSince time.Time          // when the last link went down (or start); zero while links are up
	routes       map[string][]*link // server id -> its live links, oldest first: one per address it dialled (VIP), at most maxLinksPerServer
	seen         map[string]*status // server id -> last known state, kept a while after it goes down (status.go)
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
	log := cfg.Logger.With("relay", cfg.ID)
	r := &Relay{
		cfg:          cfg,
		log:          log,
		m:            cfg.Metrics,
		ctx:          ctx,
		cancel:       cancel,
		started:      time.Now(),
		gate:         newHandshakeGate(cfg.MaxPendingHandshakes, cfg.MaxPendingPerIP, cfg.Metrics),
		refusals:     newRefusalLog(log),
		staleAfter:   min(2*cfg.PingInterval, cfg.DeadAfter),
		noLinksSince: time.Now(),
		routes:       make(map[string][]*link),
		seen:         make(map[string]*status),
		listeners:    make(map[net.Listener]struct{}),
		conns:        make(map[net.Conn]struct{}),
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.forgetLoop()
	}()
	return r, nil
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
		p, err := r.gate.enter(conn)
		if err != nil {
			r.refused(conn.RemoteAddr().String(), "", err)
			conn.Close()
			continue
		}
		if !r.track(conn) {
			r.gate.leave(p)
			conn.Close()
			return nil
		}
		go func() {
			defer r.wg.Done()
			defer r.untrack(conn)
			r.serveConn(conn, p)
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
	r.refusals.stop()
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

// errAlreadyLinked refuses a link for a server id whose link is alive.
var errAlreadyLinked = errors.New("server id already linked")

// maxLinksPerServer is how many links one server id may hold at once: one
// per VIP it dials, and a relay pair has one or two VIPs. While both VIPs
// sit on one relay, each server holds two links to it.
const maxLinksPerServer = 2

// admit decides whether an authenticated server may link now, on the
// local address local (the VIP it dialled). A server id has one link per
// local address, at most maxLinksPerServer, and a new link for an id whose
// link on that address is alive is refused: the link secret alone must
// not let anyone take msg-1's traffic. But a server whose host crashed,
// or whose network was cut, redials before the relay has noticed its old
// link dead (which takes up to DeadAfter). A live link hears from its
// server at every ping, so a link silent for two ping intervals
// (staleAfter) is presumed dead and the newer link replaces it (register
// closes it). A refused server retries with backoff and is linked once its
// old link is that silent, or gone.
func (r *Relay) admit(server, local string) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	live := 0
	for _, old := range r.routes[server] {
		if time.Since(time.Unix(0, old.stats.LastRecv.Load())) >= r.staleAfter {
			continue
		}
		if old.local == local {
			return errAlreadyLinked
		}
		live++
	}
	if live >= maxLinksPerServer {
		return errAlreadyLinked
	}
	return nil
}

// register makes l a route for its server, replacing (and closing) an
// older link of the same server on the same local address (one admit found
// silent, or one that won a race of two handshakes), and the most silent
// one when the server would have more than maxLinksPerServer.
func (r *Relay) register(l *link) {
	r.mu.Lock()
	var drop []*link
	links := r.routes[l.server][:0:0]
	for _, old := range r.routes[l.server] {
		if old.local == l.local {
			drop = append(drop, old)
		} else {
			links = append(links, old)
		}
	}
	links = append(links, l)
	for len(links) > maxLinksPerServer {
		i := 0
		for j, o := range links[:len(links)-1] {
			if o.stats.LastRecv.Load() < links[i].stats.LastRecv.Load() {
				i = j
			}
		}
		drop = append(drop, links[i])
		links = append(links[:i], links[i+1:]...)
	}
	r.routes[l.server] = links
	r.noLinksSince = time.Time{}
	st := r.seen[l.server]
	if st == nil {
		st = &status{}
		r.seen[l.server] = st
	}
	st.up(l, len(links))
	r.m.linkUp(l.server, len(r.routes)) // under the lock: a late linkDown cannot overwrite it
	r.forgetLocked(time.Now())          // one more remembered: maybe one too many
	r.mu.Unlock()
	for _, old := range drop {
		r.log.Info("link replaced by a newer one", "server", l.server, "old_remote", old.remote, "local", old.local)
		old.close()
	}
}

// unregister removes l from its server's routes, if it is still one.
func (r *Relay) unregister(l *link) {
	r.mu.Lock()
	defer r.mu.Unlock()
	links := r.routes[l.server]
	i := slices.Index(links, l)
	if i < 0 {
		return
	}
	links = slices.Delete(slices.Clone(links), i, i+1)
	st := r.seen[l.server]
	if len(links) > 0 {
		r.routes[l.server] = links
		if st != nil {
			st.up(links[len(links)-1], len(links))
		}
		return
	}
	delete(r.routes, l.server)
	if len(r.routes) == 0 {
		r.noLinksSince = time.Now()
	}
	if st != nil {
		st.down(l)
	}
	r.m.linkDown(l.server, len(r.routes))
}

// route returns the link a frame for dest goes over: its server's oldest
// live link, so that what one relay passes to a server keeps one order.
func (r *Relay) route(dest []byte) *link {
	r.mu.RLock()
	var l *link
	if links := r.routes[string(dest)]; len(links) > 0 { // no allocation: the compiler special-cases this lookup
		l = links[0]
	}
	r.mu.RUnlock()
	return l
}
