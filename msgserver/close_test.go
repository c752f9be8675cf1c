package msgserver

import (
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/internal/tcptest"
)

// Closing a session whose client has reset the connection returns: the
// closing line's write fails inside close, and what the failed write
// calls must not wait for that close itself (it did: a kick or a shutdown
// hung on such a session, and with it the relay link's reader or Close).
func TestCloseAfterClientResetReturns(t *testing.T) {
	srv := newBareServer(t, Config{})
	conn, client := tcptest.Pair(t)
	sess := newSession(srv, conn)

	if err := client.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	client.Close() // a reset, not a FIN
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil || err == io.EOF {
		t.Fatalf("reading after the client's reset: %v, want a connection reset", err)
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		sess.close(closeKickedRemote)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("close on a reset connection did not return")
	}
	if !sess.isClosed() || sess.q.Err() == nil {
		t.Fatalf("closed=%v write error=%v: want a closed session with its write error", sess.isClosed(), sess.q.Err())
	}
}

// Every close gives the client its documented last line, byte for byte
// (or none), then the end of the connection, whether its session is
// reading or parked; a close with a code is counted once under that code.
func TestCloseReasonsFinalLine(t *testing.T) {
	cases := []struct {
		reason closeReason
		line   string
		code   string // disconnects_total label, if counted
	}{
		{closeTooManyErrors, `{"event":"closing","code":"too_many_errors","reason":"too many bad requests in a row"}`, "too_many_errors"},
		{closeIdleTimeout, `{"event":"closing","code":"idle_timeout","reason":"no request for 2m0s"}`, "idle_timeout"},
		{closeKickedLocal, `{"event":"kicked","code":"logged_in_elsewhere","reason":"logged in again from another connection"}`, "logged_in_elsewhere"},
		{closeKickedRemote, `{"event":"kicked","code":"logged_in_elsewhere","reason":"logged in again on another server"}`, "logged_in_elsewhere"},
		{closeShutdown, `{"event":"closing","code":"shutting_down","reason":"server shutting down; reconnect to another server"}`, "shutting_down"},
		{closeRefusedFull, `{"event":"closing","code":"server_full","reason":"server is at its limit of 1 connections"}`, "server_full"},
		{closeRefusedDraining, `{"event":"closing","code":"shutting_down","reason":"server shutting down"}`, "shutting_down"},
		{closeRefusedPerIP, `{"event":"closing","code":"too_many_connections","reason":"too many connections from your address (the limit is 1000)"}`, "too_many_connections"},
		{closeLoginTimeout, `{"event":"closing","code":"login_timeout","reason":"not logged in within 30s"}`, "login_timeout"},
		{closeLineTimeout, `{"event":"closing","code":"line_timeout","reason":"line not completed within 10s"}`, "line_timeout"},
		{closeLoginRateLimit, `{"event":"closing","code":"rate_limited","reason":"too many logins from your address; try again later"}`, "rate_limited"},
		{closeSlowConsumer, "", "slow_consumer"},
		{closeClientGone, "", ""},
		{closeWriteFailed, "", ""},
		{closeServerClosed, "", ""},
	}
	for _, parked := range []bool{false, true} {
		cfg := Config{MaxSessions: 1}
		if parked {
			cfg.ParkIdleAfter = 50 * time.Millisecond
		}
		srv, addr, reg := startBareServer(t, cfg)
		for _, tc := range cases {
			t.Run(fmt.Sprintf("%v/parked=%v", tc.reason, parked), func(t *testing.T) {
				before := disconnects(t, reg)
				client, sess := dialSession(t, srv, addr)
				if parked {
					waitFor(t, "the session to park", func() bool { return srv.Parked() == 1 })
				}
				sess.close(tc.reason)
				got, err := readToEnd(client)
				if err != nil {
					t.Fatal(err)
				}
				if tc.line != "" {
					tc.line += "\n"
				}
				if string(got) != tc.line {
					t.Fatalf("client got %q, want %q", got, tc.line)
				}
				waitFor(t, "the session to end", func() bool {
					srv.mu.Lock()
					defer srv.mu.Unlock()
					return len(srv.conns) == 0 && srv.Parked() == 0
				})
				want := maps.Clone(before)
				if tc.code != "" {
					want[tc.code]++
				}
				if got := disconnects(t, reg); !maps.Equal(got, want) {
					t.Errorf("disconnects_total by reason went from %v to %v, want %v", before, got, want)
				}
			})
		}
	}
}

// A connection over MaxSessions is refused with the server_full line.
func TestRefusedWhenFull(t *testing.T) {
	srv, addr, _ := startBareServer(t, Config{MaxSessions: 1})
	dialSession(t, srv, addr) // the one allowed
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	got, err := readToEnd(extra)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"event":"closing","code":"server_full","reason":"server is at its limit of 1 connections"}` + "\n"; string(got) != want {
		t.Fatalf("refused client got %q, want %q", got, want)
	}
}

// newBareServer returns a server with no relay and a Redis that does not
// answer (nothing here needs it). It is closed at cleanup.
func newBareServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 50 * time.Millisecond})
	cfg.ID, cfg.Redis = "t", rdb
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := New(cfg)
	if err != nil {
		rdb.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Close()
		rdb.Close()
	})
	return srv
}

// startBareServer is newBareServer serving clients on a free port, with
// its metrics in the registry it returns.
func startBareServer(t testing.TB, cfg Config) (*Server, string, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Metrics = NewMetrics(reg)
	srv := newBareServer(t, cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() { // before the server's Close
		ln.Close()
		<-served
	})
	return srv, ln.Addr().String(), reg
}

// dialSession connects a client and returns it with its session.
func dialSession(t *testing.T, srv *Server, addr string) (net.Conn, *session) {
	t.Helper()
	client, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	var sess *session
	waitFor(t, "the session to start", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		for s := range srv.conns {
			if s.remote() == client.LocalAddr().String() {
				sess = s
			}
		}
		return sess != nil
	})
	return client, sess
}

// readToEnd returns what the client reads until the server ends the
// connection, or an error if it does not end it.
func readToEnd(c net.Conn) ([]byte, error) {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []byte
	buf := make([]byte, 512)
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			if isTimeout(err) {
				return got, fmt.Errorf("connection still open after %q", got)
			}
			return got, nil // EOF, or a reset after a drop
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// disconnects returns msgserver_disconnects_total by reason label.
func disconnects(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	return counters(t, reg, "msgserver_disconnects_total", "reason")
}

// counters returns the counter vector name by the value of its label.
func counters(t *testing.T, reg *prometheus.Registry, name, label string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := make(map[string]float64)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label {
					n[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}
