package msgserver

// SetLoginClaimedHook makes every login of s call f after its presence
// claim and before its session is published: the window a login race
// needs, held open by the test.
func SetLoginClaimedHook(s *Server, f func(user string)) { s.loginClaimed = f }

func SetForwardHeldHook(s *Server, f func(user string)) { s.onForwardHeld.Store(&f) }
