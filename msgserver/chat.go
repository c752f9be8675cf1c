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

// delivery is one accepted chat message on its way to the recipient.
type delivery struct {
	srv      *Server
	sender   *session
	ref      string
	id       wire.ID
	ev       chatEvent
	accepted time.Time
	routes   int // how many servers it has been sent to
}

// chat accepts a message from a logged-in sender and sends it on its way:
// to a local session, through the relay to the recipient's server, or to
// the recipient's offline inbox. The reply says which, once it is known.
func (s *Server) chat(sess *session, r request) *clientError {
	if sess.name == "" {
		return errorf(CodeNotLoggedIn, "log in first: {\"cmd\":\"login\",\"name\":\"...\"}")
	}
	if r.Send != "" && r.Send != sess.name {
		if send, e := normalizeName(r.Send, s.cfg.MaxNameLen); e != nil || send != sess.name {
			s.log.Warn("refused chat with a forged sender", "user", sess.name, "claimed", truncate(r.Send, 64), "remote", sess.remote)
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
	d.ev = chatEvent{Event: "chat", ID: d.id.String(), From: sess.name, To: recv, Content: r.Content, TS: now.UnixMilli()}
	return d.route(true)
}

// route sends the message to where the recipient is. cached says whether a
// cached location may be used (not after a "not here").
func (d *delivery) route(cached bool) *clientError {
	s := d.srv
	if dst := s.local(d.ev.To); dst != nil {
		dst.sendEvent(nil, &d.ev)
		d.finish(nil, StatusDelivered)
		return nil
	}
	loc, ok := store.Location{}, false
	if cached {
		loc, ok = s.routes.get(d.ev.To, d.accepted)
	}
	if !ok {
		// Only a cache miss costs a Redis round trip (and a context).
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RedisTimeout)
		defer cancel()
		var err error
		loc, ok, err = s.store.Lookup(ctx, d.ev.To)
		if err != nil {
			s.log.Warn("chat not routed: presence store unavailable", "user", d.ev.From, "err", err)
			return errorf(CodeUnavailable, "message not sent: presence store unavailable, try again shortly")
		}
		if ok {
			s.routes.put(d.ev.To, loc, d.accepted)
		}
	}
	if !ok || loc.Server == s.cfg.ID || s.ledger == nil || d.routes >= maxRoutes {
		return d.storeOffline()
	}
	d.routes++
	f := &wire.Forward{ID: d.id, Origin: s.cfg.ID, Dest: loc.Server}
	f.Payload = appendPayload(nil, &payload{From: d.ev.From, To: d.ev.To, TS: d.ev.TS, Content: d.ev.Content})
	if err := s.ledger.send(d, f); err != nil {
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
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			var e *clientError
			if o == outGaveUp {
				e = d.storeOffline()
			} else {
				e = d.route(false)
			}
			if e != nil {
				d.sender.fail("chat", d.ref, e)
			}
		}()
	case outClosed:
		d.sender.fail("chat", d.ref, errorf(CodeShuttingDown, "server shut down before message %s was confirmed", d.ev.ID))
	}
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
	limit := d.sender.offlineLimiter(&s.cfg)
	if limit != nil && limit.Tokens() < 1 {
		return errorf(CodeRateLimited, "message not stored: over %d offline messages a minute; try again later", s.cfg.OfflineRate)
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RedisTimeout)
	defer cancel()
	entry := appendInboxEntry(nil, d.id, &payload{From: ev.From, To: ev.To, TS: ev.TS, Content: ev.Content})
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

func (d *delivery) finish(b *sendq.Batch, status string) {
	d.srv.m.delivered(status, d.accepted)
	d.sender.sendReply(b, reply{Reply: "chat", OK: true, ID: d.ev.ID, Status: status, Ref: d.ref})
}

// onForward takes a message from another server for a local user. It runs
// on the relay link's reader goroutine, queues the event in the reader's
// batch and returns the ack status.
//
// With two relay links, two readers run it at once, and a message resent
// over the other link after a link failure may arrive on both at the same
// moment: the dedup lock is held from the check to the record, so only one
// of them shows it.
func (s *Server) onForward(f wire.Forward, b *sendq.Batch) byte {
	s.dedup.mu.Lock()
	defer s.dedup.mu.Unlock()
	if s.dedup.seen(f.ID) {
		s.m.duplicate()
		return wire.AckDelivered
	}
	p, err := parsePayload(f.Payload)
	if err != nil {
		// Resending cannot fix it: ack so the origin stops, and say so.
		s.log.Error("dropping malformed message from another server", "origin", f.Origin, "id", f.ID.String(), "err", err)
		return wire.AckDelivered
	}
	dst := s.local(p.To)
	if dst == nil {
		return wire.AckNotHere
	}
	dst.sendEvent(b, &chatEvent{Event: "chat", ID: f.ID.String(), From: p.From, To: p.To, Content: p.Content, TS: p.TS})
	s.dedup.add(f.ID)
	return wire.AckDelivered
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
//
// mu is held by onForward from the check to the record: each relay link
// has a reader, and the readers share one dedup.
type dedup struct {
	mu    sync.Mutex
	n     uint64
	rings map[[8]byte][]uint64
}

func newDedup(n int) *dedup {
	return &dedup{n: uint64(max(n, 1)), rings: make(map[[8]byte][]uint64)}
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
