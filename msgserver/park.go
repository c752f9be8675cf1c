package msgserver

import (
	"time"

	"github.com/chatrelay/chatrelay/internal/netx"
)

// Parking: a session whose client has been silent for ParkIdleAfter gives
// up its reader goroutine (and the goroutine's stack, 4 KB or more, and its
// read buffer) and waits in the server's poller. When the client sends
// again, or closes, the poller starts a new reader (resume). A chat
// server's clients are silent nearly all the time, so this is most of the
// memory of an idle session. Everything else works as before while parked:
// messages to the user are written by the sender's goroutine, a close
// (kick, shutdown...) takes it back from the poller (unpark), and a timer
// enforces the idle timeout (or the login deadline, if that comes first).
// A session with part of a line read does not park: it waits on its
// goroutine, for at most the line timeout.

// The rules that keep this safe: a session's closed flag is set before
// anyone looks at cancelWait, park registers only under pmu and only if the
// session is not closed, and whoever takes a parked session back (resume,
// unpark, the idle timer) does it under pmu. A close that drops the
// connection (or a failed write) closes it under pmu, after taking the
// session out of the poller, so the poller never holds a descriptor that
// was closed (and maybe reused).

// park hands the session to the poller and reports whether it did; the
// calling reader goroutine then ends. left is the time to the idle timeout
// or the login deadline, whichever is first (parkFor).
func (s *session) park(left time.Duration) bool {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	if s.isClosed() {
		return false // a closer came first: finish on this goroutine
	}
	var cancel func() bool
	var err error
	if wc, ok := s.conn.(*wsConn); ok {
		cancel, err = wc.waitMessage(s.resume)
	} else {
		cancel, err = s.srv.poller.Wait(s.raw, s.resume)
	}
	if err != nil {
		s.srv.log.Debug("session not parked: it keeps its goroutine", "session", s.id, "remote", s.remote, "err", err)
		return false
	}
	s.cancelWait = cancel
	s.idleTimer = time.AfterFunc(left, s.parkedIdleExpired)
	s.srv.m.parked(1)
	return true
}

// resume runs on the goroutine the poller starts when the client sends
// something or closes: it becomes the session's reader.
func (s *session) resume() {
	s.pmu.Lock()
	t := s.idleTimer
	s.cancelWait, s.idleTimer = nil, nil
	s.srv.m.parked(-1)
	s.pmu.Unlock()
	if t != nil {
		t.Stop()
	}
	s.run()
}

// unpark, called by session.close, takes a parked session back from the
// poller and finishes it; the session is already marked closed. With
// closeConn, the connection is closed too, while the poller cannot hold it.
// If the poller has just started a reader, that reader sees the session
// closed and finishes it.
func (s *session) unpark(closeConn bool) {
	s.pmu.Lock()
	cancel, t := s.cancelWait, s.idleTimer
	s.cancelWait, s.idleTimer = nil, nil
	taken := cancel != nil && cancel()
	if taken {
		s.srv.m.parked(-1)
	}
	if closeConn {
		_ = netx.CloseNow(s.conn) // at once: this is a drop, and pmu is held
	}
	s.pmu.Unlock()
	if t != nil {
		t.Stop() // also when the poller won: the reader it started has its own deadline
	}
	if taken {
		go s.finish()
	}
}

// parkedIdleExpired is the idle timer of a parked session: the idle
// timeout, or the login deadline of a session that has not logged in. It
// takes the session back from the poller first: a session the poller has
// just handed to a reader (its client spoke at the deadline) is left to
// that reader.
func (s *session) parkedIdleExpired() {
	s.pmu.Lock()
	cancel := s.cancelWait
	taken := cancel != nil && cancel()
	if taken {
		s.cancelWait, s.idleTimer = nil, nil
		s.srv.m.parked(-1)
	}
	s.pmu.Unlock()
	if taken {
		r := closeIdleTimeout
		if by, ok := s.loginDeadline(); ok && !time.Now().Before(by) {
			r = closeLoginTimeout
		}
		s.close(r)
		s.finish() // this timer goroutine is the session's last
	}
}
