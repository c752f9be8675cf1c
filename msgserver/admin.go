package msgserver

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"
)

// The admin API: what an operator does to one message server, served on
// its admin address beside /healthz and /metrics (AdminAPI).
//
//	GET  /admin/sessions/{name}        the user's session here, or where presence says it is
//	POST /admin/sessions/{name}/kick   close the user's session here (it may log in again)
//	POST /admin/drain?timeout=10m      take the server out of service (Drain)
//	GET  /admin/drain                  the drain's progress

// DefaultDrainTimeout is how long a drain waits for clients to leave when
// the request does not say.
const DefaultDrainTimeout = 5 * time.Minute

// MaxDrainTimeout bounds a drain's timeout.
const MaxDrainTimeout = 24 * time.Hour

// SessionInfo is one logged-in session, as the admin API shows it.
type SessionInfo struct {
	User    string `json:"user"`
	Server  string `json:"server"`
	Session string `json:"session"`
	Remote  string `json:"remote,omitempty"`
	// Parked is true while the client is idle enough to wait in the poller.
	Parked bool `json:"parked"`
	// QueuedBytes is what is queued for the client and not yet written.
	QueuedBytes int `json:"queued_bytes"`
}

// Session returns the session of user name on this server. The name is
// normalised as a login's is.
func (s *Server) Session(name string) (SessionInfo, bool) {
	name, e := normalizeName(name, s.cfg.MaxNameLen)
	if e != nil {
		return SessionInfo{}, false
	}
	sess := s.local(name)
	if sess == nil {
		return SessionInfo{}, false
	}
	sess.pmu.Lock()
	parked := sess.waitTok != 0
	sess.pmu.Unlock()
	return SessionInfo{User: name, Server: s.cfg.ID, Session: sess.id, Remote: sess.remote(), Parked: parked, QueuedBytes: sess.q.Len()}, true
}

// Kick closes the session of user name on this server, telling the client
// it was disconnected by an operator (event "kicked", code
// kicked_by_operator); its presence is released as at a logout. It
// reports whether the user had a session here. Nothing stops the user
// from logging in again.
func (s *Server) Kick(name string) (SessionInfo, bool) {
	info, ok := s.Session(name)
	if !ok {
		return info, false
	}
	s.mu.Lock()
	sess := s.sessions[info.User]
	s.mu.Unlock()
	if sess == nil || sess.id != info.Session {
		return info, false // gone meanwhile
	}
	s.log.Info("kicking user (admin API)", "user", info.User, "session", info.Session, "remote", info.Remote)
	sess.close(closeKickedAdmin)
	return info, true
}

// drainState is a drain in progress.
type drainState struct {
	started, deadline time.Time
}

// DrainStatus is a drain's progress.
type DrainStatus struct {
	Draining bool      `json:"draining"`
	Started  time.Time `json:"started,omitzero"`
	Deadline time.Time `json:"deadline,omitzero"`
	Sessions int       `json:"sessions"`
	// Done is true once the drain has ended: every client left, or the
	// deadline passed; the process then shuts down.
	Done bool `json:"done"`
}

// ErrShuttingDown is Drain's error on a server already shutting down.
var ErrShuttingDown = errors.New("the server is shutting down")

// Drain takes the server out of service without a burst of "offline"
// replies: it refuses new connections and logins (shutting_down), takes
// the server out of the registry, and tells every connected client
// {"event":"reconnect","code":"draining",...}: connect to another server
// and log in there. A client that does takes its user with it (the login
// there ends the session here, as any login elsewhere does), so messages
// to the user keep arriving throughout, here and then there. Sessions
// stay until their clients leave; Drained is closed once no user is
// logged in here or timeout has passed, whichever is first. The caller
// (the msgserver command) then shuts the server down as at SIGTERM. A
// second Drain returns the first one's status.
func (s *Server) Drain(timeout time.Duration) (DrainStatus, error) {
	if timeout <= 0 {
		timeout = DefaultDrainTimeout
	}
	timeout = min(timeout, MaxDrainTimeout)
	s.mu.Lock()
	if s.drain != nil {
		s.mu.Unlock()
		return s.DrainStatus(), nil
	}
	if s.draining || s.ctx.Err() != nil {
		s.mu.Unlock()
		return DrainStatus{}, ErrShuttingDown
	}
	now := time.Now()
	deadline := now.Add(timeout)
	s.drain = &drainState{started: now, deadline: deadline}
	s.draining = true
	conns := make([]*session, 0, len(s.conns))
	for sess := range s.conns {
		conns = append(conns, sess)
	}
	n := len(s.sessions)
	s.mu.Unlock()
	s.log.Info("draining: new logins refused, clients told to reconnect elsewhere", "sessions", n, "timeout", timeout)

	for _, sess := range conns {
		sess.queue(nil, appendReconnect)
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RedisTimeout)
	if err := s.store.Deregister(ctx, s.cfg.ID); err != nil {
		s.log.Warn("draining: registry entry not removed; the heartbeat retries", "err", err)
	}
	cancel()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.watchDrain(deadline)
	}()
	return s.DrainStatus(), nil
}

// reconnectLine is the event a drain sends every client.
var reconnectLine = appendJSONLine(nil, closingEvent{Event: "reconnect", Code: CodeDraining,
	Reason: "this server is being taken out of service: connect to another server and log in there"})

func appendReconnect(b []byte) []byte { return append(b, reconnectLine...) }

// watchDrain closes drained once no user is logged in or at deadline.
func (s *Server) watchDrain(deadline time.Time) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		select {
		case <-t.C:
			if s.Sessions() == 0 {
				s.log.Info("drained: no session left")
				close(s.drained)
				return
			}
		case <-timer.C:
			s.log.Warn("drain deadline passed; the sessions left are closed by the shutdown", "sessions", s.Sessions())
			close(s.drained)
			return
		case <-s.ctx.Done():
			return
		}
	}
}

// Drained is closed when a drain ends (see Drain); never without one.
func (s *Server) Drained() <-chan struct{} { return s.drained }

// DrainStatus is the drain's progress (Draining false: none).
func (s *Server) DrainStatus() DrainStatus {
	s.mu.Lock()
	d, n := s.drain, len(s.sessions)
	s.mu.Unlock()
	if d == nil {
		return DrainStatus{Sessions: n}
	}
	st := DrainStatus{Draining: true, Started: d.started, Deadline: d.deadline, Sessions: n}
	select {
	case <-s.drained:
		st.Done = true
	default:
	}
	return st
}

func (s *Server) isDraining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.drain != nil
}

// AdminAPI serves the admin API (see the top of this file). Without a
// token only loopback clients are served: anyone else gets 403. With one,
// every request must carry it, from anywhere, as
// "Authorization: Bearer TOKEN" (compared in constant time); a request
// without it gets 401.
func (s *Server) AdminAPI(token []byte) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/sessions/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if info, ok := s.Session(name); ok {
			writeJSON(w, http.StatusOK, info)
			return
		}
		s.notHere(w, r, name)
	})
	mux.HandleFunc("POST /admin/sessions/{name}/kick", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if info, ok := s.Kick(name); ok {
			writeJSON(w, http.StatusOK, map[string]any{"kicked": true, "session": info})
			return
		}
		s.notHere(w, r, name)
	})
	mux.HandleFunc("POST /admin/drain", func(w http.ResponseWriter, r *http.Request) {
		timeout := DefaultDrainTimeout
		if v := r.URL.Query().Get("timeout"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 || d > MaxDrainTimeout {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "timeout must be a duration between 1s and 24h, e.g. 10m"})
				return
			}
			timeout = d
		}
		st, err := s.Drain(timeout)
		if err != nil {
			writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusAccepted, st)
	})
	mux.HandleFunc("GET /admin/drain", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.DrainStatus())
	})
	var sum [32]byte
	if token != nil {
		sum = sha256.Sum256(token)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if token == nil {
			if !loopback(r.RemoteAddr) {
				writeJSON(w, http.StatusForbidden, map[string]string{"error": "the admin API answers loopback clients only; give the server --admin-token-file to allow others with the token"})
				return
			}
		} else {
			given, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			g := sha256.Sum256([]byte(given))
			if !ok || subtle.ConstantTimeCompare(g[:], sum[:]) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="chatrelay admin"`)
				writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "the admin API needs Authorization: Bearer <the token in --admin-token-file>"})
				return
			}
		}
		mux.ServeHTTP(w, r)
	})
}

// notHere answers 404 for a user with no session here, saying where
// presence has the user, if anywhere.
func (s *Server) notHere(w http.ResponseWriter, r *http.Request, name string) {
	body := map[string]any{"error": "no session for this user on this server", "server": s.cfg.ID}
	if n, e := normalizeName(name, s.cfg.MaxNameLen); e == nil {
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RedisTimeout)
		loc, ok, err := s.store.Lookup(ctx, n)
		cancel()
		switch {
		case err != nil:
			body["presence_error"] = err.Error()
		case ok:
			body["presence"] = map[string]string{"server": loc.Server, "session": loc.Session}
		}
	} else {
		body["error"] = "not a valid user name: " + e.msg
	}
	writeJSON(w, http.StatusNotFound, body)
}

func loopback(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
