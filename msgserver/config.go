// Package msgserver is the message server: it holds client sessions on a
// line-oriented JSON protocol, records who is where in Redis, delivers
// messages to local users directly and to users on other servers through its
// link to the relay, and keeps messages for offline users (Redis: package store).
//
// Where things are: server.go runs the server and reads the relay link's
// events; session.go and park.go a client's connection (park.go: idle ones
// waiting in the poller); tls.go the TLS handshake of a client port that
// serves TLS; protocol.go the client protocol and names.go its
// rules for user names; chat.go routing a chat message and offline.go how
// one is kept for an offline user, within which limits; relaylink.go the
// link client (dial, handshake, heartbeats, redial); ledger.go the messages
// forwarded and not yet acknowledged; loginbatch.go, release.go and
// inboxwatch.go the batched Redis work around logins and disconnects;
// auth.go the keys and the check of signed logins; limits.go what a
// connection or a source address may cost.
package msgserver

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/wire"
)

// Config holds a message server's settings. Zero values take the defaults
// listed beside each field (the Default constants below).
type Config struct {
	// ID names this server to the relay and in presence records ("msg-1").
	ID string
	// AdvertiseAddr is the client address published in the server registry.
	AdvertiseAddr string
	// RelayAddr is the relay (VIP) link address, host:port, or two of them
	// separated by a comma (the two VIPs of a relay pair that both carry
	// traffic: the server holds a link to each). Empty runs the server
	// alone: only local delivery and offline storage.
	RelayAddr string
	// Secret is the shared link secret (at least 16 bytes): the server
	// proves it to the relay.
	Secret []byte
	// NextSecret, if set, is the other secret of a rotation in progress:
	// a relay that proves it is accepted too (README, Operations).
	NextSecret []byte
	// Redis holds presence, the server registry and offline inboxes
	// (package store keeps them there).
	Redis redis.UniversalClient

	// TLS, if set, makes the client port serve TLS (certs.ServerConfig,
	// whose certificate is reloaded on renewal); nil serves plaintext.
	TLS *tls.Config
	// HandshakeTimeout bounds a client's TLS handshake (default 5s), and
	// on the web port the time to a request's last header.
	HandshakeTimeout time.Duration
	// AllowedOrigins are the browser origins, besides the page's own, whose
	// pages may open a WebSocket session on the web port (ServeWeb): host
	// patterns ("chat.example.com", "*.example.com") or, with a scheme,
	// origin patterns ("https://chat.example.com"), as path.Match reads them.
	AllowedOrigins []string
	// LinkTLS, if set, dials the relay over TLS: RootCAs verifies the
	// relay's certificate, for ServerName (empty: RelayAddr's host), and a
	// client certificate (GetClientCertificate) is shown to a relay that
	// asks for one. Nil dials plaintext.
	LinkTLS *tls.Config

	MaxLine           int           // longest client line in bytes (default 8 KiB)
	MaxContent        int           // longest chat content in bytes (default 4 KiB)
	MaxNameLen        int           // longest user name in bytes (default 64)
	MaxSessions       int           // connected clients (default 200000; lowered at start to the descriptor limit less FDHeadroom)
	SessionQueueBytes int           // unwritten bytes per client before it is cut (default 1 MiB)
	IdleTimeout       time.Duration // client silence before disconnect (default 2m)
	// ParkIdleAfter is the client silence after which a session gives up
	// its goroutine and read buffer and waits in the poller (default 5s;
	// negative: never). See park.go.
	ParkIdleAfter time.Duration
	WriteTimeout  time.Duration // per write to a client or the relay (default 10s)

	// What one client or one source address may cost (limits.go). The
	// per-address limits count IPv4 sources by address and IPv6 sources by
	// /64, the block one subscriber usually has.
	LoginTimeout    time.Duration // a connection must log in within this (default 30s)
	LineTimeout     time.Duration // a line must be complete within this of its first byte (default 10s)
	RequestRate     float64       // requests per second a connection may sustain (default 500; negative: no limit)
	RequestBurst    int           // requests a connection may send at once above that rate (default 1000)
	MaxConnsPerIP   int           // open connections per source address (default 1000; negative: no cap)
	LoginRatePerIP  float64       // login requests per second per source address (default 50; negative: no limit)
	LoginBurstPerIP int           // login requests a source address may send at once (default 500)
	// PerIPExempt are the source networks the per-address limits skip: nil
	// means loopback (127.0.0.0/8 and ::1), where a local proxy or a load
	// test speaks for many clients; an empty non-nil slice exempts none.
	PerIPExempt []netip.Prefix
	// FDHeadroom is how many descriptors are kept out of MaxSessions for
	// Redis, the relay link, the admin port and the listeners (default
	// 256), so that a server short of descriptors says server_full rather
	// than failing to accept.
	FDHeadroom int

	PresenceTTL time.Duration // TTL of a user's presence record (default 30s), refreshed every third of it
	RegistryTTL time.Duration // TTL of this server's registry entry (default 6s), refreshed every third
	InboxMax    int           // offline messages an inbox holds; more are refused with inbox_full (default 200)
	InboxTTL    time.Duration // how long an offline inbox lives (default 7 days)
	// UnackedMax is how many events a session with acks may hold unacked
	// beyond its inbox's InboxMax (default 100): past it the session is
	// closed with too_many_unacked (acks.go).
	UnackedMax    int
	RouteCacheTTL time.Duration // how long a looked-up location is trusted (default 10s)
	RedisTimeout  time.Duration // per Redis call from a client request (default 1s)

	// OfflineMaxBytes is the Redis memory use (INFO used_memory, read
	// every second) above which offline messages are refused with
	// offline_full (default 256 MiB; negative: no cap). offline.go says
	// why it is Redis's own figure.
	OfflineMaxBytes int64
	// OfflineRate is how many offline messages one client connection may
	// store per minute, at once or spread out; more are refused with
	// rate_limited (default 300; negative: no limit).
	OfflineRate int

	MaxUnacked    int           // forwarded messages awaiting their ack (default 100000)
	SendWindow    int           // forwarded messages in flight before clients that send more wait, unread (default 4096; at most MaxUnacked; flow.go)
	AckTimeout    time.Duration // resend a forwarded message not acked by then (default 2s)
	NoRouteGiveUp time.Duration // keep retrying a message the relay cannot route this long, then store it offline (default 15s)
	DialTimeout   time.Duration // relay dial and handshake (default 1s)
	// StallAfter applies with two relay links: a link that has received
	// nothing for this long while a message sent over it this long ago
	// awaits its ack is presumed stalled (a frozen relay, a cut cable),
	// and its messages go over the other link at once instead of after
	// DeadAfter (default 20ms). Negative: never.
	StallAfter time.Duration
	// ConnectTimeout bounds each TCP connect to the relay within
	// DialTimeout; one not done by then is tried again at once (default 100ms).
	ConnectTimeout time.Duration
	PingInterval   time.Duration // link heartbeat (default 200ms)
	DeadAfter      time.Duration // link silence before it is dropped (default 1s)
	BackoffMin     time.Duration // first redial delay (default 20ms)
	BackoffMax     time.Duration // longest redial delay (default 1s)
	DedupWindow    int           // message ids remembered to drop resent duplicates (default 2*MaxUnacked)

	// AuthKey, if set, makes every login prove its name with a token
	// signed for it (auth.go); nil keeps the article's name-only login.
	AuthKey      *AuthKey
	AuthLeeway   time.Duration // clock skew allowed on a token's exp and nbf (default 30s)
	AuthAudience string        // if set, a token's aud must include it
	AuthIssuer   string        // if set, a token's iss must be it

	// Logger receives the server's events; nil means slog.Default().
	Logger *slog.Logger
	// Metrics, if not nil, records the server's metrics; New adds a hook
	// to Redis that times its commands for them.
	Metrics *Metrics
}

// Defaults for Config fields left zero (DedupWindow's is 2*MaxUnacked).
const (
	DefaultMaxLine           = 8 << 10
	DefaultMaxContent        = 4 << 10
	DefaultMaxNameLen        = 64
	DefaultMaxSessions       = 200000
	DefaultHandshakeTimeout  = 5 * time.Second
	DefaultSessionQueueBytes = 1 << 20
	DefaultIdleTimeout       = 2 * time.Minute
	DefaultParkIdleAfter     = 5 * time.Second
	DefaultWriteTimeout      = 10 * time.Second
	DefaultLoginTimeout      = 30 * time.Second
	DefaultLineTimeout       = 10 * time.Second
	DefaultRequestRate       = 500
	DefaultRequestBurst      = 1000
	DefaultMaxConnsPerIP     = 1000
	DefaultLoginRatePerIP    = 50
	DefaultLoginBurstPerIP   = 500
	DefaultFDHeadroom        = 256
	DefaultPresenceTTL       = 30 * time.Second
	DefaultRegistryTTL       = 6 * time.Second
	DefaultInboxMax          = 200
	DefaultUnackedMax        = 100
	DefaultInboxTTL          = 7 * 24 * time.Hour
	DefaultOfflineMaxBytes   = 256 << 20
	DefaultOfflineRate       = 300
	DefaultRouteCacheTTL     = 10 * time.Second
	DefaultRedisTimeout      = time.Second
	DefaultMaxUnacked        = 100000
	DefaultSendWindow        = 4096
	DefaultAckTimeout        = 2 * time.Second
	DefaultNoRouteGiveUp     = 15 * time.Second
	DefaultDialTimeout       = time.Second
	DefaultConnectTimeout    = 100 * time.Millisecond
	DefaultStallAfter        = 20 * time.Millisecond
	DefaultPingInterval      = 200 * time.Millisecond
	DefaultDeadAfter         = time.Second
	DefaultBackoffMin        = 20 * time.Millisecond
	DefaultBackoffMax        = time.Second
	DefaultAuthLeeway        = 30 * time.Second
)

func (c *Config) setDefaults() {
	setDefault(&c.MaxLine, DefaultMaxLine)
	setDefault(&c.MaxContent, DefaultMaxContent)
	setDefault(&c.MaxNameLen, DefaultMaxNameLen)
	setDefault(&c.MaxSessions, DefaultMaxSessions)
	setDefault(&c.HandshakeTimeout, DefaultHandshakeTimeout)
	setDefault(&c.SessionQueueBytes, DefaultSessionQueueBytes)
	setDefault(&c.IdleTimeout, DefaultIdleTimeout)
	setDefault(&c.ParkIdleAfter, DefaultParkIdleAfter)
	setDefault(&c.WriteTimeout, DefaultWriteTimeout)
	setDefault(&c.LoginTimeout, DefaultLoginTimeout)
	setDefault(&c.LineTimeout, DefaultLineTimeout)
	setDefault(&c.RequestRate, DefaultRequestRate)
	setDefault(&c.RequestBurst, DefaultRequestBurst)
	setDefault(&c.MaxConnsPerIP, DefaultMaxConnsPerIP)
	setDefault(&c.LoginRatePerIP, DefaultLoginRatePerIP)
	setDefault(&c.LoginBurstPerIP, DefaultLoginBurstPerIP)
	setDefault(&c.FDHeadroom, DefaultFDHeadroom)
	if c.PerIPExempt == nil {
		c.PerIPExempt = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	}
	setDefault(&c.PresenceTTL, DefaultPresenceTTL)
	setDefault(&c.RegistryTTL, DefaultRegistryTTL)
	setDefault(&c.InboxMax, DefaultInboxMax)
	setDefault(&c.UnackedMax, DefaultUnackedMax)
	setDefault(&c.InboxTTL, DefaultInboxTTL)
	setDefault(&c.OfflineMaxBytes, DefaultOfflineMaxBytes)
	setDefault(&c.OfflineRate, DefaultOfflineRate)
	setDefault(&c.RouteCacheTTL, DefaultRouteCacheTTL)
	setDefault(&c.RedisTimeout, DefaultRedisTimeout)
	setDefault(&c.MaxUnacked, DefaultMaxUnacked)
	setDefault(&c.SendWindow, DefaultSendWindow)
	setDefault(&c.AckTimeout, DefaultAckTimeout)
	setDefault(&c.NoRouteGiveUp, DefaultNoRouteGiveUp)
	setDefault(&c.DialTimeout, DefaultDialTimeout)
	setDefault(&c.ConnectTimeout, DefaultConnectTimeout)
	setDefault(&c.StallAfter, DefaultStallAfter)
	setDefault(&c.PingInterval, DefaultPingInterval)
	setDefault(&c.DeadAfter, DefaultDeadAfter)
	setDefault(&c.BackoffMin, DefaultBackoffMin)
	setDefault(&c.BackoffMax, DefaultBackoffMax)
	setDefault(&c.DedupWindow, 2*c.MaxUnacked)
	setDefault(&c.AuthLeeway, DefaultAuthLeeway)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func setDefault[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// relayAddrs returns the relay addresses RelayAddr names (none when it is
// empty), spaces trimmed.
func (c *Config) relayAddrs() []string {
	if strings.TrimSpace(c.RelayAddr) == "" {
		return nil
	}
	addrs := strings.Split(c.RelayAddr, ",")
	for i := range addrs {
		addrs[i] = strings.TrimSpace(addrs[i])
	}
	return addrs
}

// Validate reports every problem with the configuration.
func (c *Config) Validate() error {
	var errs []error
	if !wire.ValidServerID(c.ID) {
		errs = append(errs, fmt.Errorf("server id %q must be %s", c.ID, wire.ServerIDRule))
	}
	if c.Redis == nil {
		errs = append(errs, errors.New("a Redis client is required"))
	}
	if c.RelayAddr != "" && len(c.Secret) < wire.MinSecretLen {
		errs = append(errs, fmt.Errorf("link secret must be at least %d bytes", wire.MinSecretLen))
	}
	if c.NextSecret != nil && len(c.NextSecret) < wire.MinSecretLen {
		errs = append(errs, fmt.Errorf("next link secret must be at least %d bytes", wire.MinSecretLen))
	}
	addrs := c.relayAddrs()
	if len(addrs) > maxRelayLinks {
		errs = append(errs, fmt.Errorf("relay addresses %q: at most %d (one per VIP)", c.RelayAddr, maxRelayLinks))
	}
	for i, a := range addrs {
		if a == "" || slices.Contains(addrs[:i], a) {
			errs = append(errs, fmt.Errorf("relay addresses %q: empty or repeated address %q", c.RelayAddr, a))
			continue
		}
		if c.LinkTLS != nil && c.LinkTLS.ServerName == "" {
			if _, _, err := net.SplitHostPort(a); err != nil {
				errs = append(errs, fmt.Errorf("relay address %q: no host to verify the relay's certificate for: %w", a, err))
			}
		}
	}
	if c.MaxContent+1024 > c.MaxLine {
		errs = append(errs, fmt.Errorf("max line %d must leave room for max content %d plus 1 KiB", c.MaxLine, c.MaxContent))
	}
	if c.MaxNameLen > wire.MaxIDLen {
		errs = append(errs, fmt.Errorf("max name length %d is above %d", c.MaxNameLen, wire.MaxIDLen))
	}
	for _, o := range c.AllowedOrigins {
		if _, err := path.Match(o, ""); err != nil || o == "" || o == "*" {
			errs = append(errs, fmt.Errorf("allowed origin %q is not a host or origin pattern (\"*\" is refused: it would let any site's page use its visitors' logins)", o))
		}
	}
	if c.InboxMax < 1 {
		errs = append(errs, fmt.Errorf("inbox max %d must be at least 1", c.InboxMax))
	}
	if c.PingInterval >= c.DeadAfter {
		errs = append(errs, fmt.Errorf("ping interval %s must be shorter than dead-after %s", c.PingInterval, c.DeadAfter))
	}
	if c.BackoffMin > c.BackoffMax {
		errs = append(errs, fmt.Errorf("backoff min %s is above max %s", c.BackoffMin, c.BackoffMax))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"idle timeout", c.IdleTimeout}, {"write timeout", c.WriteTimeout}, {"redis timeout", c.RedisTimeout},
		{"ack timeout", c.AckTimeout}, {"dial timeout", c.DialTimeout}, {"connect timeout", c.ConnectTimeout}, {"ping interval", c.PingInterval},
		{"auth leeway", c.AuthLeeway}, {"login timeout", c.LoginTimeout}, {"line timeout", c.LineTimeout},
		{"handshake timeout", c.HandshakeTimeout}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %s must not be negative", d.name, d.v))
		}
	}
	if c.AuthKey == nil && (c.AuthAudience != "" || c.AuthIssuer != "") {
		errs = append(errs, errors.New("an auth audience or issuer is set but no auth key: tokens would not be checked"))
	}
	if c.RequestBurst < 1 || c.LoginBurstPerIP < 1 {
		errs = append(errs, fmt.Errorf("request burst %d and login burst %d must be at least 1", c.RequestBurst, c.LoginBurstPerIP))
	}
	if c.FDHeadroom < 0 {
		errs = append(errs, fmt.Errorf("descriptor headroom %d must not be negative", c.FDHeadroom))
	}
	if c.PresenceTTL < time.Second || c.RegistryTTL < time.Second {
		errs = append(errs, errors.New("presence and registry TTLs must be at least 1s"))
	}
	return errors.Join(errs...)
}
