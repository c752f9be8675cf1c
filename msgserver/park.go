package msgserver

import (
	"time"

	"github.com/chatrelay/chatrelay/internal/netx"
	"github.com/chatrelay/chatrelay/internal/poller"
)

// Parking: a session whose client has been silent for ParkIdleAfter gives
// up its reader goroutine (and the goroutine's stack, 4 KB or more, and its
// read buffer) and waits in the server's poller. When the client sends
// again, or closes, the poller starts a new reader (resume). A chat
// server's clients are silent nearly all the time, so this is most of the
// memory of an idle session. Everything else works as before while parked:
// messages to the user are written by the sender's goroutine, a close
// (kick, shutdown...) takes it back from the poller (unpark), and the idle
// wheel (idlewheel.go) enforces the idle timeout (or the login deadline,
// if that comes first). A session with part of a line read does not park:
// it waits on its goroutine, for at most the line timeout. A parked
// session holds no closure, timer or buffer: its poller token and its
// tick on the wheel are fields of the session.

// The rules that keep this safe: a session's closed flag is set before
// anyone looks at its wait, park registers only under pmu and only if the
// session is not closed, and whoever takes a parked session back (resume,
// unpark, the idle wheel) does it under pmu. A close that drops the
// connection (or a failed write) closes it under pmu, after taking the
// session out of the poller, so the poller never holds a descriptor that
// was closed (and maybe reused).

// wsWait is waitTok for a WebSocket session waiting in its wsConn.
const wsWait = ^uint64(0)

// park hands the session to the poller and reports whether it did; the
// calling reader goroutine then ends. left is the time to the idle timeout
// or the login deadline, whichever is first (parkFor).
func (s *session) park(left time.Duration) bool {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	if s.isClosed() {
		return false // a closer came first: finish on this goroutine
	}
	var err error
	if wc, ok := s.conn.(*wsConn); ok {
		if err = wc.waitMessage(s.resume); err == nil {
			s.waitTok = wsWait
		}
	} else {
		var tok poller.Token
		tok, err = s.srv.poller.Wait(s.raw, s)
		s.waitTok = uint64(tok)
	}
	if err != nil {
		s.srv.log.Debug("session not parked: it keeps its goroutine", "session", s.id, "remote", s.remote(), "err", err)
		return false
	}
	s.parkTick = s.srv.idle.add(s, left)
	s.srv.m.parked(1)
	return true
}

// Wake is the poller's call (poller.Waiter).
func (s *session) Wake() { s.resume() }

// cancelWaitLocked takes the session out of the poller (or its wsConn's
// wait) and reports whether it did; false if it was not waiting or its
// wake-up has started. pmu is held.
func (s *session) cancelWaitLocked() bool {
	tok := s.waitTok
	if tok == 0 {
		return false
	}
	s.waitTok = 0
	if tok == wsWait {
		return s.conn.(*wsConn).cancelWait()
	}
	return s.srv.poller.Cancel(poller.Token(tok))
}

// leaveWheelLocked takes the session off the idle wheel. pmu is held.
func (s *session) leaveWheelLocked() {
	if s.parkTick != 0 {
		s.srv.idle.remove(s, s.parkTick)
		s.parkTick = 0
	}
}

// resume runs on the goroutine the poller starts when the client sends
// something or closes: it becomes the session's reader.
func (s *session) resume() {
	s.pmu.Lock()
	s.waitTok = 0
	s.leaveWheelLocked()
	s.srv.m.parked(-1)
	s.pmu.Unlock()
	s.run()
}

// unpark, called by session.close, takes a parked session back from the
// poller and finishes it; the session is already marked closed. With
// closeConn, the connection is closed too, while the poller cannot hold it.
// If the poller has just started a reader, that reader sees the session
// closed and finishes it.
func (s *session) unpark(closeConn bool) {
	s.pmu.Lock()
	taken := s.cancelWaitLocked()
	s.leaveWheelLocked() // also when the poller won: the reader it started has its own deadline
	if taken {
		s.srv.m.parked(-1)
	}
	if closeConn {
		_ = netx.CloseNow(s.conn) // at once: this is a drop, and pmu is held
	}
	s.pmu.Unlock()
	if taken {
		go s.finish()
	}
}

// parkedIdleExpired is the idle wheel's call at tick for a parked session:
// its idle timeout, or the login deadline of a session that has not logged
// in. It takes the session back from the poller first: a session the
// poller has just handed to a reader (its client spoke at the deadline) is
// left to that reader, and so is one that has parked again since (its
// tick is a later one).
func (s *session) parkedIdleExpired(tick int64) {
	s.pmu.Lock()
	taken := s.parkTick == tick && s.cancelWaitLocked()
	if taken {
		s.parkTick = 0
		s.srv.m.parked(-1)
	}
	s.pmu.Unlock()
	if taken {
		r := closeIdleTimeout
		if by, ok := s.loginDeadline(); ok && !time.Now().Before(by) {
			r = closeLoginTimeout
		}
		s.close(r)
		s.finish() // this goroutine is the session's last
	}
}
