package msgserver

import (
	"context"
	"fmt"
	"time"

	"github.com/chatrelay/chatrelay/store"
)

// maxLoginBatch is the most logins one pipeline carries.
const maxLoginBatch = 512

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
type loginBatcher struct {
	store   *store.Store
	timeout time.Duration // per pipeline, plus a little per claim
	onError func()        // counts a claim that never reached Redis
	// queue is unbuffered, so a claim handed over is always answered, even
	// when the batcher stops: a sender either hands over or sees ctx end.
	queue chan *loginClaim
}

func newLoginBatcher(st *store.Store, timeout time.Duration, onError func()) *loginBatcher {
	return &loginBatcher{store: st, timeout: timeout, onError: onError, queue: make(chan *loginClaim)}
}

// claim records want.User at want.At and takes the user's offline inbox, sharing
// the round trip with concurrent logins. It waits for the outcome, however
// long the pipeline takes (it is bounded by the batcher's timeout): a login
// that gave up early could leave a claimed presence or a taken inbox with
// no session to show for it. When the claim fails, any inbox lines taken
// with it are put back.
func (b *loginBatcher) claim(ctx context.Context, want store.Claim) *loginClaim {
	user := want.User
	c := &loginClaim{Claim: want, done: make(chan struct{})}
	select {
	case b.queue <- c:
	case <-ctx.Done():
		// The batcher is stuck on a slow pipeline (or stopped): this
		// login's time is up, as a slow Redis call of its own would be.
		b.onError()
		c.Err = fmt.Errorf("claim presence of %q: waiting for the login pipeline: %w", user, ctx.Err())
		return c
	}
	<-c.done
	if c.Err != nil && len(c.Inbox) > 0 {
		// The inbox key answered but the presence key did not (a Cluster
		// node down, a key of the wrong type): keep the messages for the
		// login that will work.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.timeout)
		defer cancel()
		if err := b.store.RestoreInbox(rctx, user, c.Inbox); err != nil {
			c.Err = fmt.Errorf("%w (and %d offline messages taken with it are lost: %w)", c.Err, len(c.Inbox), err)
		}
		c.Inbox = nil
	}
	return c
}

// run serves claims until ctx ends.
func (b *loginBatcher) run(ctx context.Context) {
	batch := make([]*loginClaim, 0, maxLoginBatch)
	claims := make([]*store.Claim, 0, maxLoginBatch)
	for {
		select {
		case c := <-b.queue:
			batch = append(batch, c)
		case <-ctx.Done():
			return
		}
	more:
		for len(batch) < maxLoginBatch {
			select {
			case c := <-b.queue:
				batch = append(batch, c)
			default:
				break more
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
