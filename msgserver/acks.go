package msgserver

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/internal/sendq"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/wire"
)

// Client acks and receipts.
//
// A session that logs in with "acks":true acks the events it gets
// ({"cmd":"ack","id":"..."}). Until then each event is kept in the user's
// inbox list in Redis: its login reads the inbox without taking it, and
// every event sent to it live is pushed there first (the keeper), so the
// list holds what the client has not acked, in the order it was sent. An
// ack removes entries by id. Whatever ends the session (the client, a cut,
// a shutdown, a crash of this server) the events stay for its next login,
// which sends them again marked "redelivered". The list of a session that
// never acks stops at InboxMax+UnackedMax entries: the next event closes
// it with too_many_unacked.
//
// A sender that logs in with "receipts":true has its chat messages marked
// so (in the inbox entry and the Forward payload); when the recipient's
// client acks one, the ack's server sends the sender a receipt, routed as
// a message is: live to the sender's session here or through the relay,
// or into the sender's inbox.

// Inbox entry versions besides inboxEntryV1 (offline.go). Every entry has
// its message id at bytes 1 to 16 (the store's acks read it there).
const (
	// inboxEntryV2: version, id(16), flags(1), payload: a chat message with flags.
	inboxEntryV2 = 2
	// inboxEntryReceipt: version, id(16) of the message acked, payload
	// with from the user who acked, to the sender, ts the ack's time and
	// content the status.
	inboxEntryReceipt = 3
)

// Flags of an inboxEntryV2.
const (
	flagKept    = 1 << 0 // pushed when sent live to a session with acks: read back, it is redelivered
	flagReceipt = 1 << 1 // the sender asked for a receipt
)

const (
	eventChat    = "chat"
	eventReceipt = "receipt"
)

// item is one event for a recipient: a chat message or a receipt.
type item struct {
	ev          chatEvent // what the recipient sees; ev.Event is eventChat or eventReceipt
	msgID       wire.ID   // ev.ID; a receipt's is the id of the message acked
	wantReceipt bool      // a chat message whose sender asked for a receipt
}

func (it *item) isReceipt() bool { return it.ev.Event == eventReceipt }

func (it *item) payload() *payload {
	return &payload{From: it.ev.From, To: it.ev.To, TS: it.ev.TS, Content: it.ev.Content}
}

// entry appends the item's inbox entry; kept marks one pushed for a
// session with acks as it was sent live.
func (it *item) entry(b []byte, kept bool) []byte {
	switch {
	case it.isReceipt():
		b = append(b, inboxEntryReceipt)
		b = append(b, it.msgID[:]...)
		return appendPayload(b, it.payload())
	case !kept && !it.wantReceipt:
		return appendInboxEntry(b, it.msgID, it.payload()) // what servers without acks read too
	}
	var flags byte
	if kept {
		flags |= flagKept
	}
	if it.wantReceipt {
		flags |= flagReceipt
	}
	b = append(b, inboxEntryV2)
	b = append(b, it.msgID[:]...)
	b = append(b, flags)
	return appendPayload(b, it.payload())
}

// appendForwardPayload appends the Forward payload of the item: the chat
// payload of old for a plain chat message; otherwise a zero byte (no name
// is empty, so no chat payload starts with one) and the inbox entry.
func (it *item) appendForwardPayload(b []byte) []byte {
	if !it.isReceipt() && !it.wantReceipt {
		return appendPayload(b, it.payload())
	}
	return it.entry(append(b, 0), false)
}

// forwardFrame is the item's Forward frame from origin to dest, with id,
// in one buffer of about its size.
func (it *item) forwardFrame(id wire.ID, origin, dest string) []byte {
	ev := &it.ev
	size := wire.HeaderLen + wire.IDLen + 2 + len(origin) + len(dest) + // the frame's fields
		1 + 1 + wire.IDLen + 1 + // an entry's zero byte, version, id, flags
		2 + len(ev.From) + len(ev.To) + 8 + len(ev.Content) // the chat payload
	return wire.AppendForwardFunc(make([]byte, 0, size), id, origin, dest, it.appendForwardPayload)
}

// parseForward reads a Forward's payload; a chat message's id is the
// Forward's.
func parseForward(f *wire.Forward) (item, error) {
	if len(f.Payload) > 0 && f.Payload[0] == 0 {
		it, _, err := parseEntry(f.Payload[1:])
		return it, err
	}
	p, err := parsePayload(f.Payload)
	if err != nil {
		return item{}, err
	}
	return item{ev: chatEvent{Event: eventChat, ID: f.ID.String(), From: p.From, To: p.To, Content: p.Content, TS: p.TS}, msgID: f.ID}, nil
}

// parseEntry reads an inbox entry of any binary version; kept says it was
// pushed as it was sent live.
func parseEntry(e []byte) (it item, kept bool, err error) {
	if len(e) < 1+wire.IDLen {
		return item{}, false, errBadInboxEntry
	}
	version := e[0]
	copy(it.msgID[:], e[1:])
	rest := e[1+wire.IDLen:]
	var flags byte
	switch version {
	case inboxEntryV1, inboxEntryReceipt:
	case inboxEntryV2:
		if len(rest) < 1 {
			return item{}, false, errBadInboxEntry
		}
		flags, rest = rest[0], rest[1:]
	default:
		return item{}, false, errBadInboxEntry
	}
	p, err := parsePayload(rest)
	if err != nil {
		return item{}, false, errBadInboxEntry
	}
	event := eventChat
	if version == inboxEntryReceipt {
		event = eventReceipt
	}
	it.ev = chatEvent{Event: event, ID: it.msgID.String(), From: p.From, To: p.To, Content: p.Content, TS: p.TS}
	it.wantReceipt = flags&flagReceipt != 0
	return it, flags&flagKept != 0, nil
}

// appendReceiptLine appends a receipt event:
//
//	{"event":"receipt","id":"...","status":"delivered","from":"bob","ts":1795593772369}
func appendReceiptLine(b []byte, e *chatEvent) []byte {
	b = append(b, `{"event":"receipt","id":`...)
	b = appendJSONString(b, e.ID)
	b = append(b, `,"status":`...)
	b = appendJSONString(b, e.Content)
	b = append(b, `,"from":`...)
	b = appendJSONString(b, e.From)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, e.TS, 10)
	if e.Redelivered {
		b = append(b, `,"redelivered":true`...)
	}
	return append(b, "}\n"...)
}

// Receipt statuses.
const receiptDelivered = "delivered"

// keeper pushes the events for sessions with acks to Redis before they
// are queued, in batches: one goroutine takes every job waiting, pushes
// them in one pipeline, queues them in order and answers each.
type keeper struct {
	srv   *Server
	queue chan *keepJob
}

// keepJob is one event for a session with acks. done(true) once it is
// kept and queued; done(false) if the session could not take it (closed,
// over its unacked limit) or Redis did not keep it: the caller then looks
// elsewhere, as for a user who is not here.
type keepJob struct {
	dst  *session
	it   *item
	done func(b *sendq.Batch, ok bool) // b batches its writes with the keeper's
}

// keepQueue is how many events may wait for the keeper.
const keepQueue = 8192

func newKeeper(s *Server) *keeper { return &keeper{srv: s, queue: make(chan *keepJob, keepQueue)} }

// keep hands the job to the keeper without waiting; false if the keeper
// has too many waiting (done is not called then).
func (k *keeper) keep(j *keepJob) bool {
	select {
	case k.queue <- j:
		return true
	default:
		return false
	}
}

// keepWait hands the job to the keeper, waiting for room until ctx ends.
func (k *keeper) keepWait(ctx context.Context, j *keepJob) bool {
	select {
	case k.queue <- j:
		return true
	case <-ctx.Done():
		return false
	}
}

func (k *keeper) run(ctx context.Context) {
	const maxBatch = 512
	jobs := make([]*keepJob, 0, maxBatch)
	for {
		select {
		case j := <-k.queue:
			jobs = append(jobs, j)
		case <-ctx.Done():
			k.drain()
			return
		}
	more:
		for len(jobs) < maxBatch {
			select {
			case j := <-k.queue:
				jobs = append(jobs, j)
			default:
				break more
			}
		}
		k.run1(ctx, jobs)
		clear(jobs)
		jobs = jobs[:0]
	}
}

// drain answers what waits at shutdown: not kept.
func (k *keeper) drain() {
	for {
		select {
		case j := <-k.queue:
			j.done(nil, false)
		default:
			return
		}
	}
}

func (k *keeper) run1(ctx context.Context, jobs []*keepJob) {
	s := k.srv
	pushes := make([]*store.Push, 0, len(jobs))
	limit := s.cfg.InboxMax + s.cfg.UnackedMax
	for _, j := range jobs {
		// An event for a session that has closed is kept all the same, as
		// not sent (offline): it comes at the next login, in its order
		// among the events kept before and after it.
		pushes = append(pushes, &store.Push{User: j.it.ev.To, Entry: j.it.entry(nil, !j.dst.isClosed()), Limit: limit})
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.RedisTimeout+time.Duration(len(pushes))*time.Microsecond)
	s.store.PushAll(cctx, pushes)
	cancel()
	var b sendq.Batch
	for i, j := range jobs {
		p := pushes[i]
		switch {
		case errors.Is(p.Err, store.ErrInboxFull):
			j.dst.close(closeTooManyUnacked)
			j.done(&b, false)
		case p.Err != nil:
			s.log.Warn("event not kept for a session with acks: not sent to it", "user", j.it.ev.To, "err", p.Err)
			j.done(&b, false)
		default:
			// Kept: if the session closes before the client has it, its
			// next login has it again; while it pages, the pager sends it.
			if !j.dst.pager.Load().skipLive() {
				_ = j.dst.sendEvent(&b, &j.it.ev)
			}
			j.done(&b, true)
		}
	}
	b.Flush()
}

// ack removes the acked events of the session's user and sends the
// receipts their senders asked for.
func (s *Server) ack(sess *session, r request) *clientError {
	if sess.name == "" {
		return errorf(CodeNotLoggedIn, "log in first: {\"cmd\":\"login\",\"name\":\"...\",\"acks\":true}")
	}
	if !sess.acks.Load() {
		return errorf(CodeBadAck, "this session logged in without acks: log in with \"acks\":true to ack events")
	}
	if len(r.IDs) == 0 {
		return errorf(CodeBadAck, "no id: {\"cmd\":\"ack\",\"id\":\"...\"} or \"ids\":[...]")
	}
	for i, x := range r.IDs {
		id, err := hex.DecodeString(x)
		if err != nil || len(id) != wire.IDLen {
			return errorf(CodeBadAck, "%q is not an event id (32 hex digits)", truncate(x, 40))
		}
		// As the server wrote it (lower case), whatever case the client
		// wrote it back in: the session and its pages know ids so.
		r.IDs[i] = hex.EncodeToString(id)
	}
	// Only ids this session was sent cost Redis a look: an ack is a scan
	// of the user's whole list there, and ids made up by the client would
	// make it one for nothing (one client acking made-up ids within its
	// request rate kept Redis 83% busy). An id acked already, or sent to
	// an earlier session, removes nothing, as before: the event comes
	// again, and its ack then counts.
	known := sess.ackable.Load().known(r.IDs)
	ids := make([][]byte, len(known))
	for i, x := range known {
		ids[i], _ = hex.DecodeString(x) // checked above
	}
	var removed []string
	if len(ids) > 0 {
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RedisTimeout)
		defer cancel()
		a := &store.Ack{User: sess.name, IDs: ids}
		s.acker.ack(ctx, a)
		if a.Err != nil {
			s.log.Warn("ack not recorded", "user", sess.name, "err", a.Err)
			return errorf(CodeUnavailable, "ack not recorded: presence store unavailable; ack again shortly")
		}
		sess.ackable.Load().acked(known)
		removed = a.Removed
		if d := sess.chargeAckScan(a.Scanned); d > 0 {
			// Over its budget of Redis work: this client's next request
			// waits (its reader does), no one else's.
			s.m.ackThrottled()
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-sess.q.Done():
			case <-s.ctx.Done():
			}
			t.Stop()
		}
	}
	s.m.acked(len(removed))
	s.pageAcked(sess, r.IDs)
	now := time.Now()
	for _, e := range removed {
		it, _, err := parseEntry([]byte(e))
		if err != nil || it.isReceipt() || !it.wantReceipt {
			continue
		}
		s.sendReceipt(&item{
			ev:    chatEvent{Event: eventReceipt, ID: it.ev.ID, From: it.ev.To, To: it.ev.From, Content: receiptDelivered, TS: now.UnixMilli()},
			msgID: it.msgID,
		}, now)
	}
	sess.sendReply(nil, reply{Reply: "ack", OK: true, Ref: r.Ref})
	return nil
}

// sendReceipt routes a receipt to the sender of the message it is for,
// after the receipts before it to the same sender: live if the sender is
// logged in, else into its inbox (up to InboxMax+UnackedMax entries; past
// that it is dropped and logged).
func (s *Server) sendReceipt(it *item, now time.Time) {
	d := &delivery{srv: s, id: s.newID(), item: *it, accepted: now}
	s.reroutes.run(s, "\x00receipts:"+it.ev.To, func() {
		if e := d.route(true, nil, nil); e != nil {
			d.fail(e)
		}
	})
}

// deliverLocal hands it to dst, a session of this server, and calls done
// once dst has it queued (true) or could not take it (false: closed, over
// its unacked limit, or for a session with acks, not kept in Redis). For a
// session without acks it runs before deliverLocal returns; b, if not nil,
// batches the write. A false return means the keeper is too busy: done is
// not called (wait is false) and the caller answers nothing.
func (s *Server) deliverLocal(b *sendq.Batch, dst *session, it *item, wait bool, done func(b *sendq.Batch, ok bool)) bool {
	if !dst.acks.Load() {
		done(b, dst.sendEvent(b, &it.ev) == nil)
		return true
	}
	j := &keepJob{dst: dst, it: it, done: done}
	if wait {
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RedisTimeout)
		defer cancel()
		if !s.keeper.keepWait(ctx, j) {
			done(nil, false)
		}
		return true
	}
	return s.keeper.keep(j)
}

// forwardGate is what the relay link's reader knows of forwards in
// progress: ids taken (dedup) and ids being kept for a session with
// acks, whose ack comes when they are.
type forwardGate struct {
	mu       sync.Mutex
	dedup    dedup
	inflight map[wire.ID]struct{}
}

// check reports whether id was taken already (seen) or is being kept now
// (busy), and if neither, marks it busy when mark is set.
func (g *forwardGate) check(id wire.ID, mark bool) (seen, busy bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dedup.seen(id) {
		return true, false
	}
	if _, ok := g.inflight[id]; ok {
		return false, true
	}
	if mark {
		g.inflight[id] = struct{}{}
	}
	return false, false
}

// done ends id's keeping; taken adds it to the ids taken.
func (g *forwardGate) done(id wire.ID, taken bool) {
	g.mu.Lock()
	delete(g.inflight, id)
	if taken {
		g.dedup.add(id)
	}
	g.mu.Unlock()
}

// Paging. A session with acks may have more kept than its queue takes at
// once (SessionQueueBytes): sent at once, it would be cut as a slow
// consumer at every login. So its login sends what fits in half the queue,
// and the rest follows as the client acks: each ack that leaves nothing
// of the page outstanding reads the inbox again and sends the next page.
// While paging, events kept live for the session are not queued (they
// are in the inbox, behind the page, and come in their turn).
type pager struct {
	mu          sync.Mutex
	on          bool
	dirty       bool            // an event was kept while paging: read again before stopping
	sent        map[string]bool // ids sent and not known to be acked
	outstanding int             // of this page, not acked yet
}

// pageBudget is how many bytes a page may queue.
func (s *Server) pageBudget() int { return s.cfg.SessionQueueBytes / 2 }

// skipLive reports whether a live event for the session must wait for the
// pager (it is kept; the pager sends it in its turn).
func (p *pager) skipLive() bool {
	if p == nil {
		return false // never paged: the session has no acks
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.on {
		p.dirty = true
	}
	return p.on
}

// sendPage queues, in b, the events of inbox not sent yet while the queue
// holds less than the page budget, and reports whether all were sent.
// p.mu is held.
func (s *Server) sendPageLocked(b *sendq.Batch, sess *session, p *pager, inbox []inboxEvent) bool {
	budget := s.pageBudget()
	for i := range inbox {
		e := &inbox[i]
		if e.ev.ID != "" && p.sent[e.ev.ID] {
			continue
		}
		if sess.q.Len() >= budget {
			return false
		}
		if sess.queueInboxEvent(b, e) != nil {
			return false
		}
		if e.ev.ID != "" {
			p.sent[e.ev.ID] = true
			p.outstanding++
		}
	}
	return true
}

// startPaging sends the first page of a login with acks, before its
// session is published (s.mu held).
func (s *Server) startPaging(b *sendq.Batch, sess *session, inbox []inboxEvent) {
	p := sess.pager.Load()
	if p == nil {
		p = new(pager)
		sess.pager.Store(p)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sent = make(map[string]bool)
	p.outstanding, p.dirty = 0, false
	p.on = !s.sendPageLocked(b, sess, p, inbox)
	if !p.on {
		p.sent = nil
	}
}

// acked notes ids acked; when nothing of the page is outstanding (or an
// event was kept meanwhile), the inbox is read again and the next page
// sent. It runs on the session's reader.
func (s *Server) pageAcked(sess *session, ids []string) {
	p := sess.pager.Load()
	if p == nil {
		return // never paged
	}
	p.mu.Lock()
	if !p.on {
		p.mu.Unlock()
		return
	}
	for _, id := range ids {
		if p.sent[id] {
			delete(p.sent, id)
			p.outstanding--
		}
	}
	next := p.outstanding <= 0
	p.mu.Unlock()
	if !next {
		return
	}
	for range 8 { // bounded: each round sends a page or finds the inbox read
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RedisTimeout)
		p.mu.Lock()
		p.dirty = false
		p.mu.Unlock()
		lines, err := s.store.ReadInbox(ctx, sess.name)
		cancel()
		if err != nil {
			s.log.Warn("next page of kept events not read; ack again or log in again", "user", sess.name, "err", err)
			return
		}
		inbox := s.inboxEvents(sess.name, lines)
		var b sendq.Batch
		p.mu.Lock()
		all := s.sendPageLocked(&b, sess, p, inbox)
		done := all && !p.dirty
		if done {
			p.on, p.sent = false, nil
		}
		p.mu.Unlock()
		b.Flush()
		if done || !all {
			return
		}
	}
}

// lateReadAfter is how long after a login its inbox is read once more.
func (s *Server) lateReadAfter() time.Duration { return s.cfg.RedisTimeout + 500*time.Millisecond }

// readInboxLate reads the inbox of a login once more, a little later, and
// sends what was stored meanwhile by others: a server that looked the user
// up before this login's claim, found it offline (or on a server that
// said "not here", a session closing there) and stored the message after
// the login had read the inbox; without this it would wait for the next
// login. A session with acks gets only entries not kept as sent and not
// read at login (known); one that is paging reads them in its next page.
// The reads of many logins share a round trip (lateReader), so a login
// storm holds no goroutines or timers meanwhile.
func (s *Server) readInboxLate(sess *session, user string, acks bool, known []inboxEvent) {
	var ids map[string]bool
	if acks {
		ids = make(map[string]bool, len(known))
		for _, e := range known {
			ids[e.ev.ID] = true
		}
	}
	s.lateReads.add(lateRead{due: time.Now().Add(s.lateReadAfter()), sess: sess, user: user, acks: acks, ids: ids})
}

// acker gives acks their Redis round trip as loginBatcher does logins: one
// goroutine takes every ack waiting, removes them all in one pipeline and
// answers each; a lone ack costs one round trip, acks arriving meanwhile
// share the next.
type acker struct {
	store   *store.Store
	timeout time.Duration
	queue   chan *ackReq // unbuffered: an ack handed over is always answered
}

type ackReq struct {
	a    *store.Ack
	done chan struct{}
}

func newAcker(st *store.Store, timeout time.Duration) *acker {
	return &acker{store: st, timeout: timeout, queue: make(chan *ackReq)}
}

// ack removes a's ids, sharing the round trip with other sessions' acks.
func (k *acker) ack(ctx context.Context, a *store.Ack) {
	r := &ackReq{a: a, done: make(chan struct{})}
	select {
	case k.queue <- r:
	case <-ctx.Done():
		a.Err = fmt.Errorf("ack for %q: waiting for the ack pipeline: %w", a.User, ctx.Err())
		return
	}
	<-r.done
}

func (k *acker) run(ctx context.Context) {
	const maxBatch = 512
	reqs := make([]*ackReq, 0, maxBatch)
	acks := make([]*store.Ack, 0, maxBatch)
	for {
		select {
		case r := <-k.queue:
			reqs = append(reqs, r)
		case <-ctx.Done():
			return
		}
	more:
		for len(reqs) < maxBatch {
			select {
			case r := <-k.queue:
				reqs = append(reqs, r)
			default:
				break more
			}
		}
		for _, r := range reqs {
			acks = append(acks, r.a)
		}
		cctx, cancel := context.WithTimeout(ctx, k.timeout+time.Duration(len(acks))*time.Microsecond)
		k.store.AckAll(cctx, acks)
		cancel()
		for _, r := range reqs {
			close(r.done)
		}
		clear(reqs)
		reqs = reqs[:0]
		clear(acks)
		acks = acks[:0]
	}
}
