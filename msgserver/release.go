package msgserver

import (
	"context"
	"log/slog"
	"time"

	"github.com/chatrelay/chatrelay/store"
)

// releaser removes the presence records of ended sessions in the
// background, many per pipeline: a mass disconnect (a network blip drops
// thousands of clients at once) costs a few round trips and one log line,
// not one of each per session, and never holds a session's goroutine.
// A record it cannot remove expires by its TTL.
type releaser struct {
	store   *store.Store
	log     *slog.Logger
	timeout time.Duration
	queue   chan pendingRelease
}

type pendingRelease struct {
	user string
	loc  store.Location
}

const (
	releaseQueueLen = 1 << 16
	maxReleaseBatch = 1024
)

func newReleaser(st *store.Store, log *slog.Logger, timeout time.Duration) *releaser {
	return &releaser{store: st, log: log, timeout: timeout, queue: make(chan pendingRelease, releaseQueueLen)}
}

// add queues the release of user's record if it still names loc. It never
// blocks: when the queue is full, the record is left to expire.
func (r *releaser) add(user string, loc store.Location) {
	select {
	case r.queue <- pendingRelease{user, loc}:
	default:
	}
}

// run releases queued records until ctx ends.
func (r *releaser) run(ctx context.Context) {
	for {
		var first pendingRelease
		select {
		case first = <-r.queue:
		case <-ctx.Done():
			return
		}
		// A later release of the same user replaces an earlier one: that
		// session's login already replaced the earlier record.
		batch := map[string]store.Location{first.user: first.loc}
	fill:
		for len(batch) < maxReleaseBatch {
			select {
			case p := <-r.queue:
				batch[p.user] = p.loc
			default:
				break fill
			}
		}
		cctx, cancel := context.WithTimeout(ctx, r.timeout)
		if err := r.store.ReleaseAll(cctx, batch); err != nil && ctx.Err() == nil {
			r.log.Warn("presence records not released; they expire by their TTL", "sessions", len(batch), "err", err)
		}
		cancel()
	}
}

// flush releases everything queued now, on the caller's goroutine (at
// shutdown, before the releaser stops).
func (r *releaser) flush(ctx context.Context) {
	batch := map[string]store.Location{}
	for {
		select {
		case p := <-r.queue:
			batch[p.user] = p.loc
			continue
		default:
		}
		break
	}
	if len(batch) == 0 {
		return
	}
	if err := r.store.ReleaseAll(ctx, batch); err != nil {
		r.log.Warn("presence records not released at shutdown; they expire by their TTL", "sessions", len(batch), "err", err)
	}
}
