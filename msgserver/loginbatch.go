package msgserver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/store"
)

// maxLoginBatch is the most logins one pipeline carries.
const maxLoginBatch = 512

// errBatcherStopped fails the claims of a server that is stopping.
var errBatcherStopped = errors.New("the server is stopping")

// loginClaim is one login's presence claim and inbox take, and their
// outcome once done is closed.
type loginClaim struct {
	store.Claim
	done chan struct{}
}

// loginBatcher gives logins their Redis round trip: one goroutine takes
// every claim waiting, sends them all in one pipeline, answers each, and
// repeats. It never waits for more claims to arrive: a lone login costs one
// round trip, as it did alone, and logins arriving while a pipeline is in
// flight share the next one.
//
// Claims wait in a queue, not a channel: queueing one is an append, with
// no timer of its own. Every claim queued is answered: by its pipeline
// (bounded by the batcher's timeout), or as failed when the batcher stops.
type loginBatcher struct {
	store   *store.Store
	timeout time.Duration // per pipeline, plus a little per claim
	onError func()        // counts a claim that never reached Redis

	mu      sync.Mutex
	queue   []*loginClaim
	stopped bool
	wake    chan struct{} // a claim was queued in an empty queue
}

func newLoginBatcher(st *store.Store, timeout time.Duration, onError func()) *loginBatcher {
	return &loginBatcher{store: st, timeout: timeout, onError: onError, wake: make(chan struct{}, 1)}
}

// claim records want.User at want.At and takes the user's offline inbox,
// sharing the round trip with concurrent logins. It waits for the outcome,
// however long the pipeline takes (it is bounded by the batcher's timeout,
// and a claim queued behind a pipeline in flight waits for that one too):
// a login that gave up early could leave a claimed presence or a taken
// inbox with no session to show for it. When the claim fails, any inbox
// lines taken with it are put back.
func (b *loginBatcher) claim(want store.Claim) *loginClaim {
	user := want.User
	c := &loginClaim{Claim: want, done: make(chan struct{})}
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		b.onError()
		c.Err = fmt.Errorf("claim presence of %q: %w", user, errBatcherStopped)
		return c
	}
	b.queue = append(b.queue, c)
	first := len(b.queue) == 1
	b.mu.Unlock()
	if first {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
	<-c.done
	if c.Err != nil && len(c.Inbox) > 0 {
		// The inbox key answered but the presence key did not (a Cluster
		// node down, a key of the wrong type): keep the messages for the
		// login that will work.
		rctx, cancel := context.WithTimeout(context.Background(), b.timeout)
		defer cancel()
		if err := b.store.RestoreInbox(rctx, user, c.Inbox); err != nil {
			c.Err = fmt.Errorf("%w (and %d offline messages taken with it are lost: %w)", c.Err, len(c.Inbox), err)
		}
		c.Inbox = nil
	}
	return c
}

// run serves claims until ctx ends, then fails those still queued and any
// that come later.
func (b *loginBatcher) run(ctx context.Context) {
	batch := make([]*loginClaim, 0, maxLoginBatch)
	claims := make([]*store.Claim, 0, maxLoginBatch)
	defer b.stop()
	for {
		b.mu.Lock()
		n := min(len(b.queue), maxLoginBatch)
		batch = append(batch, b.queue[:n]...)
		clear(b.queue[:n])
		b.queue = b.queue[n:]
		if len(b.queue) == 0 {
			b.queue = nil // let a storm's queue go
		}
		b.mu.Unlock()
		if len(batch) == 0 {
			select {
			case <-b.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		for _, c := range batch {
			claims = append(claims, &c.Claim)
		}
		b.send(ctx, batch, claims)
		clear(batch)
		batch = batch[:0]
		clear(claims)
		claims = claims[:0]
	}
}

// stop fails the claims queued and refuses new ones.
func (b *loginBatcher) stop() {
	b.mu.Lock()
	b.stopped = true
	q := b.queue
	b.queue = nil
	b.mu.Unlock()
	for _, c := range q {
		b.onError()
		c.Err = fmt.Errorf("claim presence of %q: %w", c.User, errBatcherStopped)
		close(c.done)
	}
}

// send runs one batch (claims are its claims' store halves) and answers
// every claim in it.
func (b *loginBatcher) send(ctx context.Context, batch []*loginClaim, claims []*store.Claim) {
	cctx, cancel := context.WithTimeout(ctx, b.timeout+time.Duration(len(batch))*time.Microsecond)
	defer cancel()
	b.store.ClaimLogins(cctx, claims)
	for _, c := range batch {
		close(c.done)
	}
}
