package msgserver

import (
	"context"
	"encoding/binary"
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
// It holds up to maxRelayLinks live connections, one per relay address
// (linkConn.slot), and spreads messages over them by recipient (pick; the
// design note in docs/two-relays.md says why). Each message remembers the
// connection it last went over (pending.via). When a connection ends, what
// went over it is sent again at once over another live one, without
// waiting for the relay tier to fail over; with none left it waits, and a
// connection that comes up is handed what is on no live connection. A NACK
// from one relay sends the message over the other link at once; only when
// every live link has refused it is it held with backoff.
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
	window     int           // messages in flight before senders wait (SendWindow, flow.go)
	ackTimeout time.Duration // resend a message not acked by then
	retryMin   time.Duration // wait after a first NACK, doubled per NACK up to maxRetryWait
	giveUp     time.Duration // NACKed for longer than this: stored offline instead
	stallAfter time.Duration // a link silent this long with a message this old on it is stalled; <= 0: never
	m          *Metrics

	mu       sync.Mutex
	byID     pendingIndex
	awaiting pendingList   // sent, or waiting for a connection, and not acked: in due order
	held     pendingList   // NACKed, waiting for their retry time
	waiters  []*flowWaiter // readers waiting for room in the window, first come first served (flow.go)
	used     int           // room taken: messages in flight and grants not yet spent (flow.go)
	grant    int           // room a reader takes at once
	// lastAckedSent is when the latest-sent message acked so far was sent:
	// an overdue message sent before it has likely lost its ack (resendDue).
	lastAckedSent time.Time
	// live holds the connection of each relay link (by slot); nil while
	// that link is down.
	live [maxRelayLinks]*linkConn
	// stalled marks a live connection presumed stalled (checkStalls):
	// new messages avoid it while another is live. It is cleared when the
	// connection is heard from again.
	stalled [maxRelayLinks]time.Time
	// ackLatency is a moving average of the time from sending a message
	// to its ack. The stall threshold is at least four times it: under a
	// load that makes every ack slow, a link quiet for 20 ms is no sign of
	// a stalled relay (a saturated host starves whole processes for that
	// long), and moving its messages would only add work.
	ackLatency time.Duration
}

// maxRelayLinks is how many relay addresses a server links to at most:
// one per VIP, and the relay tier has one or two.
const maxRelayLinks = 2

// pending is a forwarded message waiting for its ack.
type pending struct {
	d         *delivery
	id        wire.ID
	dest      string // the server this copy was sent to: acks from others are stale
	frame     []byte
	due       time.Time // resend (awaiting) or retry (held) at this time
	firstNack time.Time
	nacks     int
	key       uint32 // spreads messages over the links: a hash of the recipient
	refused   uint8  // slots whose relay NACKed it since it was last held
	// via is the connection the message last went over: nil when it has
	// not gone over one yet, when that one ended, or while held.
	via *linkConn

	list       *pendingList // awaiting or held
	prev, next *pending
}

func newLedger(cfg *Config, m *Metrics) *ledger {
	return &ledger{
		max:        cfg.MaxUnacked,
		window:     min(max(cfg.SendWindow, 1), max(cfg.MaxUnacked, 1)),
		grant:      flowGrant(min(max(cfg.SendWindow, 1), max(cfg.MaxUnacked, 1))),
		ackTimeout: cfg.AckTimeout,
		retryMin:   cfg.BackoffMin,
		giveUp:     cfg.NoRouteGiveUp,
		stallAfter: cfg.StallAfter,
		m:          m,
		byID:       newPendingIndex(min(max(cfg.SendWindow, 1), max(cfg.MaxUnacked, 1))),
	}
}

// send keeps f for d until its outcome and sends it over the live
// connection, if there is one; otherwise the next connection to come up
// takes it.
func (g *ledger) send(d *delivery, f *wire.Forward) error {
	var b sendq.Batch
	defer b.Flush() // the write, if it is ours, happens outside the lock
	return g.sendIn(&b, d, f)
}

// sendIn is send for a reader handling a batch of input: the write waits
// for b.Flush.
func (g *ledger) sendIn(b *sendq.Batch, d *delivery, f *wire.Forward) error {
	return g.sendFrame(b, d, f.ID, f.Dest, wire.AppendForward(nil, f))
}

// sendFrame is sendIn for a Forward already encoded: frame, with id, for
// dest. The ledger keeps frame.
func (g *ledger) sendFrame(b *sendq.Batch, d *delivery, id wire.ID, dest string, frame []byte) error {
	now := time.Now()
	g.mu.Lock()
	if g.byID.n >= g.max {
		g.mu.Unlock()
		return errBacklogFull
	}
	p := &pending{d: d, id: id, dest: dest, frame: frame, key: spreadKey(d)}
	g.byID.put(p)
	g.m.setUnacked(g.byID.n)
	g.sendLocked(b, g.pickLocked(p.key, nil), p, now)
	g.mu.Unlock()
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

// up makes c the connection of its link and sends it every message that
// is on no live connection, held ones included, in the order they were
// first sent. It returns how many it sent.
func (g *ledger) up(c *linkConn) int {
	now := time.Now()
	var b sendq.Batch
	defer b.Flush() // after the unlock: the backlog goes out in big writes
	g.mu.Lock()
	defer g.mu.Unlock()
	g.live[c.slot] = c
	g.stalled[c.slot] = time.Time{}
	n := g.moveLocked(&b, nil, now, func(*pending) *linkConn { return c })
	for p := g.held.head; p != nil; p = g.held.head {
		p.refused = 0
		g.sendLocked(&b, c, p, now)
		n++
	}
	return n
}

// moveLocked sends every awaiting message whose connection is from over the
// connection to returns for it (nil: it waits for one), in order. What
// moves goes to the end of awaiting, in order, as it is sent; the rest
// keeps its place and its due time. left counts the messages that were
// there before, so moved ones are not seen again. It returns how many it
// sent.
func (g *ledger) moveLocked(b *sendq.Batch, from *linkConn, now time.Time, to func(*pending) *linkConn) int {
	n := 0
	for p, left := g.awaiting.head, g.awaiting.n; left > 0; left-- {
		next := p.next
		if p.via == from {
			c := to(p)
			if c == nil {
				p.via = nil
			} else {
				g.sendLocked(b, c, p, now)
				n++
			}
		}
		p = next
	}
	return n
}

// down records that c has ended: what went over it goes out again at once
// over another live connection, or over the next one to come up when
// there is none. It returns how many it sent again.
func (g *ledger) down(c *linkConn) int {
	now := time.Now()
	var b sendq.Batch
	defer b.Flush()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.live[c.slot] == c {
		g.live[c.slot] = nil
		g.stalled[c.slot] = time.Time{}
	}
	n := g.moveLocked(&b, c, now, func(p *pending) *linkConn { return g.pickLocked(p.key, nil) })
	if n > 0 {
		g.m.resent(n)
	}
	return n
}

// pickLocked returns the live connection for a message with key, avoiding
// not when another is live; nil when none is. A recipient's messages keep
// to one link while it is up, so they arrive in the order they were sent.
func (g *ledger) pickLocked(key uint32, not *linkConn) *linkConn {
	var fallback *linkConn
	for i := range maxRelayLinks {
		slot := (int(key%maxRelayLinks) + i) % maxRelayLinks
		c := g.live[slot]
		if c == nil {
			continue
		}
		if c != not && g.stalled[slot].IsZero() {
			return c
		}
		if fallback == nil || fallback == not {
			fallback = c
		}
	}
	return fallback
}

// spreadKey is the hash of a delivery's recipient that picks its link.
func spreadKey(d *delivery) uint32 {
	if d == nil {
		return 0
	}
	h := uint32(2166136261) // FNV-1a
	for i := 0; i < len(d.ev.To); i++ {
		h ^= uint32(d.ev.To[i])
		h *= 16777619
	}
	return h
}

// acked ends the message an Ack is for and returns its delivery and
// outcome; nil for a duplicate ack, or one for a copy sent elsewhere before
// a re-route. now is when the ack arrived.
func (g *ledger) acked(a wire.Ack, now time.Time) (*delivery, outcome) {
	g.mu.Lock()
	p := g.byID.get(a.ID)
	if p == nil || p.dest != a.Origin {
		g.mu.Unlock()
		return nil, 0
	}
	if g.stallAfter > 0 {
		lat := now.Sub(p.due.Add(-g.ackTimeout)) // since it was last sent
		g.ackLatency += (lat - g.ackLatency) / 16
	}
	if p.list == &g.awaiting {
		if sent := p.due.Add(-g.ackTimeout); sent.After(g.lastAckedSent) {
			g.lastAckedSent = sent
		}
	}
	g.removeLocked(p)
	g.mu.Unlock()
	if a.Code == wire.AckNotHere {
		return p.d, outNotHere
	}
	return p.d, outTaken
}

// nacked handles a NACK that arrived on c: the relay there could not
// route the message. If another link is live and its relay has not
// refused the message yet, it goes over that one at once: the other relay
// may well have the route. Otherwise it is held, to be tried again after a
// backoff: the destination server may be reconnecting after a failover.
// Once it has been refused for longer than giveUp it is ended instead, and
// its delivery is returned as gaveUp (its outcome is outGaveUp). At its
// first NACK, it is returned as first: the caller looks the user up again
// (the user may have moved) and may withdraw it. now is when the NACK
// arrived.
func (g *ledger) nacked(c *linkConn, a wire.Ack, now time.Time) (gaveUp, first *delivery) {
	g.m.nacked()
	var b sendq.Batch
	defer b.Flush()
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.byID.get(a.ID)
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
	if c != nil {
		p.refused |= 1 << c.slot
	}
	for _, o := range g.live {
		if o != nil && p.refused&(1<<o.slot) == 0 {
			g.sendLocked(&b, o, p, now)
			g.m.resent(1)
			return nil, first
		}
	}
	g.awaiting.remove(p)
	p.via = nil
	p.refused = 0
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
	p := g.byID.get(id)
	if p == nil || p.dest != dest {
		return false
	}
	g.removeLocked(p)
	return true
}

func (g *ledger) removeLocked(p *pending) {
	p.list.remove(p)
	g.byID.delete(p.id)
	g.m.setUnacked(g.byID.n)
	g.doneLocked()
}

// resendDue sends again the messages whose ack is overdue, over another
// link than last time when there is one (the silent one may be the
// problem), and the held ones whose retry time has come. A message is
// overdue once its ack is ackTimeout late and a message sent after it has
// been acked (acks come back in order, so its own is lost), or once it is
// twice that late whatever came back. Without the first condition a server
// that lost the CPU for longer than ackTimeout (a busy shared machine, at
// saturation) resent thousands of messages whose acks were waiting unread
// in its own socket.
func (g *ledger) resendDue(now time.Time) {
	var b sendq.Batch
	defer b.Flush() // after the unlock: one write for all of them
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.pickLocked(0, nil) == nil {
		return // everything goes out when a connection comes up
	}
	g.checkStallsLocked(&b, now)
	// awaiting is in due order (sent time + ackTimeout), so the overdue
	// messages are a prefix: due by cut.
	cut := now.Add(-g.ackTimeout)
	if acked := g.lastAckedSent.Add(g.ackTimeout); acked.After(cut) {
		cut = acked
	}
	cut = earliest(cut, now)
	overdue := 0
	for p := g.awaiting.head; p != nil && !p.due.After(cut); p = p.next {
		overdue++
	}
	n := overdue
	for ; overdue > 0; overdue-- {
		p := g.awaiting.head
		g.sendLocked(&b, g.pickLocked(p.key, p.via), p, now)
	}
	for p := g.held.head; p != nil; {
		next := p.next
		if !p.due.After(now) {
			g.sendLocked(&b, g.pickLocked(p.key, nil), p, now)
			n++
		}
		p = next
	}
	if n > 0 {
		g.m.resent(n)
	}
}

// checkStallsLocked finds live connections that have gone silent with
// messages on them: a connection that has received nothing for stallAfter
// (or four times the average ack latency, if that is longer) while a
// message sent over it at least that long ago awaits its ack. A
// relay that forwards traffic hears acks all the time, so that silence
// means it is frozen or cut off, and DeadAfter (a second) is long to wait
// for the link to be declared dead. While another connection is live, not
// silent itself and heard from within the last stallAfter/2, everything on
// the silent one goes over that one at once and new messages avoid it,
// until it is heard from again; if the relay was only slow, its copies
// arrive too and the destination drops them by id.
func (g *ledger) checkStallsLocked(b *sendq.Batch, now time.Time) {
	if g.stallAfter <= 0 {
		return
	}
	stallAfter := max(g.stallAfter, 4*g.ackLatency)
	// First which connections are silent with messages on them, then the
	// moves: when both are, the destination rather than a relay is slow,
	// and nothing moves.
	var silent [maxRelayLinks]bool
	var heard [maxRelayLinks]time.Time
	for slot, c := range g.live {
		if c == nil {
			continue
		}
		heard[slot] = c.silentSince()
		if !g.stalled[slot].IsZero() {
			if heard[slot].After(g.stalled[slot]) {
				g.stalled[slot] = time.Time{} // heard from again
			} else {
				silent[slot] = true
			}
			continue
		}
		if now.Sub(heard[slot]) < stallAfter {
			continue
		}
		// awaiting is in due order, and due is when sent plus ackTimeout.
		sentBefore := now.Add(g.ackTimeout - stallAfter)
		for p := g.awaiting.head; p != nil && !p.due.After(sentBefore); p = p.next {
			if p.via == c {
				silent[slot] = true
				break
			}
		}
	}
	for slot, c := range g.live {
		if !silent[slot] || !g.stalled[slot].IsZero() {
			continue
		}
		// Only to a connection heard from just now: if both went quiet
		// (this process starved of CPU, say, or the destination slow),
		// moving would only double the work.
		var other *linkConn
		for o, oc := range g.live {
			if oc != nil && o != slot && !silent[o] && now.Sub(heard[o]) < stallAfter/2 {
				other = oc
			}
		}
		if other == nil {
			continue // nowhere else to go: wait for DeadAfter
		}
		g.stalled[slot] = now
		n := g.moveLocked(b, c, now, func(*pending) *linkConn { return other })
		g.m.resent(n)
		g.m.stalled()
		c.log.Warn("relay link silent with messages on it: sending them over the other link", "relay", c.relayID, "silent_for", now.Sub(heard[slot]).Round(time.Millisecond), "moved", n)
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
	return g.byID.n
}

// abandon forgets every message (at shutdown) and returns their
// deliveries; their outcome is outClosed.
func (g *ledger) abandon() []*delivery {
	g.mu.Lock()
	defer g.mu.Unlock()
	ds := make([]*delivery, 0, g.byID.n)
	g.byID.each(func(p *pending) { ds = append(ds, p.d) })
	g.byID.clear()
	g.wakeAllLocked()
	g.awaiting, g.held = pendingList{}, pendingList{}
	g.m.setUnacked(0)
	return ds
}

// pendingIndex finds pending messages by id. Ids are a per-process prefix
// and a sequence number (Server.newID), and what a server has in flight are
// mostly consecutive numbers of its own: so a message goes in the ring slot
// of its sequence number, and only one whose slot is taken (a message held
// long, an id of another form) in the map. A map of every message, with
// an insert and a delete per message, was a tenth of a message server's
// CPU at saturation.
type pendingIndex struct {
	ring     []*pending // by sequence number modulo its length, a power of two
	overflow map[wire.ID]*pending
	peak     int // the most overflow has held since it was made
	n        int // messages indexed
}

// overflowKeep is the most messages an overflow map may have held and be
// kept as it is: a Go map does not shrink, so one that grew while the relay
// was away (up to MaxUnacked messages, megabytes) is made anew, with what
// it still holds, once that is under a quarter of its peak.
const overflowKeep = 1024

// newPendingIndex makes an index with a ring of at least twice window.
func newPendingIndex(window int) pendingIndex {
	size := 64
	for size < 2*window {
		size *= 2
	}
	return pendingIndex{ring: make([]*pending, size), overflow: make(map[wire.ID]*pending)}
}

func (x *pendingIndex) slot(id wire.ID) **pending {
	return &x.ring[binary.BigEndian.Uint64(id[8:])&uint64(len(x.ring)-1)]
}

func (x *pendingIndex) get(id wire.ID) *pending {
	if p := *x.slot(id); p != nil && p.id == id {
		return p
	}
	if len(x.overflow) == 0 {
		return nil
	}
	return x.overflow[id]
}

// put indexes p, in place of a message of the same id if there is one.
func (x *pendingIndex) put(p *pending) {
	s := x.slot(p.id)
	if *s != nil && (*s).id == p.id {
		*s = p
		return
	}
	if _, ok := x.overflow[p.id]; ok {
		x.overflow[p.id] = p
		return
	}
	if *s == nil {
		*s = p
	} else {
		x.overflow[p.id] = p
		x.peak = max(x.peak, len(x.overflow))
	}
	x.n++
}

func (x *pendingIndex) delete(id wire.ID) {
	if s := x.slot(id); *s != nil && (*s).id == id {
		*s = nil
		x.n--
		return
	}
	if _, ok := x.overflow[id]; ok {
		delete(x.overflow, id)
		x.n--
		x.shrink()
	}
}

// shrink makes the overflow map anew if it once grew large and now holds
// under a quarter of that: a message held long does not keep the rest's
// memory.
func (x *pendingIndex) shrink() {
	if x.peak <= overflowKeep || len(x.overflow) >= x.peak/4 {
		return
	}
	m := make(map[wire.ID]*pending, len(x.overflow))
	for id, p := range x.overflow {
		m[id] = p
	}
	x.overflow, x.peak = m, len(m)
}

func (x *pendingIndex) each(f func(*pending)) {
	for _, p := range x.ring {
		if p != nil {
			f(p)
		}
	}
	for _, p := range x.overflow {
		f(p)
	}
}

func (x *pendingIndex) clear() {
	clear(x.ring)
	clear(x.overflow)
	x.n = 0
	x.shrink()
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
