package msgserver

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/internal/sendq"
	"github.com/chatrelay/chatrelay/wire"
)

// The ledger owns every message forwarded to another server from the moment
// it is handed to the relay link until the destination acknowledges it. It
// sends each one over a live link connection, sends it again when its ack is
// overdue or when the connection it went over ends, holds it after a NACK
// (the relay has no route to the destination, which may be reconnecting
// after a failover) and retries it with backoff until NoRouteGiveUp.
//
// It is not welded to one link: each message remembers the connection it
// last went over (pending.via), a connection that comes up is handed what
// is on no live connection, and one that ends gives its messages back. A
// second relay link is then a second connection in the same ledger.
//
// Outcomes are pulled, not called back: acked, nacked and abandon return
// the delivery a message belongs to and what became of it, and the caller
// (the relay link's reader, or Close) acts on it.

// outcome is what finally happened to a forwarded message.
type outcome int

const (
	outTaken   outcome = iota // the destination server took it (ack)
	outNotHere                // the destination says the user is not there
	outGaveUp                 // the relay could not route it for NoRouteGiveUp
	outClosed                 // the server shut down before an answer
)

var errBacklogFull = errors.New("too many messages await their ack")

// maxRetryWait bounds the wait before a NACKed message is tried again.
const maxRetryWait = time.Second

// ledger keeps forwarded messages until their end-to-end ack.
type ledger struct {
	max        int           // messages kept at most (MaxUnacked)
	ackTimeout time.Duration // resend a message not acked by then
	retryMin   time.Duration // wait after a first NACK, doubled per NACK up to maxRetryWait
	giveUp     time.Duration // NACKed for longer than this: stored offline instead
	m          *Metrics

	mu       sync.Mutex
	byID     map[wire.ID]*pending
	awaiting pendingList // sent, or waiting for a connection, and not acked: in due order
	held     pendingList // NACKed, waiting for their retry time
	live     *linkConn   // the connection messages go over; nil while none is up
}

// pending is a forwarded message waiting for its ack.
type pending struct {
	d         *delivery
	id        wire.ID
	dest      string // the server this copy was sent to: acks from others are stale
	frame     []byte
	due       time.Time // resend (awaiting) or retry (held) at this time
	firstNack time.Time
	nacks     int
	// via is the connection the message last went over: nil when it has
	// not gone over one yet, when that one ended, or while held.
	via *linkConn

	list       *pendingList // awaiting or held
	prev, next *pending
}

func newLedger(cfg *Config, m *Metrics) *ledger {
	return &ledger{
		max:        cfg.MaxUnacked,
		ackTimeout: cfg.AckTimeout,
		retryMin:   cfg.BackoffMin,
		giveUp:     cfg.NoRouteGiveUp,
		m:          m,
		byID:       make(map[wire.ID]*pending),
	}
}

// send keeps f for d until its outcome and sends it over the live
// connection, if there is one; otherwise the next connection to come up
// takes it.
func (g *ledger) send(d *delivery, f *wire.Forward) error {
	frame := wire.AppendForward(nil, f)
	now := time.Now()
	var b sendq.Batch
	g.mu.Lock()
	if len(g.byID) >= g.max {
		g.mu.Unlock()
		return errBacklogFull
	}
	p := &pending{d: d, id: f.ID, dest: f.Dest, frame: frame}
	g.byID[f.ID] = p
	g.m.setUnacked(len(g.byID))
	g.sendLocked(&b, g.live, p, now)
	g.mu.Unlock()
	b.Flush() // the write, if it is ours, happens outside the lock
	return nil
}

// sendLocked moves p to the end of awaiting, due an ack timeout from now,
// and queues it on c in b (nil c: no connection, it waits for one). g.mu
// is held.
func (g *ledger) sendLocked(b *sendq.Batch, c *linkConn, p *pending, now time.Time) {
	if p.list != nil {
		p.list.remove(p)
	}
	p.due = now.Add(g.ackTimeout)
	p.via = c
	g.awaiting.pushBack(p)
	if c != nil {
		_ = c.send(b, func(buf []byte) []byte { return append(buf, p.frame...) })
	}
}

// up makes c the connection messages go over and sends it every message
// that is on no live connection, held ones included, in the order they
// were first sent. It returns how many it sent.
func (g *ledger) up(c *linkConn) int {
	now := time.Now()
	var b sendq.Batch
	defer b.Flush() // after the unlock: the backlog goes out in big writes
	g.mu.Lock()
	defer g.mu.Unlock()
	g.live = c
	// What is on no live connection moves to the end, in order, as it is
	// sent; the rest keeps its place and its due time. left counts the
	// messages that were there before, so moved ones are not seen again.
	n := 0
	for p, left := g.awaiting.head, g.awaiting.n; left > 0; left-- {
		next := p.next
		if p.via == nil {
			g.sendLocked(&b, c, p, now)
			n++
		}
		p = next
	}
	for p := g.held.head; p != nil; p = g.held.head {
		g.sendLocked(&b, c, p, now)
		n++
	}
	return n
}

// down records that c has ended: what went over it is on no connection
// now, and goes out again over the next one to come up.
func (g *ledger) down(c *linkConn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.live == c {
		g.live = nil
	}
	for p := g.awaiting.head; p != nil; p = p.next {
		if p.via == c {
			p.via = nil
		}
	}
}

// acked ends the message an Ack is for and returns its delivery and
// outcome; nil for a duplicate ack, or one for a copy sent elsewhere before
// a re-route.
func (g *ledger) acked(a wire.Ack) (*delivery, outcome) {
	g.mu.Lock()
	p := g.byID[a.ID]
	if p == nil || p.dest != a.Origin {
		g.mu.Unlock()
		return nil, 0
	}
	g.removeLocked(p)
	g.mu.Unlock()
	if a.Code == wire.AckNotHere {
		return p.d, outNotHere
	}
	return p.d, outTaken
}

// nacked holds a message the relay could not route, to be tried again
// after a backoff: the destination server may be reconnecting after a
// failover. Once it has been refused for longer than giveUp it is ended
// instead, and its delivery is returned as gaveUp (its outcome is
// outGaveUp). At its first NACK, it is returned as first: the caller looks
// the user up again (the user may have moved) and may withdraw it. now is
// when the NACK arrived.
func (g *ledger) nacked(a wire.Ack, now time.Time) (gaveUp, first *delivery) {
	g.m.nacked()
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.byID[a.ID]
	if p == nil || p.list == &g.held || p.dest != a.Dest {
		return nil, nil
	}
	if p.firstNack.IsZero() {
		p.firstNack = now
		first = p.d
	}
	if now.Sub(p.firstNack) > g.giveUp {
		g.removeLocked(p)
		return p.d, nil
	}
	g.awaiting.remove(p)
	p.via = nil
	p.due = now.Add(min(g.retryMin<<min(p.nacks, 6), maxRetryWait))
	p.nacks++
	g.held.pushBack(p)
	return nil, first
}

// withdraw ends the message id, if it is still waiting for an answer from
// dest, and reports whether it did: its delivery is then the caller's.
func (g *ledger) withdraw(id wire.ID, dest string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.byID[id]
	if p == nil || p.dest != dest {
		return false
	}
	g.removeLocked(p)
	return true
}

func (g *ledger) removeLocked(p *pending) {
	p.list.remove(p)
	delete(g.byID, p.id)
	g.m.setUnacked(len(g.byID))
}

// resendDue sends again, over the live connection, the messages whose ack
// is overdue and the held ones whose retry time has come.
func (g *ledger) resendDue(now time.Time) {
	var b sendq.Batch
	defer b.Flush() // after the unlock: one write for all of them
	g.mu.Lock()
	defer g.mu.Unlock()
	c := g.live
	if c == nil {
		return // everything goes out when a connection comes up
	}
	overdue := 0
	for p := g.awaiting.head; p != nil && !p.due.After(now); p = p.next {
		overdue++ // awaiting is in due order
	}
	n := overdue
	for ; overdue > 0; overdue-- {
		g.sendLocked(&b, c, g.awaiting.head, now)
	}
	for p := g.held.head; p != nil; {
		next := p.next
		if !p.due.After(now) {
			g.sendLocked(&b, c, p, now)
			n++
		}
		p = next
	}
	if n > 0 {
		g.m.resent(n)
	}
}

// run calls resendDue every tick until ctx ends.
func (g *ledger) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			g.resendDue(now)
		case <-ctx.Done():
			return
		}
	}
}

// unacked returns how many forwarded messages await their ack.
func (g *ledger) unacked() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.byID)
}

// abandon forgets every message (at shutdown) and returns their
// deliveries; their outcome is outClosed.
func (g *ledger) abandon() []*delivery {
	g.mu.Lock()
	defer g.mu.Unlock()
	ds := make([]*delivery, 0, len(g.byID))
	for _, p := range g.byID {
		ds = append(ds, p.d)
	}
	clear(g.byID)
	g.awaiting, g.held = pendingList{}, pendingList{}
	g.m.setUnacked(0)
	return ds
}

// pendingList is a list of pending messages linked through the messages
// themselves, so that keeping a message costs no allocation of the list's.
type pendingList struct {
	head, tail *pending
	n          int
}

func (l *pendingList) pushBack(p *pending) {
	p.list, p.prev, p.next = l, l.tail, nil
	if l.tail != nil {
		l.tail.next = p
	} else {
		l.head = p
	}
	l.tail = p
	l.n++
}

func (l *pendingList) remove(p *pending) {
	if p.prev != nil {
		p.prev.next = p.next
	} else {
		l.head = p.next
	}
	if p.next != nil {
		p.next.prev = p.prev
	} else {
		l.tail = p.prev
	}
	p.list, p.prev, p.next = nil, nil, nil
	l.n--
}
