package msgserver

import (
	"context"
	"errors"
	"time"

	"github.com/chatrelay/chatrelay/internal/netx"
	"github.com/chatrelay/chatrelay/internal/sendq"
	"github.com/chatrelay/chatrelay/wire"
)

// Flow control for forwarded messages. A message server keeps at most
// SendWindow messages forwarded and not yet acknowledged. A client whose
// message would pass that waits in line (first come, first served) until an
// ack makes room, and while it waits its connection is not read: the
// client's further messages stay in its socket, and TCP tells it to slow
// down. Nothing is refused for being too many unless it waited for
// NoRouteGiveUp (the relay link is down for that long, or the other server
// never answers), when the message gets backlog_full.
//
// Without it the servers refused messages at saturation and starved each
// other: the goroutines reading clients, hundreds of them, took the CPU from
// the one that reads the relay link, so acks (and the other server's
// messages) waited in its socket while the unacked set grew to MaxUnacked.
// Bounding what is in flight bounds what waits in every queue behind the
// acks, so they come back promptly, and the frames kept for resending.

// A reader is granted room for several messages at a time (flowGrant) and
// spends it without asking again: a reader that waits first flushes its
// batch, and asking per message made a write to the relay per message at
// saturation. Room is counted in g.used: messages in flight plus grants not
// yet spent.

// flowGrant is the room a reader takes at once for a window of n.
func flowGrant(n int) int { return max(1, min(32, n/64)) }

// flowWaiter is a reader waiting for room.
type flowWaiter struct {
	ch chan struct{} // closed when its grant is given
	n  int           // the room it waits for
}

// waitRoom returns once a message may be forwarded. credit is the reader's
// unspent grant (nil: a caller outside a reader, granted one message at a
// time): a message takes one from it, and when it is empty a new grant is
// taken at once while the window has room and nobody waits before it, else
// when acks have made room for it. It flushes b (the reader's writes)
// before it waits, so what it has already forwarded goes out and can be
// acked. false: ctx ended or wait passed first.
func (g *ledger) waitRoom(ctx context.Context, b *sendq.Batch, wait time.Duration, credit *int) bool {
	if credit != nil && *credit > 0 {
		*credit--
		return true
	}
	n := 1
	if credit != nil {
		n = g.grant
	}
	g.mu.Lock()
	if g.used+n <= g.window && len(g.waiters) == 0 {
		g.used += n
		g.mu.Unlock()
		if credit != nil {
			*credit = n - 1
		}
		return true
	}
	w := &flowWaiter{ch: make(chan struct{}), n: n}
	g.waiters = append(g.waiters, w)
	g.m.flowWait()
	g.mu.Unlock()
	if b != nil {
		b.Flush()
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-w.ch:
	case <-t.C:
	case <-ctx.Done():
	}
	g.mu.Lock()
	for i, x := range g.waiters {
		if x == w {
			g.waiters = append(g.waiters[:i], g.waiters[i+1:]...)
			g.mu.Unlock()
			return false
		}
	}
	g.mu.Unlock()
	// Granted (maybe as it gave up: the room is its own).
	if credit != nil {
		*credit = n - 1
	}
	return true
}

// giveBack returns a reader's unspent grant (it parks or ends).
func (g *ledger) giveBack(n int) {
	if n <= 0 {
		return
	}
	g.mu.Lock()
	g.used = max(g.used-n, 0)
	g.wakeLocked()
	g.mu.Unlock()
}

// doneLocked records that a message has left the ledger and lets waiters
// go if that made room. g.mu is held.
func (g *ledger) doneLocked() {
	g.used = max(g.used-1, 0) // messages sent without waitRoom (tests) are not counted
	g.wakeLocked()
}

// wakeLocked grants room to waiters, first come first served, while the
// window has it. g.mu is held.
func (g *ledger) wakeLocked() {
	for len(g.waiters) > 0 && g.used+g.waiters[0].n <= g.window {
		w := g.waiters[0]
		g.used += w.n
		close(w.ch)
		g.waiters[0] = nil
		g.waiters = g.waiters[1:]
	}
}

// wakeAllLocked lets every waiter go (the ledger is abandoned).
func (g *ledger) wakeAllLocked() {
	for _, w := range g.waiters {
		close(w.ch)
	}
	g.waiters = nil
	g.used = 0
}

// ackDelay is how long an ack may wait for company before it is written.
// Acks go out on their own (sendq.AppendLater): with a forwarded message or
// another ack if one comes within ackDelay, else alone when it is over. At
// a low rate every ack was a write of its own here, a read and a write at
// the relay and a read at the origin; the sender's reply waits up to this
// much longer, the recipient's message not at all.
const ackDelay = time.Millisecond

// sendAck queues an ack for the relay, written within ackDelay.
func (c *linkConn) sendAck(a wire.Ack) {
	err := c.q.AppendLater(func(buf []byte) []byte { return wire.AppendAck(buf, wire.TypeAck, a) })
	if errors.Is(err, sendq.ErrFull) {
		c.log.Warn("relay link queue full, dropping link", "relay", c.relayID, "queued_bytes", c.q.Len())
		c.q.Close()
		_ = netx.CloseNow(c.conn)
		return
	}
	if err == nil && c.ackArmed.CompareAndSwap(false, true) {
		time.AfterFunc(ackDelay, func() {
			c.ackArmed.Store(false)
			c.q.Kick()
		})
	}
}
