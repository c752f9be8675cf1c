package msgserver_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/testenv"
)

func adminServer(t *testing.T, s *testenv.InServer, token []byte) string {
	t.Helper()
	h := httptest.NewServer(s.AdminAPI(token))
	t.Cleanup(h.Close)
	return h.URL
}

// An operator finds a user's session on the server that has it (and, on
// another, where presence has the user), kicks it: the client is told why
// and disconnected, its presence released, and it may log in again.
func TestAdminSessionAndKick(t *testing.T) {
	tr := startTier(t, nil)
	apiA, apiB := adminServer(t, tr.a, nil), adminServer(t, tr.b, nil)
	alice := login(t, tr.a, "alice")

	code, got := testenv.AdminCall(t, "GET", apiA+"/admin/sessions/alice", "")
	if code != http.StatusOK || got["user"] != "alice" || got["server"] != "msg-a" || got["session"] == "" || got["remote"] != alice.Conn().LocalAddr().String() {
		t.Fatalf("GET session on msg-a: %d %v", code, got)
	}
	session := got["session"]
	code, got = testenv.AdminCall(t, "GET", apiB+"/admin/sessions/alice", "")
	if p, _ := got["presence"].(map[string]any); code != http.StatusNotFound || p["server"] != "msg-a" || p["session"] != session {
		t.Fatalf("GET session on msg-b: %d %v; want 404 naming msg-a's session %v", code, got, session)
	}
	if code, got = testenv.AdminCall(t, "POST", apiB+"/admin/sessions/alice/kick", ""); code != http.StatusNotFound {
		t.Fatalf("kick on msg-b, where alice is not: %d %v", code, got)
	}

	code, got = testenv.AdminCall(t, "POST", apiA+"/admin/sessions/alice/kick", "")
	if code != http.StatusOK || got["kicked"] != true {
		t.Fatalf("kick: %d %v", code, got)
	}
	lines := alice.ExpectClosed()
	if len(lines) == 0 || lines[len(lines)-1].S("event") != "kicked" || lines[len(lines)-1].S("code") != msgserver.CodeKickedByAdmin {
		t.Fatalf("kicked client read %v; want a kicked event with code %s", lines, msgserver.CodeKickedByAdmin)
	}
	testenv.Eventually(t, 5*time.Second, "alice's presence released", func() bool {
		_, ok, err := store.New(tr.a.Redis, store.Config{}).Lookup(context.Background(), "alice")
		return err == nil && !ok
	})
	if code, got = testenv.AdminCall(t, "GET", apiA+"/admin/sessions/alice", ""); code != http.StatusNotFound || got["presence"] != nil {
		t.Fatalf("after the kick: %d %v", code, got)
	}
	login(t, tr.a, "alice") // a kick is not a ban
	if code, got = testenv.AdminCall(t, "GET", apiA+"/admin/sessions/"+strings.Repeat("x", 5000), ""); code != http.StatusNotFound {
		t.Fatalf("an overlong name: %d %v", code, got)
	}
}

// A drained server refuses newcomers, tells its clients to reconnect, and
// keeps delivering to them until they have: a user who moves to the other
// server is never "offline" on the way. Drained closes once the last user
// has left, and the server is out of the registry.
func TestAdminDrainMovesUsersWithoutOffline(t *testing.T) {
	tr := startTier(t, nil)
	api := adminServer(t, tr.a, nil)
	alice := login(t, tr.a, "alice")
	idle := testenv.Dial(t, tr.a.Addr) // connected, never logs in
	bob := login(t, tr.b, "bob")

	code, got := testenv.AdminCall(t, "POST", api+"/admin/drain?timeout=1m", "")
	if code != http.StatusAccepted || got["draining"] != true || got["sessions"] != float64(1) {
		t.Fatalf("drain: %d %v", code, got)
	}
	alice.Expect(map[string]any{"event": "reconnect", "code": msgserver.CodeDraining})
	idle.Expect(map[string]any{"event": "reconnect", "code": msgserver.CodeDraining})
	if rep := tr.a.Report(); rep.Serving || !strings.HasPrefix(rep.Reason, "draining: 1 sessions left") {
		t.Errorf("healthz while draining: serving %v, reason %q", rep.Serving, rep.Reason)
	}
	late := testenv.Dial(t, tr.a.Addr)
	if lines := late.ExpectClosed(); len(lines) != 1 || lines[0].S("code") != msgserver.CodeShuttingDown {
		t.Errorf("a new connection while draining read %v; want a shutting_down closing line", lines)
	}
	testenv.Eventually(t, 5*time.Second, "msg-a out of the registry", func() bool {
		servers, err := store.Servers(context.Background(), tr.a.Redis)
		_, listed := servers["msg-a"]
		return err == nil && !listed && servers["msg-b"] != ""
	})

	// Still delivered to alice on msg-a while she has not moved.
	bob.Chat("alice", "before the move")
	bob.Expect(map[string]any{"reply": "chat", "ok": true, "status": "relayed"})
	alice.Expect(map[string]any{"event": "chat", "content": "before the move"})
	select {
	case <-tr.a.Drained():
		t.Fatal("drained while alice is still logged in")
	default:
	}

	// alice reconnects to msg-b: her msg-a session is ended by the login.
	moved := login(t, tr.b, "alice")
	alice.ExpectClosed()
	select {
	case <-tr.a.Drained():
	case <-time.After(5 * time.Second):
		t.Fatalf("not drained 5s after the last user left: %+v", tr.a.DrainStatus())
	}
	if st := tr.a.DrainStatus(); !st.Done || st.Sessions != 0 {
		t.Errorf("drain status %+v", st)
	}
	bob.Chat("alice", "after the move")
	bob.Expect(map[string]any{"reply": "chat", "ok": true, "status": "delivered"})
	moved.Expect(map[string]any{"event": "chat", "content": "after the move"})
	if err := tr.a.Shutdown(5 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// A client that does not leave is closed by the shutdown after the
// drain's deadline; a second drain request reports the first.
func TestAdminDrainDeadline(t *testing.T) {
	tr := startTier(t, nil)
	api := adminServer(t, tr.a, nil)
	stays := login(t, tr.a, "stays")
	if code, got := testenv.AdminCall(t, "POST", api+"/admin/drain?timeout=forever", ""); code != http.StatusBadRequest {
		t.Fatalf("a bad timeout: %d %v", code, got)
	}
	start := time.Now()
	if code, got := testenv.AdminCall(t, "POST", api+"/admin/drain?timeout=300ms", ""); code != http.StatusAccepted {
		t.Fatalf("drain: %d %v", code, got)
	}
	_, first := testenv.AdminCall(t, "GET", api+"/admin/drain", "")
	if code, again := testenv.AdminCall(t, "POST", api+"/admin/drain?timeout=1h", ""); code != http.StatusAccepted || again["deadline"] != first["deadline"] {
		t.Errorf("second drain: %d %v; want the first one's deadline %v", code, again, first["deadline"])
	}
	stays.Expect(map[string]any{"event": "reconnect"})
	select {
	case <-tr.a.Drained():
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Errorf("drained after %s, before the deadline, with a user logged in", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the drain's deadline passed without Drained")
	}
	if err := tr.a.Shutdown(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	lines := stays.ExpectClosed()
	if len(lines) == 0 || lines[len(lines)-1].S("code") != msgserver.CodeShuttingDown {
		t.Errorf("the client that stayed read %v; want shutting_down last", lines)
	}
	if err := tr.b.Shutdown(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.b.Drain(time.Minute); err != msgserver.ErrShuttingDown {
		t.Errorf("drain of a server that has shut down: %v", err)
	}
}

// Without a token the API answers loopback clients only; with one, every
// client must send it, and then any address is served.
func TestAdminAccess(t *testing.T) {
	tr := startTier(t, nil)
	token := "admin-token-0123456789abcdef"
	open := adminServer(t, tr.a, nil)
	guarded := adminServer(t, tr.a, []byte(token))

	if code, got := testenv.AdminCall(t, "GET", open+"/admin/drain", ""); code != http.StatusOK || got["draining"] != false {
		t.Fatalf("loopback without a token configured: %d %v", code, got)
	}
	for _, tok := range []string{"", "wrong", token[:len(token)-1], token + "x"} {
		if code, got := testenv.AdminCall(t, "GET", guarded+"/admin/drain", tok); code != http.StatusUnauthorized {
			t.Errorf("token %q: %d %v; want 401", tok, code, got)
		}
	}
	if code, got := testenv.AdminCall(t, "GET", guarded+"/admin/drain", token); code != http.StatusOK {
		t.Errorf("the right token: %d %v", code, got)
	}

	// From an address that is not loopback, over real TCP: the host's own
	// non-loopback address.
	ip := nonLoopbackIP(t)
	for _, c := range []struct {
		token      []byte
		send       string
		want       int
		configured string
	}{
		{nil, "", http.StatusForbidden, "no token"},
		{[]byte(token), "", http.StatusUnauthorized, "a token, not sent"},
		{[]byte(token), token, http.StatusNotFound, "a token, sent"}, // served: nobody has no session
	} {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
		if err != nil {
			t.Fatal(err)
		}
		h := httptest.NewUnstartedServer(tr.a.AdminAPI(c.token))
		h.Listener.Close()
		h.Listener = ln
		h.Start()
		code, got := testenv.AdminCall(t, "POST", h.URL+"/admin/sessions/nobody/kick", c.send)
		h.Close()
		if code != c.want {
			t.Errorf("from %s with %s: %d %v; want %d", ip, c.configured, code, got, c.want)
		}
	}
	if st := tr.a.DrainStatus(); st.Draining {
		t.Error("a refused request drained the server")
	}
}

// nonLoopbackIP is an address of this host's that is not loopback.
func nonLoopbackIP(t *testing.T) net.IP {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil && !n.IP.IsLinkLocalUnicast() {
			return n.IP
		}
	}
	msg := "no non-loopback IPv4 address on this host to reach the admin API from"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return nil
}
