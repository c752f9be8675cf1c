// Package msgserver is the message server: it holds client sessions on a
// line-oriented JSON protocol, records who is where in Redis, delivers
// messages to local users directly and to users on other servers through its
// link to the relay, and keeps messages for offline users (Redis: package store).
//
// Where things are: server.go runs the server and reads the relay link's
// events; session.go and park.go a client's connection (park.go: idle ones
// waiting in the poller); tls.go the TLS handshake of a client port that
// serves TLS; protocol.go the client protocol; chat.go routing a
// chat message; relaylink.go the link client (dial, handshake, heartbeats,
// redial); ledger.go the messages forwarded and not yet acknowledged;
// loginbatch.go, release.go and inboxwatch.go the batched Redis work around
// logins and disconnects.
package msgserver

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
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
	// RelayAddr is the relay (VIP) link address, host:port. Empty runs the
	// server alone: only local delivery and offline storage.
	RelayAddr string
	// Secret is the shared link secret (at least 16 bytes).
	Secret []byte
	// Redis holds presence, the server registry and offline inboxes
	// (package store keeps them there).
	Redis redis.UniversalClient

	// TLS, if set, makes the client port serve TLS (certs.ServerConfig,
	// whose certificate is reloaded on renewal); nil serves plaintext.
	TLS *tls.Config
	// HandshakeTimeout bounds a client's TLS handshake (default 5s).
	HandshakeTimeout time.Duration
	// LinkTLS, if set, dials the relay over TLS: RootCAs verifies the
	// relay's certificate, for ServerName (empty: RelayAddr's host), and a
	// client certificate (GetClientCertificate) is shown to a relay that
	// asks for one. Nil dials plaintext.
	LinkTLS *tls.Config

	MaxLine           int           // longest client line in bytes (default 8 KiB)
	MaxContent        int           // longest chat content in bytes (default 4 KiB)
	MaxNameLen        int           // longest user name in bytes (default 64)
	MaxSessions       int           // connected clients (default 200000)
	SessionQueueBytes int           // unwritten bytes per client before it is cut (default 1 MiB)
	IdleTimeout       time.Duration // client silence before disconnect (default 2m)
	// ParkIdleAfter is the client silence after which a session gives up
	// its goroutine and read buffer and waits in the poller (default 5s;
	// negative: never). See park.go.
	ParkIdleAfter time.Duration
	WriteTimeout  time.Duration // per write to a client or the relay (default 10s)

	PresenceTTL   time.Duration // TTL of a user's presence record (default 30s), refreshed every third of it
	RegistryTTL   time.Duration // TTL of this server's registry entry (default 6s), refreshed every third
	InboxMax      int           // offline messages kept per user (default 200, oldest dropped)
	InboxTTL      time.Duration // how long an offline inbox lives (default 7 days)
	RouteCacheTTL time.Duration // how long a looked-up location is trusted (default 10s)
	RedisTimeout  time.Duration // per Redis call from a client request (default 1s)

	MaxUnacked    int           // forwarded messages awaiting their ack (default 100000)
	AckTimeout    time.Duration // resend a forwarded message not acked by then (default 2s)
	NoRouteGiveUp time.Duration // keep retrying a message the relay cannot route this long, then store it offline (default 15s)
	DialTimeout   time.Duration // relay dial and handshake (default 1s)
	PingInterval  time.Duration // link heartbeat (default 200ms)
	DeadAfter     time.Duration // link silence before it is dropped (default 1s)
	BackoffMin    time.Duration // first redial delay (default 20ms)
	BackoffMax    time.Duration // longest redial delay (default 1s)
	DedupWindow   int           // message ids remembered to drop resent duplicates (default 2*MaxUnacked)

	// Logger receives the server's events; nil means slog.Default().
	Logger *slog.Logger
	// Metrics, if not nil, records the server's metrics.
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
	DefaultPresenceTTL       = 30 * time.Second
	DefaultRegistryTTL       = 6 * time.Second
	DefaultInboxMax          = 200
	DefaultInboxTTL          = 7 * 24 * time.Hour
	DefaultRouteCacheTTL     = 10 * time.Second
	DefaultRedisTimeout      = time.Second
	DefaultMaxUnacked        = 100000
	DefaultAckTimeout        = 2 * time.Second
	DefaultNoRouteGiveUp     = 15 * time.Second
	DefaultDialTimeout       = time.Second
	DefaultPingInterval      = 200 * time.Millisecond
	DefaultDeadAfter         = time.Second
	DefaultBackoffMin        = 20 * time.Millisecond
	DefaultBackoffMax        = time.Second
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
	setDefault(&c.PresenceTTL, DefaultPresenceTTL)
	setDefault(&c.RegistryTTL, DefaultRegistryTTL)
	setDefault(&c.InboxMax, DefaultInboxMax)
	setDefault(&c.InboxTTL, DefaultInboxTTL)
	setDefault(&c.RouteCacheTTL, DefaultRouteCacheTTL)
	setDefault(&c.RedisTimeout, DefaultRedisTimeout)
	setDefault(&c.MaxUnacked, DefaultMaxUnacked)
	setDefault(&c.AckTimeout, DefaultAckTimeout)
	setDefault(&c.NoRouteGiveUp, DefaultNoRouteGiveUp)
	setDefault(&c.DialTimeout, DefaultDialTimeout)
	setDefault(&c.PingInterval, DefaultPingInterval)
	setDefault(&c.DeadAfter, DefaultDeadAfter)
	setDefault(&c.BackoffMin, DefaultBackoffMin)
	setDefault(&c.BackoffMax, DefaultBackoffMax)
	setDefault(&c.DedupWindow, 2*c.MaxUnacked)
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

// Validate reports every problem with the configuration.
func (c *Config) Validate() error {
	var errs []error
	if !validServerID(c.ID) {
		errs = append(errs, fmt.Errorf("server id %q must be 1..64 letters, digits, '.', '_' or '-'", c.ID))
	}
	if c.Redis == nil {
		errs = append(errs, errors.New("a Redis client is required"))
	}
	if c.RelayAddr != "" && len(c.Secret) < wire.MinSecretLen {
		errs = append(errs, fmt.Errorf("link secret must be at least %d bytes", wire.MinSecretLen))
	}
	if c.RelayAddr != "" && c.LinkTLS != nil && c.LinkTLS.ServerName == "" {
		if _, _, err := net.SplitHostPort(c.RelayAddr); err != nil {
			errs = append(errs, fmt.Errorf("relay address %q: no host to verify the relay's certificate for: %w", c.RelayAddr, err))
		}
	}
	if c.MaxContent+1024 > c.MaxLine {
		errs = append(errs, fmt.Errorf("max line %d must leave room for max content %d plus 1 KiB", c.MaxLine, c.MaxContent))
	}
	if c.MaxNameLen > wire.MaxIDLen {
		errs = append(errs, fmt.Errorf("max name length %d is above %d", c.MaxNameLen, wire.MaxIDLen))
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
		{"ack timeout", c.AckTimeout}, {"dial timeout", c.DialTimeout}, {"ping interval", c.PingInterval},
		{"handshake timeout", c.HandshakeTimeout}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %s must not be negative", d.name, d.v))
		}
	}
	if c.PresenceTTL < time.Second || c.RegistryTTL < time.Second {
		errs = append(errs, errors.New("presence and registry TTLs must be at least 1s"))
	}
	return errors.Join(errs...)
}

func validServerID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
		if !ok {
			return false
		}
	}
	return true
}
