package msgserver

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ackable is the ids of the events a session with acks was sent and has
// not acked: what an ack may name and have Redis look for (Server.ack).
// Its methods do nothing on a nil ackable (a session without acks).
type ackable struct {
	mu    sync.Mutex
	ids   map[string]struct{}
	limit int
	// over: more were sent unacked than limit (the store closes such a
	// session first, with too_many_unacked): acks are not filtered.
	over bool
}

// The budget of Redis work a session's acks have: an ack scans the user's
// list of kept events, up to InboxMax+UnackedMax entries of up to 8 KiB,
// and a client that keeps its list full and acks one event at a time (a
// friend sending it 4 KB messages) kept Redis 85% busy at 400 acks a
// second. A session may make Redis read ackScanRate bytes a second, in
// bursts of ackScanBurst; past that its next request waits. A client that
// acks as events come scans a short list and never waits; one that drains
// a full list of typical messages one ack at a time stays in the burst.
const (
	ackScanRate  = 8 << 20
	ackScanBurst = 16 << 20
)

func newAckable(limit int) *ackable { return &ackable{limit: limit} }

// maxAckable bounds the ids a session's ackable holds: twice what a user's
// list can hold, InboxMax+UnackedMax.
func (s *Server) maxAckable() int { return 2 * (s.cfg.InboxMax + s.cfg.UnackedMax) }

// sent records that the event id was queued to the session.
func (a *ackable) sent(id string) {
	if a == nil || id == "" {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.over {
		return
	}
	if len(a.ids) >= a.limit {
		a.over, a.ids = true, nil
		return
	}
	if a.ids == nil {
		a.ids = make(map[string]struct{})
	}
	a.ids[id] = struct{}{}
}

// known returns the ids of ids that the session was sent and has not
// acked, in their order; all of them when it does not filter.
func (a *ackable) known(ids []string) []string {
	if a == nil {
		return ids
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.over {
		return ids
	}
	var k []string
	for _, id := range ids {
		if _, ok := a.ids[id]; ok {
			k = append(k, id)
		}
	}
	return k
}

// acked forgets ids, acked now.
func (a *ackable) acked(ids []string) {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range ids {
		delete(a.ids, id)
	}
	if len(a.ids) == 0 {
		a.ids = nil // a map keeps its size: a drained backlog's would stay with the session
	}
}

// chargeAckScan takes an ack's cost (bytes Redis scanned) from the
// connection's budget and returns how long its next request is to wait.
// The budget is the connection's, not the login's: logging out and in
// again does not refill it. Only the session's reader acks.
func (s *session) chargeAckScan(scanned int64) time.Duration {
	if scanned <= 0 {
		return 0
	}
	if s.ackScan == nil {
		s.ackScan = rate.NewLimiter(ackScanRate, ackScanBurst)
	}
	return s.ackScan.ReserveN(time.Now(), int(min(scanned, ackScanBurst))).Delay()
}
