package msgserver

import (
	"sync"
	"time"
)

// idleTickWidth is the precision of a parked session's idle timeout (and
// login deadline): it closes within this much after it.
const idleTickWidth = 100 * time.Millisecond

// idleWheel closes parked sessions at their idle timeout (or login
// deadline) with one timer per tick (idleTickWidth) shared by every
// session due in it, instead of a timer per parked session: a time.Timer
// and its function were 128 bytes, kept for as long as the session was
// parked, and made again at every park.
type idleWheel struct {
	start  time.Time
	mu     sync.Mutex
	ticks  map[int64]*idleTick
	closed bool
}

// idleTick is the sessions due at one tick, each at its wheelIdx.
type idleTick struct {
	timer    *time.Timer
	sessions []*session
}

func newIdleWheel() *idleWheel {
	return &idleWheel{start: time.Now(), ticks: make(map[int64]*idleTick)}
}

// add files s to expire in d (rounded up to the next tick) and returns
// the tick, never 0; a closed wheel files nothing and returns 0. s is
// parked and its pmu held.
func (w *idleWheel) add(s *session, d time.Duration) int64 {
	tick := int64((time.Since(w.start)+max(d, 0))/idleTickWidth) + 1
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0
	}
	t := w.ticks[tick]
	if t == nil {
		t = &idleTick{}
		w.ticks[tick] = t
		t.timer = time.AfterFunc(time.Duration(tick)*idleTickWidth-time.Since(w.start), func() { w.fire(tick) })
	}
	s.wheelIdx = int32(len(t.sessions))
	t.sessions = append(t.sessions, s)
	return tick
}

// remove takes s out of tick, unless the tick has fired. s's pmu is held.
func (w *idleWheel) remove(s *session, tick int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.ticks[tick]
	i := int(s.wheelIdx)
	if t == nil || i < 0 || i >= len(t.sessions) || t.sessions[i] != s {
		return // fired (or the wheel closed): parkedIdleExpired sees s taken back
	}
	last := len(t.sessions) - 1
	t.sessions[i] = t.sessions[last]
	t.sessions[i].wheelIdx = int32(i)
	t.sessions[last] = nil
	t.sessions = t.sessions[:last]
	s.wheelIdx = -1
	if len(t.sessions) == 0 {
		t.timer.Stop()
		delete(w.ticks, tick)
	}
}

// fire expires the sessions still filed at tick, each on a goroutine of
// its own (the session's last: it finishes the session).
func (w *idleWheel) fire(tick int64) {
	w.mu.Lock()
	t := w.ticks[tick]
	delete(w.ticks, tick)
	var due []*session
	if t != nil {
		due = t.sessions
		for _, s := range due {
			s.wheelIdx = -1
		}
	}
	w.mu.Unlock()
	for _, s := range due {
		go s.parkedIdleExpired(tick)
	}
}

// close stops every timer; parked sessions are closed by their owner.
func (w *idleWheel) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	for tick, t := range w.ticks {
		t.timer.Stop()
		delete(w.ticks, tick)
	}
}
