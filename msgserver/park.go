package msgserver

import "time"

// Parking: a session whose client has been silent for ParkIdleAfter gives
// up its reader goroutine (and the goroutine's stack, 4 KB or more, and its
// read buffer) and waits in the server's poller. When the client sends
// again, or closes, the poller starts a new reader (resume). A chat
// server's clients are silent nearly all the time, so this is most of the
// memory of an idle session. Everything else works as before while parked:
// messages to the user are written by the sender's goroutine, kicks and
// shutdown close it (unpark), and a timer enforces the idle timeout.

// park hands the session to the poller and reports whether it did; the
// calling reader goroutine then ends. idleLeft is the time to the idle
// timeout.
func (s *session) park(idleLeft time.Duration) bool {
	s.pmu.Lock()
	cancel, err := s.srv.poller.Wait(s.raw, s.resume)
	if err != nil {
		s.pmu.Unlock()
		s.srv.log.Debug("session not parked: it keeps its goroutine", "session", s.id, "remote", s.remote, "err", err)
		return false
	}
	s.unparkFn = cancel
	s.idleTimer = time.AfterFunc(idleLeft, s.idleExpired)
	s.pmu.Unlock()
	s.srv.m.parked(1)
	s.srv.parks.Add(1)
	if s.isClosed() {
		s.unpark() // closed before unparkFn was set: nobody else will
	}
	return true
}

// resume runs on the goroutine the poller starts when the client sends
// something or closes: it becomes the session's reader.
func (s *session) resume() {
	s.pmu.Lock()
	t := s.idleTimer
	s.unparkFn, s.idleTimer = nil, nil
	s.pmu.Unlock()
	if t != nil {
		t.Stop()
	}
	s.srv.m.parked(-1)
	s.run()
}

// unpark takes a parked session back from the poller and finishes it; the
// session is already closed. If the poller has just started a reader, that
// reader sees the session closed and finishes it instead.
func (s *session) unpark() {
	s.pmu.Lock()
	cancel, t := s.unparkFn, s.idleTimer
	s.unparkFn, s.idleTimer = nil, nil
	s.pmu.Unlock()
	if cancel == nil || !cancel() {
		return
	}
	if t != nil {
		t.Stop()
	}
	s.srv.m.parked(-1)
	go s.finish()
}

// idleExpired closes a session whose client sent nothing for IdleTimeout.
func (s *session) idleExpired() {
	s.closeWith(CodeIdleTimeout, "no request for "+s.srv.cfg.IdleTimeout.String())
}
