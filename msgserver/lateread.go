package msgserver

import (
	"context"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/internal/sendq"
	"github.com/chatrelay/chatrelay/store"
)

// maxLateReads is the most late inbox reads one batch carries.
const maxLateReads = 512

// lateReadGather is how long after the first read of a batch is due the
// batch goes: the reads falling due meanwhile join it. A read is never
// early, and late by at most this.
const lateReadGather = 20 * time.Millisecond

// lateRead is one login's inbox read once more (readInboxLate).
type lateRead struct {
	due  time.Time
	sess *session
	user string
	acks bool
	ids  map[string]bool // acks: the ids read at login
}

// lateReader runs the late inbox reads of logins (readInboxLate) on one
// goroutine, in batches: every read that is due (gathered for
// lateReadGather) goes in one round trip that looks which inboxes exist,
// and only those are read. A login storm costs one plain command per login
// and a round trip per batch, and neither a timer nor a goroutine per
// login. Reads are due in the order logins queue them (the delay is the
// same for all), so the queue is a FIFO.
type lateReader struct {
	srv   *Server
	mu    sync.Mutex
	queue []lateRead
	wake  chan struct{} // a read was queued in an empty queue
}

func newLateReader(s *Server) *lateReader {
	return &lateReader{srv: s, wake: make(chan struct{}, 1)}
}

func (l *lateReader) add(r lateRead) {
	l.mu.Lock()
	l.queue = append(l.queue, r)
	first := len(l.queue) == 1
	l.mu.Unlock()
	if first {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
}

// run serves the queue until ctx ends; reads still queued then are dropped
// with the server.
func (l *lateReader) run(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	batch := make([]lateRead, 0, maxLateReads)
	for {
		l.mu.Lock()
		var wait time.Duration
		if len(l.queue) == 0 {
			wait = -1
		} else {
			wait = time.Until(l.queue[0].due.Add(lateReadGather))
		}
		if wait <= 0 && len(l.queue) > 0 {
			n := 0
			now := time.Now()
			for n < len(l.queue) && n < maxLateReads && !l.queue[n].due.After(now) {
				n++
			}
			batch = append(batch[:0], l.queue[:n]...)
			clear(l.queue[:n])
			l.queue = l.queue[n:]
			if len(l.queue) == 0 {
				l.queue = nil // let a storm's queue go
			}
		}
		l.mu.Unlock()
		switch {
		case len(batch) > 0:
			l.read(ctx, batch)
			clear(batch)
			batch = batch[:0]
			continue
		case wait < 0:
			select {
			case <-l.wake:
			case <-ctx.Done():
				return
			}
		default:
			t.Reset(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
		}
	}
}

// read runs one batch of late reads and sends each session what was stored
// meanwhile, as readInboxLate says.
func (l *lateReader) read(ctx context.Context, batch []lateRead) {
	s := l.srv
	reads := make([]*store.InboxRead, 0, len(batch))
	of := make([]*lateRead, 0, len(batch))
	for i := range batch {
		r := &batch[i]
		if r.sess.isClosed() || s.local(r.user) != r.sess {
			continue
		}
		if r.acks && r.sess.pager.Load().skipLive() {
			continue // paging: the next page reads the inbox
		}
		in := &store.InboxRead{User: r.user, Keep: r.acks}
		if !r.acks {
			in.Token = s.newID().String()
		}
		reads = append(reads, in)
		of = append(of, r)
	}
	if len(reads) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.RedisTimeout+time.Duration(len(reads))*time.Microsecond)
	defer cancel()
	s.store.ReadInboxes(cctx, reads)
	// A take that failed may have run, its reply lost: what it moved waits
	// under its name, and only the same take gets it. Once more, then.
	var again []*store.InboxRead
	for _, in := range reads {
		if in.Err != nil && ctx.Err() == nil {
			again = append(again, in)
		}
	}
	if len(again) > 0 {
		actx, acancel := context.WithTimeout(ctx, s.cfg.RedisTimeout+time.Duration(len(again))*time.Microsecond)
		s.store.TakeInboxesAgain(actx, again)
		acancel()
	}
	if ctx.Err() != nil { // the server is closing: what was taken waits for the next login
		for _, in := range reads {
			if !in.Keep && in.Err == nil && len(in.Lines) > 0 {
				s.restoreTaken(in.User, in.Lines)
			}
		}
		return
	}
	var failed []string // users whose read failed: one warning for the batch, not one per login
	var failure error
	for i, in := range reads {
		r := of[i]
		if in.Err != nil {
			if len(failed) < maxLoggedUsers {
				failed = append(failed, r.user)
			}
			failure = in.Err
			continue
		}
		if len(in.Lines) == 0 {
			continue
		}
		var b sendq.Batch
		var skip func(*inboxEvent) bool
		if r.acks {
			skip = func(e *inboxEvent) bool {
				return e.ev.Redelivered || r.ids[e.ev.ID] // sent live (to this session or an earlier one), or at login
			}
		}
		s.queueInbox(&b, r.sess, r.user, in.Lines, !r.acks, skip)
		b.Flush()
	}
	if failure != nil {
		n := 0
		for _, in := range reads {
			if in.Err != nil {
				n++
			}
		}
		s.log.Warn("inboxes not read again after login, twice; what a take moved waits under its name for a minute, the rest for the next login",
			"logins", n, "users", failed, "err", failure)
	}
}

// maxLoggedUsers is how many user names one warning about a batch lists.
const maxLoggedUsers = 10
