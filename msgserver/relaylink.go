package msgserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatrelay/chatrelay/health"
	"github.com/chatrelay/chatrelay/internal/certs"
	"github.com/chatrelay/chatrelay/internal/netx"
	"github.com/chatrelay/chatrelay/internal/sendq"
	"github.com/chatrelay/chatrelay/wire"
)

// The client half of the relay link. A relayLink is the message server's
// link to one relay address (normally the VIP): it dials, proves the link
// secret (wire.Greet), pings, notices a dead relay by its silence, redials
// with jittered backoff, and yields what happens as typed events: a
// connection came up, a connection ended, or a Forward, Ack, Nack or Kick
// arrived. It answers pings itself and keeps no message: what is
// unacknowledged belongs to the ledger (ledger.go), which learns from the
// up and down events what to send again.
//
// The server pulls: one goroutine (Server.serveRelay) calls next in a loop
// and acts on each event itself. It is the goroutine that read the frame,
// so an Ack or a Forward reaches the sessions it concerns with no channel,
// no other goroutine and no allocation of its own, and next flushes the
// caller's batch before it waits for the network, so everything one read
// produced goes out in one write per connection, as it did when the link
// called back into the server. Pulling leaves the link nothing to know of
// the server, and puts what the server does with each frame in one switch.
// Each relayLink is independent (its address, connection, backoff and
// counters are its own): a server given two relay addresses (two VIPs)
// holds one per address, each with its own reader, and the ledger spreads
// messages over their connections.

// linkEventKind says what a linkEvent reports.
type linkEventKind uint8

const (
	linkUp     linkEventKind = iota + 1 // conn has just been established
	linkDown                            // conn has ended; err says why
	gotForward                          // fwd arrived: a message for a local user
	gotAck                              // ack arrived: a destination's answer
	gotNack                             // ack arrived as a Nack: the relay had no route
	gotKick                             // kick arrived: a local user has logged in on another server
)

// linkEvent is one thing that happened on a relay link. Only the fields of
// its kind are set.
type linkEvent struct {
	kind linkEventKind
	conn *linkConn // the connection it happened on
	at   time.Time // when the read that brought the frame returned (frame events)
	err  error
	fwd  wire.Forward // Payload aliases the read buffer: valid until the next call to next
	ack  wire.Ack
	kick wire.Kick
}

// relayLink is the link to one relay address.
type relayLink struct {
	addr       string
	slot       int // its index among the server's relay links (the ledger's)
	cfg        *Config
	tls        *tls.Config // nil: plaintext
	log        *slog.Logger
	queueBytes int
	stats      wire.LinkStats // over every connection, for the health endpoint

	// Used only by the goroutine that calls next.
	fr          *wire.Reader
	deadlineSet time.Time
	readAt      time.Time // when the latest read of the connection returned
	lost        *linkConn // the connection that ended last: connect waits for its heartbeat

	mu sync.Mutex
	// conn is the established connection, nil while there is none. Only
	// the goroutine that calls next sets it (with mu held), so that one
	// reads it without mu.
	conn  *linkConn
	state health.Link // what status reports, apart from the counters
}

// linkConn is one established connection of a relayLink, from handshake to
// failure: what the ledger hands messages to, and remembers them by.
type linkConn struct {
	slot    int             // the relayLink's
	stats   *wire.LinkStats // the relayLink's: LastRecv says when it last heard from the relay
	conn    net.Conn
	q       *sendq.Queue
	relayID string
	remote  string
	log     *slog.Logger

	beatDone chan struct{} // closed when the heartbeat has stopped
	ackArmed atomic.Bool   // a timer will write the acks queued (flow.go)
	unwatch  func() bool   // stops closing conn when the server's context ends
}

func newRelayLink(cfg *Config, slot int, addr string, log *slog.Logger) *relayLink {
	// Room for the whole backlog at its largest: a connection coming up is
	// handed every unacked message at once, and a smaller limit would drop
	// the link it is trying to recover, again and again.
	maxFrame := wire.HeaderLen + wire.IDLen + 2*(1+wire.MaxIDLen) + 2*(1+cfg.MaxNameLen) + 8 + cfg.MaxContent
	var tc *tls.Config
	if cfg.LinkTLS != nil {
		tc = cfg.LinkTLS.Clone()
		if tc.ServerName == "" {
			tc.ServerName, _, _ = net.SplitHostPort(addr) // Validate checked it
		}
		tc.MinVersion = max(tc.MinVersion, certs.MinVersion)
	}
	return &relayLink{
		addr:       addr,
		slot:       slot,
		cfg:        cfg,
		tls:        tc,
		log:        log,
		queueBytes: cfg.MaxUnacked*maxFrame + 64<<20,
		state:      health.Link{Peer: "relay", Since: time.Now(), Remote: addr},
	}
}

// next returns the next event of the link. It dials when there is no
// connection (the first time, and after a linkDown) and keeps dialling with
// jittered backoff until one is up. Pings are answered and pongs timed
// inside, without an event. b is the caller's batch: whatever the caller
// queues while handling an event may wait in it, and next flushes it
// before it waits for the network. The error is ctx's, once ctx has ended;
// the connection it ended, if any, has been reported down before.
func (l *relayLink) next(ctx context.Context, b *sendq.Batch) (linkEvent, error) {
	if l.conn == nil {
		b.Flush()
		c, err := l.connect(ctx)
		if err != nil {
			return linkEvent{}, err
		}
		return linkEvent{kind: linkUp, conn: c}, nil
	}
	c := l.conn
	for {
		// The clock, the read deadline and the time last heard from are
		// touched once per read of the connection, not per frame: the
		// frames of one read arrived together.
		fresh := !l.fr.Ready()
		if fresh {
			b.Flush()
			// Moving the deadline costs a timer update; do it a few times
			// per dead-after period, not per read.
			if now := time.Now(); now.Sub(l.deadlineSet) > l.cfg.DeadAfter/4 {
				l.deadlineSet = now
				_ = c.conn.SetReadDeadline(now.Add(l.cfg.DeadAfter))
			}
		}
		typ, body, raw, err := l.fr.Next()
		if err != nil {
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				err = fmt.Errorf("relay silent for %s: link dead", l.cfg.DeadAfter)
			case errors.Is(err, io.EOF):
				err = errors.New("relay closed the link")
			}
			return l.hangUp(b, c, err), nil
		}
		l.stats.FramesIn.Add(1)
		l.stats.BytesIn.Add(uint64(len(raw)))
		if fresh {
			l.readAt = time.Now()
			l.stats.LastRecv.Store(l.readAt.UnixNano())
		}
		ev := linkEvent{conn: c, at: l.readAt}
		switch typ {
		case wire.TypeForward:
			ev.kind = gotForward
			if ev.fwd, err = wire.ParseForward(body); err != nil {
				return l.hangUp(b, c, fmt.Errorf("bad forward frame: %w", err)), nil
			}
			return ev, nil
		case wire.TypeAck, wire.TypeNack:
			ev.kind = gotAck
			if typ == wire.TypeNack {
				ev.kind = gotNack
			}
			if ev.ack, err = wire.ParseAck(body); err != nil {
				return l.hangUp(b, c, fmt.Errorf("bad ack or nack frame: %w", err)), nil
			}
			return ev, nil
		case wire.TypeKick:
			ev.kind = gotKick
			if ev.kick, err = wire.ParseKick(body); err != nil {
				return l.hangUp(b, c, fmt.Errorf("bad kick frame: %w", err)), nil
			}
			return ev, nil
		case wire.TypePing:
			nanos, err := wire.ParsePing(body)
			if err != nil {
				return l.hangUp(b, c, fmt.Errorf("bad ping: %w", err)), nil
			}
			_ = c.send(b, func(buf []byte) []byte { return wire.AppendPing(buf, wire.TypePong, nanos) })
		case wire.TypePong:
			nanos, err := wire.ParsePing(body)
			if err != nil {
				return l.hangUp(b, c, fmt.Errorf("bad pong: %w", err)), nil
			}
			l.stats.RTT.Store(time.Now().UnixNano() - nanos)
		default:
			return l.hangUp(b, c, fmt.Errorf("%w: %d from relay", wire.ErrBadType, typ)), nil
		}
	}
}

// connect dials until a connection is up or ctx ends.
//
// After a lost connection it first waits for that connection's heartbeat to
// stop, which it does at its next tick (or when ctx ends): the first redial
// comes up to one ping interval after the loss. That pause matters. A relay
// that has just died may still hold the VIP, and a dial made while
// keepalived moves it sends its SYN to the old holder, which drops it; the
// kernel sends it again only after a second. Redialling at once made the
// kill-relay drill resume after 1.1 s instead of 0.2 s. A timer of its
// own (a jittered half to one ping interval) also gave 0.2 s there, but
// 0.25 s instead of 0.19 s in stop-keepalived: the drills' figures were
// measured with this pause.
func (l *relayLink) connect(ctx context.Context) (*linkConn, error) {
	if l.lost != nil {
		<-l.lost.beatDone
		l.lost = nil
	}
	backoff := l.cfg.BackoffMin
	for attempt := 0; ; attempt++ {
		conn, relayID, err := l.dial(ctx)
		if ctx.Err() != nil {
			if err == nil {
				_ = netx.CloseNow(conn)
			}
			return nil, ctx.Err()
		}
		if err == nil {
			return l.start(ctx, conn, relayID), nil
		}
		// Full jitter over [backoff/2, backoff]: many servers that lost
		// the same relay do not come back in step.
		d := backoff/2 + mathrand.N(backoff/2+1)
		level := slog.LevelWarn
		if attempt > 0 && !errors.Is(err, wire.ErrRejected) {
			level = slog.LevelDebug // one warning per outage, not one per retry
		}
		l.log.Log(ctx, level, "relay link dial failed", "relay", l.addr, "err", err, "retry_in", d)
		backoff = min(2*backoff, l.cfg.BackoffMax)
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// dial connects, over TLS if configured (the relay's certificate is
// verified before anything else is said), and runs the server side of the
// link handshake inside. DialTimeout bounds it all; ConnectTimeout bounds
// each TCP connect: a SYN sent while keepalived moves the VIP goes to the
// old holder and is lost, and the kernel would send it again only after a
// second. A connect that has not completed in ConnectTimeout is abandoned
// and a new one (a new SYN, which finds the new holder) made at once, as
// long as DialTimeout allows.
func (l *relayLink) dial(ctx context.Context) (net.Conn, string, error) {
	deadline := time.Now().Add(l.cfg.DialTimeout)
	var tcp net.Conn
	var err error
	for {
		d := net.Dialer{Deadline: deadline, Timeout: l.cfg.ConnectTimeout}
		tcp, err = d.DialContext(ctx, "tcp", l.addr)
		var ne net.Error
		if err == nil || ctx.Err() != nil || !errors.As(err, &ne) || !ne.Timeout() || !time.Now().Before(deadline) {
			break
		}
		l.log.Debug("relay connect timed out, trying again", "relay", l.addr, "after", l.cfg.ConnectTimeout)
	}
	if err != nil {
		return nil, "", err
	}
	stop := context.AfterFunc(ctx, func() { tcp.Close() })
	defer stop()
	_ = tcp.SetDeadline(deadline)
	conn := tcp
	if l.tls != nil {
		tc := tls.Client(tcp, l.tls)
		if err := tc.Handshake(); err != nil {
			tcp.Close()
			return nil, "", fmt.Errorf("TLS handshake with the relay: %w", err)
		}
		conn = tc
	}
	relayID, err := wire.Greet(conn, l.cfg.ID, l.cfg.Secret, l.cfg.NextSecret)
	if err != nil {
		tcp.Close()
		return nil, "", err
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, relayID, nil
}

// start makes an authenticated connection the link's current one and starts
// its heartbeat.
func (l *relayLink) start(ctx context.Context, conn net.Conn, relayID string) *linkConn {
	now := time.Now()
	q := sendq.New(l.queueBytes, func(n, items int, _ time.Duration) {
		l.stats.BytesOut.Add(uint64(n))
		l.stats.FramesOut.Add(uint64(items))
	})
	q.Start(conn, l.cfg.WriteTimeout) // written inline by whoever queues to it
	c := &linkConn{
		slot:     l.slot,
		stats:    &l.stats,
		conn:     conn,
		q:        q,
		relayID:  relayID,
		remote:   conn.RemoteAddr().String(),
		log:      l.log,
		beatDone: make(chan struct{}),
		unwatch:  context.AfterFunc(ctx, func() { netx.CloseNow(conn) }), // ends the read at shutdown
	}
	l.stats.LastRecv.Store(now.UnixNano())
	l.fr = wire.NewReader(netx.NewReader(conn), 2*l.cfg.MaxLine+4096)
	l.deadlineSet = time.Time{}
	l.mu.Lock()
	l.conn = c
	l.state = health.Link{Peer: relayID, Up: true, Since: now, Remote: c.remote}
	l.mu.Unlock()
	go c.heartbeat(ctx, l.cfg.PingInterval)
	return c
}

// hangUp ends c after its read failed: b is flushed and the connection
// closed (its heartbeat stops at its next tick; connect waits for that). It
// returns the linkDown event.
func (l *relayLink) hangUp(b *sendq.Batch, c *linkConn, err error) linkEvent {
	b.Flush()
	l.mu.Lock()
	l.conn = nil
	l.state.Up = false
	l.state.Since = time.Now()
	l.mu.Unlock()
	c.unwatch()
	c.q.Close()
	_ = netx.CloseNow(c.conn)
	<-c.q.Done()
	if werr := c.q.Err(); werr != nil {
		l.log.Debug("relay link write ended", "err", werr)
	}
	l.fr = nil
	l.lost = c
	return linkEvent{kind: linkDown, conn: c, err: err}
}

// send queues a frame on the current connection, if there is one, and
// reports whether it was queued.
func (l *relayLink) send(fn func([]byte) []byte) bool {
	l.mu.Lock()
	c := l.conn
	l.mu.Unlock()
	return c != nil && c.send(nil, fn) == nil
}

// status returns the state of the link for the health endpoint (all but
// Unacked, which is the ledger's).
func (l *relayLink) status() health.Link {
	l.mu.Lock()
	s := l.state
	if l.conn != nil {
		s.QueueBytes = l.conn.q.Len()
	}
	l.mu.Unlock()
	if last := l.stats.LastRecv.Load(); last != 0 {
		s.LastHeartbeatAge = health.Seconds(time.Since(time.Unix(0, last)))
	}
	s.RTT = health.Seconds(time.Duration(l.stats.RTT.Load()))
	s.FramesIn, s.FramesOut = l.stats.FramesIn.Load(), l.stats.FramesOut.Load()
	s.BytesIn, s.BytesOut = l.stats.BytesIn.Load(), l.stats.BytesOut.Load()
	return s
}

// silentSince returns when the connection last received a frame (zero
// when unknown).
func (c *linkConn) silentSince() time.Time {
	if c.stats == nil {
		return time.Time{}
	}
	return time.Unix(0, c.stats.LastRecv.Load())
}

// send lets fn append a frame to the connection's queue; with a batch, the
// write waits for b.Flush. A full queue means the relay is not reading: the
// connection is dropped, its reader reports it down, and the ledger sends
// everything unacknowledged over the next one. The error says the frame was
// not queued (ErrFull, or ErrClosed once the connection has ended); callers
// other than the heartbeat have nothing to do about it.
func (c *linkConn) send(b *sendq.Batch, fn func([]byte) []byte) error {
	err := c.q.AppendTo(b, fn)
	if errors.Is(err, sendq.ErrFull) {
		c.log.Warn("relay link queue full, dropping link", "relay", c.relayID, "queued_bytes", c.q.Len())
		c.q.Close()
		_ = netx.CloseNow(c.conn)
	}
	return err
}

// heartbeat pings every interval, so that the relay hears from a server with
// nothing to send, until a ping finds the connection ended or ctx ends.
func (c *linkConn) heartbeat(ctx context.Context, every time.Duration) {
	defer close(c.beatDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			now := time.Now().UnixNano()
			if c.send(nil, func(b []byte) []byte { return wire.AppendPing(b, wire.TypePing, now) }) != nil {
				return
			}
		case <-ctx.Done():
			return
		}
	}
}
