package msgserver

import "sync"

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
}
