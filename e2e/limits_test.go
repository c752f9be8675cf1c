package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/testenv"
)

// A message server whose descriptor limit is below --max-sessions says
// server_full when its descriptors run short, rather than leaving new
// clients hanging without a reply; the clients it has keep chatting.
func TestServerFullAtTheDescriptorLimit(t *testing.T) {
	s := newSystem(t)
	// The shell sets both limits; Go raises the soft one to the hard one,
	// so the server runs with 64 descriptors.
	p := testenv.Start(t, "msg-1", "/bin/sh", "-c", `ulimit -n 64 && exec "$0" "$@"`, s.serverBin,
		"--id", "msg-1", "--listen", "127.0.0.1:0", "--redis", s.redis.URL(), "--admin", "", "--fd-headroom", "24")
	addr := p.WaitAddr("accepting clients", 10*time.Second)
	if out := p.Output(); !strings.Contains(out, "connections=40 max_sessions=200000 fd_limit=64 fd_headroom=24") {
		t.Fatalf("the server does not log its connection limit (64 descriptors less 24):\n%s", out)
	}
	alice := testenv.Dial(t, addr)
	alice.Login("alice")
	bob := testenv.Dial(t, addr)
	bob.Login("bob")
	var idle []net.Conn
	for range 38 {
		c := testenv.Dial(t, addr)
		c.SendLine(`{"cmd":"ping"}`)
		c.Expect(map[string]any{"reply": "ping", "ok": true}) // admitted
		idle = append(idle, c.Conn())
	}
	extra, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	// It speaks first, as clients do: the server's listener hands a
	// connection over once it has sent something (TCP_DEFER_ACCEPT).
	fmt.Fprintln(extra, `{"cmd":"login","name":"carol"}`)
	_ = extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(bufio.NewReader(extra))
	if want := `{"event":"closing","code":"server_full","reason":"server is at its limit of 40 connections"}` + "\n"; string(got) != want || err != nil {
		t.Fatalf("the 41st connection got %q (%v), want %q and the end of the connection, not a reset (which can destroy that line)", got, err, want)
	}
	alice.Chat("bob", "still served")
	bob.Expect(map[string]any{"event": "chat", "content": "still served"})

	idle[0].Close()
	testenv.Eventually(t, 5*time.Second, "a connection to be taken again", func() bool {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintln(c, `{"cmd":"ping"}`)
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.HasPrefix(line, `{"reply":"ping","ok":true`)
	})
}

// A bad --per-ip-exempt stops the server with a message saying what to fix.
func TestBadPerIPExemptIsAClearError(t *testing.T) {
	p := testenv.Start(t, "msgserver", testenv.Build(t, "msgserver"), "--per-ip-exempt", "10.0.0.0/8,not-a-net")
	if code := p.Wait(10 * time.Second); code != 2 {
		t.Fatalf("exit code %d, want 2; output:\n%s", code, p.Output())
	}
	if want := `--per-ip-exempt: "not-a-net" is neither a network`; !strings.Contains(p.Output(), want) {
		t.Fatalf("output does not say %q:\n%s", want, p.Output())
	}
}
