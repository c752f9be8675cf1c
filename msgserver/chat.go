package msgserver

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/internal/sendq"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/wire"
)

// maxRoutes is how many times a message follows a "not here" answer to a
// fresh location before it is stored offline instead.
const maxRoutes = 3

// delivery is one accepted chat message, or a receipt, on its way to the
// recipient.
type delivery struct {
	srv    *Server
	sender *session // nil for a receipt: no one waits for a reply
	ref    string
	id     wire.ID // the Forward's id (a chat message's own)
	item
	accepted time.Time
	routes   int    // how many servers it has been sent to
	lastDest string // the server it was last sent to
}

// chat accepts a message from a logged-in sender and sends it on its way:
// to a local session, through the relay to the recipient's server, or to
// the recipient's offline inbox. The reply says which, once it is known.
// b is the session reader's batch: what the message causes to be written
// may wait in it (nil: written at once).
func (s *Server) chat(sess *session, r request, b *sendq.Batch, credit *int) *clientError {
	if sess.name == "" {
		return errorf(CodeNotLoggedIn, "log in first: {\"cmd\":\"login\",\"name\":\"...\"}")
	}
	if r.Send != "" && r.Send != sess.name {
		if send, e := normalizeName(r.Send, s.cfg.MaxNameLen); e != nil || send != sess.name {
			s.log.Warn("refused chat with a forged sender", "user", sess.name, "claimed", truncate(r.Send, 64), "remote", sess.remote())
			return errorf(CodeSenderMismatch, "send %q is not the logged-in user %q", truncate(r.Send, 64), sess.name)
		}
	}
	recv, e := normalizeName(r.Recv, s.cfg.MaxNameLen)
	if e != nil {
		return errorf(CodeBadRecipient, "recv: %s", e.msg)
	}
	if len(r.Content) > s.cfg.MaxContent {
		return errorf(CodeContentTooLong, "content is %d bytes, the limit is %d", len(r.Content), s.cfg.MaxContent)
	}
	now := time.Now()
	d := &delivery{
		srv:      s,
		sender:   sess,
		ref:      r.Ref,
		id:       s.newID(),
		accepted: now,
	}
	d.item = item{
		ev:          chatEvent{Event: eventChat, ID: d.id.String(), From: sess.name, To: recv, Content: r.Content, TS: now.UnixMilli()},
		msgID:       d.id,
		wantReceipt: sess.receipts.Load(),
	}
	return d.route(true, b, credit)
}

// route sends the message to where the recipient is. cached says whether a
// cached location may be used (not after a "not here"); writes may wait in
// b (nil: none do). When the window of forwarded messages is full it waits
// for room (flow.go); credit is the reader's grant of room (nil: none).
func (d *delivery) route(cached bool, b *sendq.Batch, credit *int) *clientError {
	if dst := d.srv.local(d.ev.To); dst != nil {
		d.srv.deliverLocal(b, dst, &d.item, true, d.localDone)
		return nil
	}
	return d.routeRemote(cached, "", b, credit)
}

// localDone is the outcome of a delivery to a session here: queued, or
// not taken (the session is closing, or over its unacked limit), and then
// the message goes where presence says, or offline.
func (d *delivery) localDone(b *sendq.Batch, ok bool) {
	if ok {
		d.finish(b, StatusDelivered)
		return
	}
	d.srv.reroutes.run(d.srv, d.ev.To, func() {
		if e := d.routeRemote(false, "", nil, nil); e != nil {
			d.fail(e)
		}
	})
}

// routeRemote looks the recipient up (cached: the route cache may answer)
// and forwards the message to its server, or stores it offline: when the
// user is not logged in, is logged in here (but not reachable), is still
// at avoid (the server the relay could not reach), or the message has been
// routed maxRoutes times. b and credit are as for route.
func (d *delivery) routeRemote(cached bool, avoid string, b *sendq.Batch, credit *int) *clientError {
	s := d.srv
	loc, ok := store.Location{}, false
	if cached {
		loc, ok = s.routes.get(d.ev.To, d.accepted)
	}
	if !ok {
		// Only a cache miss costs a Redis round trip (and a context).
		if b != nil {
			b.Flush() // what the reader has queued does not wait for Redis
		}
		var err error
		loc, ok, err = s.lookupRoute(d.ev.To)
		if err != nil {
			s.log.Warn("chat not routed: presence store unavailable", "user", d.ev.From, "err", err)
			return errorf(CodeUnavailable, "message not sent: presence store unavailable, try again shortly")
		}
		if ok {
			s.routes.put(d.ev.To, loc, d.accepted)
		}
	}
	if ok && loc.Server == s.cfg.ID && s.local(d.ev.To) != nil && d.routes < maxRoutes {
		d.routes++ // logged in here since: deliver here
		return d.route(false, b, credit)
	}
	if !ok || loc.Server == s.cfg.ID || loc.Server == avoid || s.ledger == nil || d.routes >= maxRoutes {
		return d.storeOffline()
	}
	d.routes++
	d.lastDest = loc.Server
	frame := d.forwardFrame(d.id, s.cfg.ID, loc.Server)
	if !s.ledger.waitRoom(s.ctx, b, s.cfg.NoRouteGiveUp, credit) {
		return errorf(CodeBacklogFull, "message not sent: %d messages have awaited their ack for %s; try again shortly", s.ledger.window, s.cfg.NoRouteGiveUp)
	}
	var err error
	if b != nil {
		err = s.ledger.sendFrame(b, d, d.id, loc.Server, frame)
	} else {
		var b sendq.Batch
		err = s.ledger.sendFrame(&b, d, d.id, loc.Server, frame)
		b.Flush() // the write, if it is ours, happens outside the ledger's lock
	}
	if err != nil {
		return errorf(CodeBacklogFull, "message not sent: %v; try again shortly", err)
	}
	return nil
}

// forwarded handles the outcome of a relayed message, as the ledger
// returned it. It runs on the relay link's reader goroutine (or Close's,
// for outClosed), so anything that calls Redis goes elsewhere; the reply
// to the sender joins the reader's batch b (nil: written at once).
func (d *delivery) forwarded(o outcome, b *sendq.Batch) {
	s := d.srv
	switch o {
	case outTaken:
		d.finish(b, StatusRelayed)
	case outNotHere, outGaveUp:
		s.routes.forget(d.ev.To)
		// Look the user up again and deliver where they are now; after
		// giving up on a server the relay cannot reach, not there again.
		avoid := ""
		if o == outGaveUp {
			avoid = d.lastDest
		}
		s.reroutes.run(s, d.ev.To, func() {
			if e := d.routeRemote(false, avoid, nil, nil); e != nil {
				d.fail(e)
			}
		})
	case outClosed:
		d.fail(errorf(CodeShuttingDown, "server shut down before message %s was confirmed", d.ev.ID))
	}
}

// rerouteAfterNack runs on a goroutine of its own after a message's first
// NACK (the relay has no route to its destination server: it died, or is
// reconnecting): if presence says the user is now elsewhere, or nowhere,
// the message is taken back from the ledger and routed there (or stored
// offline) at once instead of waiting for NoRouteGiveUp.
func (d *delivery) rerouteAfterNack() {
	s := d.srv
	loc, ok, err := s.lookupRoute(d.ev.To) // one lookup for all of a user's NACKed messages
	if err != nil || (ok && loc.Server == d.lastDest) {
		return // the ledger retries it, and gives up in time
	}
	if !s.ledger.withdraw(d.id, d.lastDest) {
		return // answered meanwhile
	}
	s.routes.forget(d.ev.To)
	if e := d.routeRemote(false, d.lastDest, nil, nil); e != nil {
		d.fail(e)
	}
}

// fail tells the sender the message was not sent; a receipt's failure is
// logged.
func (d *delivery) fail(e *clientError) {
	if d.sender == nil {
		d.srv.log.Warn("receipt not sent", "to", d.ev.To, "id", d.ev.ID, "code", e.code, "err", e.msg)
		return
	}
	d.sender.fail("chat", d.ref, e)
}

// storeOffline keeps the message in the recipient's inbox and tells the
// sender, or refuses it: Redis is over the offline storage cap, the
// sender's offline rate is spent, or the inbox is full. A refused message
// is not stored anywhere, and nothing stored before is dropped for it.
func (d *delivery) storeOffline() *clientError {
	s := d.srv
	ev := &d.ev
	if s.offlineFull() {
		return errorf(CodeOfflineFull, "message not stored: offline storage is full; send it when %q is logged in", ev.To)
	}
	if d.sender == nil {
		return d.storeReceipt()
	}
	limit := d.sender.offlineLimiter(&s.cfg)
	if limit != nil && limit.Tokens() < 1 {
		return errorf(CodeRateLimited, "message not stored: over %d offline messages a minute; try again later", s.cfg.OfflineRate)
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RedisTimeout)
	defer cancel()
	entry := d.entry(nil, false)
	err := s.storeOffline(ctx, ev.To, entry)
	if err == nil {
		s.offline.stored(len(entry))
		if limit != nil {
			limit.Allow() // only stored messages count against the rate
		}
	}
	if errors.Is(err, store.ErrInboxFull) {
		return errorf(CodeInboxFull, "message not stored: the offline inbox of %q is full (%d messages); it empties when they log in", ev.To, s.cfg.InboxMax)
	}
	if err != nil {
		s.log.Warn("offline store failed", "user", ev.From, "recipient", ev.To, "err", err)
		return errorf(CodeUnavailable, "message not stored: offline store unavailable, try again shortly")
	}
	d.finish(nil, StatusOffline)
	return nil
}

// storeReceipt keeps a receipt in its addressee's inbox, unless the inbox
// holds InboxMax+UnackedMax entries (then it is dropped, and logged).
func (d *delivery) storeReceipt() *clientError {
	s := d.srv
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RedisTimeout)
	defer cancel()
	entry := d.entry(nil, false)
	p := &store.Push{User: d.ev.To, Entry: entry, Limit: s.cfg.InboxMax + s.cfg.UnackedMax}
	done := s.watches.noteStore(d.ev.To)
	s.store.PushAll(ctx, []*store.Push{p})
	done()
	switch {
	case errors.Is(p.Err, store.ErrInboxFull):
		return errorf(CodeInboxFull, "receipt dropped: the inbox of %q is full", d.ev.To)
	case p.Err != nil:
		return errorf(CodeUnavailable, "receipt not stored: %v", p.Err)
	}
	s.offline.stored(len(entry))
	return nil
}

func (d *delivery) finish(b *sendq.Batch, status string) {
	if d.sender == nil {
		return
	}
	d.srv.m.delivered(status, d.accepted)
	d.sender.sendReply(b, reply{Reply: "chat", OK: true, ID: d.ev.ID, Status: status, Ref: d.ref})
}

// onForward takes a message (or a receipt) from another server for a
// local user. It runs on the relay link's reader goroutine and answers
// the Forward over c: at once, in the reader's batch b, unless the user is
// a session with acks (the answer comes when the event is kept) or its
// login is in progress here (the answer comes when the login is done).
func (s *Server) onForward(f wire.Forward, c *linkConn, b *sendq.Batch) {
	if seen, busy := s.gate.check(f.ID, false); seen {
		s.m.duplicate()
		s.answerForward(c, f, wire.AckDelivered)
		return
	} else if busy {
		return // its first copy is being kept; that one is answered
	}
	it, err := parseForward(&f)
	if err != nil {
		// Resending cannot fix it: ack so the origin stops, and say so.
		s.log.Error("dropping malformed message from another server", "origin", f.Origin, "id", f.ID.String(), "err", err)
		s.answerForward(c, f, wire.AckDelivered)
		return
	}
	for range 2 {
		if dst := s.local(it.ev.To); dst != nil {
			s.forwardTo(b, dst, c, f, &it)
			return
		}
		switch s.watches.hold(it.ev.To, heldForward{c: c, f: f, it: it}) {
		case holdHeld:
			if f := s.onForwardHeld.Load(); f != nil {
				(*f)(it.ev.To)
			}
			return // the login answers it
		case holdNone:
			s.answerForward(c, f, wire.AckNotHere)
			return
		}
		// holdRetry: the login has just published its session.
	}
	s.answerForward(c, f, wire.AckNotHere)
}

// forwardTo delivers a Forward to dst and answers it: delivered once dst
// has it queued (for a session with acks, kept too), "not here" if dst
// could not take it.
func (s *Server) forwardTo(b *sendq.Batch, dst *session, c *linkConn, f wire.Forward, it *item) {
	if !dst.acks.Load() {
		// Marked busy from the check to the record: with two relay links,
		// the copy resent over the other link may be handled by the other
		// reader at this very moment, and only one may be shown.
		if seen, busy := s.gate.check(f.ID, true); seen || busy {
			if seen {
				s.answerForward(c, f, wire.AckDelivered)
			}
			return // busy: the other copy is answered
		}
		if dst.sendEvent(b, &it.ev) != nil {
			s.gate.done(f.ID, false)
			s.answerForward(c, f, wire.AckNotHere)
			return
		}
		s.gate.done(f.ID, true)
		s.answerForward(c, f, wire.AckDelivered)
		return
	}
	if _, busy := s.gate.check(f.ID, true); busy {
		return
	}
	kept := *it // the keeper holds it: a copy, so the caller's item stays on its stack
	handed := s.deliverLocal(b, dst, &kept, false, func(_ *sendq.Batch, ok bool) {
		s.gate.done(f.ID, ok)
		code := byte(wire.AckDelivered)
		if !ok {
			code = wire.AckNotHere
		}
		s.answerForward(c, f, code)
	})
	if !handed {
		s.gate.done(f.ID, false) // no answer: the origin sends it again
	}
}

// answerForward sends the Ack of a Forward over c, within ackDelay
// (flow.go): with whatever the link writes next, or alone.
func (s *Server) answerForward(c *linkConn, f wire.Forward, code byte) {
	c.sendAck(wire.Ack{ID: f.ID, Origin: s.cfg.ID, Dest: f.Origin, Code: code})
}

// serialRunner runs functions one after another per key (a recipient), each
// key on a goroutine of its own while it has work: messages re-routed
// after a "not here" or a NACK keep their order, and a slow Redis for one
// recipient does not hold up the others.
type serialRunner struct {
	mu sync.Mutex
	q  map[string][]func() // present: a goroutine runs the key's queue
}

func (r *serialRunner) run(s *Server, key string, f func()) {
	r.mu.Lock()
	if r.q == nil {
		r.q = make(map[string][]func())
	}
	if list, busy := r.q[key]; busy {
		r.q[key] = append(list, f)
		r.mu.Unlock()
		return
	}
	r.q[key] = nil
	r.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			f()
			r.mu.Lock()
			list := r.q[key]
			if len(list) == 0 {
				delete(r.q, key)
				r.mu.Unlock()
				return
			}
			f = list[0]
			list[0] = nil
			r.q[key] = list[1:]
			r.mu.Unlock()
		}
	}()
}

// lookupRoute asks the presence store where user is. Concurrent lookups of
// the same user share one round trip: a sender that has just logged in
// with a window of messages would otherwise send as many lookups at once,
// and a thousand such senders time Redis out.
func (s *Server) lookupRoute(user string) (store.Location, bool, error) {
	type found struct {
		loc store.Location
		ok  bool
	}
	v, err, _ := s.lookups.Do(user, func() (any, error) {
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RedisTimeout)
		defer cancel()
		loc, ok, err := s.store.Lookup(ctx, user)
		return found{loc, ok}, err
	})
	if err != nil {
		return store.Location{}, false, err
	}
	f := v.(found)
	return f.loc, f.ok, nil
}

// routeCache remembers where recipients are, so a busy conversation does
// not cost a Redis lookup per message. An entry is dropped when the
// destination answers "not here" and expires after ttl.
type routeCache struct {
	ttl time.Duration
	mu  sync.Mutex
	m   map[string]routeEntry
}

type routeEntry struct {
	loc     store.Location
	expires time.Time
}

func (c *routeCache) get(user string, now time.Time) (store.Location, bool) {
	c.mu.Lock()
	e, ok := c.m[user]
	c.mu.Unlock()
	if !ok || now.After(e.expires) {
		return store.Location{}, false
	}
	return e.loc, true
}

func (c *routeCache) put(user string, loc store.Location, now time.Time) {
	c.mu.Lock()
	c.m[user] = routeEntry{loc: loc, expires: now.Add(c.ttl)}
	c.mu.Unlock()
}

func (c *routeCache) forget(user string) {
	c.mu.Lock()
	delete(c.m, user)
	c.mu.Unlock()
}

func (c *routeCache) sweep(now time.Time) {
	c.mu.Lock()
	for u, e := range c.m {
		if now.After(e.expires) {
			delete(c.m, u)
		}
	}
	c.mu.Unlock()
}

// dedup remembers the last n messages taken from each origin, so a message
// resent after a failover is not shown twice. An origin resends only
// messages still unacked, so a window larger than its MaxUnacked catches
// every resend.
//
// Message ids are a per-process prefix and a sequence number, so each
// origin process gets a ring indexed by sequence number: a slot holds the
// last sequence number stored there, and a message is a duplicate when its
// slot holds its own number. No hashing of 16-byte keys, no map churn: the
// profile showed the map version at 7% of a message's cost.
type dedup struct {
	n     uint64
	rings map[[8]byte][]uint64
}

func newDedup(n int) dedup {
	return dedup{n: uint64(max(n, 1)), rings: make(map[[8]byte][]uint64)}
}

func split(id wire.ID) (prefix [8]byte, seq uint64) {
	copy(prefix[:], id[:8])
	return prefix, binary.BigEndian.Uint64(id[8:])
}

func (d *dedup) seen(id wire.ID) bool {
	prefix, seq := split(id)
	ring := d.rings[prefix]
	return ring != nil && ring[seq%d.n] == seq+1 // +1: an empty slot never matches
}

func (d *dedup) add(id wire.ID) {
	prefix, seq := split(id)
	ring := d.rings[prefix]
	if ring == nil {
		if len(d.rings) >= maxOrigins {
			clear(d.rings) // origins restarting forever: start over rather than grow
		}
		ring = make([]uint64, d.n)
		d.rings[prefix] = ring
	}
	ring[seq%d.n] = seq + 1
}

// maxOrigins bounds the rings kept: one per message server process seen
// (a restarted server is a new origin).
const maxOrigins = 64
