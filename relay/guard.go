package relay

import (
	"container/list"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/chatrelay/chatrelay/internal/netx"
	"github.com/chatrelay/chatrelay/wire"
)

// Before a peer has proved the link secret it may cost the relay little,
// since anyone who reaches the link port can open connections:
//
//   - the handshake reads one Auth-sized frame (wire.MaxAuthFrame) with no
//     buffer of its own; the link's Reader and its MaxFrame come after the
//     Welcome;
//   - the connections still in their handshake are bounded per source
//     address (a new one over MaxPendingPerIP is closed at once: no
//     challenge, no goroutine) and in total (over MaxPendingHandshakes the
//     oldest of them is closed to make room, so a flood from many addresses
//     cannot keep a real server that redials, or the keepalived probe, out:
//     they finish their handshake in a round trip, the flood's connections
//     wait for the timeout);
//   - refused peers are counted one by one (relay_handshake_failures_total)
//     but logged at most a few per second, with a summary of the rest.
//
// Established links never pass through here again.

// Refused-peer log lines: refusalBurst at once, then refusalRate per
// second; the rest are summed up every refusalSummaryEvery.
const (
	refusalRate         = 5
	refusalBurst        = 10
	refusalSummaryEvery = time.Second
)

// A refused peer's connection waits this long, or for this much of its
// input, for the peer to hang up after reading why it was refused.
const (
	refusedLinger      = 250 * time.Millisecond
	refusedLingerBytes = 64 << 10
)

var (
	errTooManyFromAddr = errors.New("too many pending handshakes from this address")
	errEvicted         = errors.New("closed to make room: too many pending handshakes")
)

// handshakeGate bounds the connections that have not finished their
// handshake, in total and per source address.
type handshakeGate struct {
	maxTotal, maxPerAddr int
	m                    *Metrics // relay_pending_handshakes, set under mu

	mu      sync.Mutex
	perAddr map[netip.Addr]int
	waiting list.List // of *pendingConn, oldest first
}

// pendingConn is a connection in the gate.
type pendingConn struct {
	conn    net.Conn
	src     netip.Addr
	elem    *list.Element // nil once it has left the gate
	evicted bool
}

func newHandshakeGate(maxTotal, maxPerAddr int, m *Metrics) *handshakeGate {
	return &handshakeGate{maxTotal: maxTotal, maxPerAddr: maxPerAddr, m: m, perAddr: make(map[netip.Addr]int)}
}

// enter admits conn, or returns errTooManyFromAddr when its source already
// has maxPerAddr connections in the gate. When the gate is full its oldest
// connection is closed to make room.
func (g *handshakeGate) enter(conn net.Conn) (*pendingConn, error) {
	src, _ := netx.SourceKey(conn.RemoteAddr()) // not TCP: all share the zero key
	g.mu.Lock()
	if g.perAddr[src] >= g.maxPerAddr {
		g.mu.Unlock()
		return nil, errTooManyFromAddr
	}
	var victim *pendingConn
	if g.waiting.Len() >= g.maxTotal {
		victim = g.waiting.Front().Value.(*pendingConn)
		victim.evicted = true
		g.removeLocked(victim)
	}
	p := &pendingConn{conn: conn, src: src}
	p.elem = g.waiting.PushBack(p)
	g.perAddr[src]++
	g.m.pendingHandshakes(g.waiting.Len())
	g.mu.Unlock()
	if victim != nil {
		victim.conn.Close() // its handshake fails at once and reports errEvicted
	}
	return p, nil
}

// leave takes p out of the gate (again is harmless) and says whether it
// had been evicted.
func (g *handshakeGate) leave(p *pendingConn) (evicted bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if p.elem != nil {
		g.removeLocked(p)
		g.m.pendingHandshakes(g.waiting.Len())
	}
	return p.evicted
}

func (g *handshakeGate) removeLocked(p *pendingConn) {
	g.waiting.Remove(p.elem)
	p.elem = nil
	if g.perAddr[p.src]--; g.perAddr[p.src] <= 0 {
		delete(g.perAddr, p.src)
	}
}

// handshake runs the relay's half of the handshake on a connection in the
// gate, within HandshakeTimeout. The connection leaves the gate as soon as
// the peer has proved the secret (it can no longer be evicted), or when
// the handshake fails.
func (r *Relay) handshake(conn net.Conn, p *pendingConn) (server string, err error) {
	server, err = wire.Accept(conn, r.cfg.ID, func(server string) error {
		if r.gate.leave(p) {
			return errEvicted
		}
		if err := certifiedID(conn)(server); err != nil { // tls.go
			return err
		}
		return r.admit(server, conn.LocalAddr().String())
	}, r.cfg.Secret, r.cfg.NextSecret)
	if err != nil && !errors.Is(err, wire.ErrProbe) && !errors.Is(err, os.ErrDeadlineExceeded) {
		// The peer was refused, most often with a Reject saying why: let
		// it read that before the connection goes (in the gate still,
		// unless it had proved the secret).
		netx.LingerClose(conn, refusedLinger, refusedLingerBytes)
	}
	if r.gate.leave(p) && err != nil {
		return server, errEvicted
	}
	if err != nil {
		return server, err
	}
	_ = conn.SetDeadline(time.Time{})
	return server, nil
}

// refused counts a refused peer and logs it, unless too many have been
// logged in the last moments. Nothing is counted while the relay closes:
// those failures are its own.
func (r *Relay) refused(remote, server string, err error) {
	if r.ctx.Err() != nil {
		return
	}
	r.m.handshakeFailed()
	r.refusals.write("remote", remote, "server", server, "err", err)
}

// refusalLog writes refused-peer lines at a bounded rate. What it holds
// back it reports as one summary line a moment later, so a flood costs a
// few lines a second and its size is still in the log.
type refusalLog struct {
	log *slog.Logger
	lim *rate.Limiter

	mu         sync.Mutex
	suppressed int
	summary    *time.Timer // pending summary, nil when none
	stopped    bool
}

func newRefusalLog(log *slog.Logger) *refusalLog {
	return &refusalLog{log: log, lim: rate.NewLimiter(refusalRate, refusalBurst)}
}

func (l *refusalLog) write(args ...any) {
	if l.lim.Allow() {
		l.log.Warn("link refused", args...)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.suppressed++
	if l.summary == nil && !l.stopped {
		l.summary = time.AfterFunc(refusalSummaryEvery, l.flush)
	}
}

// flush logs how many refusals were held back since the last summary.
func (l *refusalLog) flush() {
	l.mu.Lock()
	n := l.suppressed
	l.suppressed, l.summary = 0, nil
	l.mu.Unlock()
	if n > 0 {
		l.log.Warn("more links refused, not logged one by one", "suppressed", n)
	}
}

// stop cancels the pending summary and writes it now.
func (l *refusalLog) stop() {
	l.mu.Lock()
	l.stopped = true
	if l.summary != nil {
		l.summary.Stop()
	}
	l.mu.Unlock()
	l.flush()
}
