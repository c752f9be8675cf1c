package e2e

import (
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/testenv"
)

// loginAcks logs in as name with acks on (and receipts if asked).
func loginAcks(t *testing.T, addr, name string, receipts bool) *testenv.Client {
	t.Helper()
	c := testenv.Dial(t, addr)
	c.Name = name
	c.Send(map[string]any{"cmd": "login", "name": name, "acks": true, "receipts": receipts})
	if m, _ := c.Expect(map[string]any{"reply": "login"}); m["ok"] != true {
		t.Fatalf("login %s: %v", name, m)
	}
	return c
}

// SIGKILL of the recipient's message server with events written to its
// client but not acked: the next login, on another server, gets every one
// again, in order, marked redelivered.
func TestKilledServerRedeliversUnackedEvents(t *testing.T) {
	s := newSystem(t)
	s.startRelay()
	addr1, _ := s.startServer("msg-1")
	addr2, p2 := s.startServer("msg-2")
	alice := testenv.Dial(t, addr1)
	alice.Login("alice")
	bob := loginAcks(t, addr2, "bob", false)
	const n = 20
	for i := range n {
		alice.Send(map[string]string{"cmd": "chat", "recv": "bob", "content": fmt.Sprint("m", i), "ref": strconv.Itoa(i)})
		alice.Expect(map[string]any{"reply": "chat", "ok": true, "status": "relayed", "ref": strconv.Itoa(i)})
	}
	var ids []string
	for range n {
		ev, _ := bob.Expect(map[string]any{"event": "chat"})
		ids = append(ids, ev.S("id"))
	}
	p2.Signal(syscall.SIGKILL) // bob's client has them all; it acked none
	p2.Wait(10 * time.Second)

	bob = loginAcks(t, addr1, "bob", false)
	for i := range n {
		ev, _ := bob.Expect(map[string]any{"event": "chat"})
		if ev.S("id") != ids[i] || ev.S("content") != fmt.Sprint("m", i) || ev["redelivered"] != true {
			t.Fatalf("after the kill, event %d = %v, want %s redelivered", i, ev, ids[i])
		}
	}
}

// SIGTERM of the recipient's server while a sender streams to it: every
// message confirmed to the sender reaches the recipient's client, which
// logs in again on the other server when told the server is going, within
// seconds and without a further login; the client acks each one.
func TestSIGTERMUnderLoadLosesNothing(t *testing.T) {
	s := newSystem(t)
	s.startRelay()
	unlimited := []string{"--request-rate", "-1", "--offline-rate", "-1", "--inbox-max", "5000"}
	addr1, _ := s.startServer("msg-1", unlimited...)
	addr2, p2 := s.startServer("msg-2", unlimited...)
	alice := testenv.Dial(t, addr1)
	alice.Login("alice")
	bob := loginAcks(t, addr2, "bob", false)

	const n = 3000
	var mu sync.Mutex
	confirmed := make(map[string]bool)
	refused := 0
	var replies sync.WaitGroup
	replies.Add(1)
	go func() { // alice's replies
		defer replies.Done()
		for range n {
			m, err := alice.Read(20 * time.Second)
			if err != nil {
				t.Errorf("alice: %v", err)
				return
			}
			if m.S("reply") != "chat" {
				continue
			}
			mu.Lock()
			if m["ok"] == true {
				confirmed[m.S("id")] = true
			} else {
				refused++
			}
			mu.Unlock()
		}
	}()
	go func() { // alice sends, bounded in count and paced
		for i := range n {
			alice.Send(map[string]string{"cmd": "chat", "recv": "bob", "content": fmt.Sprint("m", i)})
			if i%50 == 49 {
				time.Sleep(25 * time.Millisecond) // about 2 000 a second: the stream outlasts the shutdown
			}
		}
	}()

	got := make(map[string]int)
	acked := 0
	read := func(c *testenv.Client, until func() bool, within time.Duration) (closed bool) {
		deadline := time.Now().Add(within)
		for !until() && time.Now().Before(deadline) {
			m, err := c.Read(time.Until(deadline))
			if err != nil {
				return true
			}
			switch {
			case m.S("event") == "chat":
				id := m.S("id")
				got[id]++
				if got[id] == 1 { // the client acks what it has not seen
					c.Send(map[string]any{"cmd": "ack", "id": id})
					acked++
				}
			case m.S("event") == "closing":
				return true
			}
		}
		return false
	}
	// bob reads until a third of the stream is in, then msg-2 is told to stop.
	read(bob, func() bool { return len(got) >= n/3 }, 20*time.Second)
	p2.Signal(syscall.SIGTERM)
	read(bob, func() bool { return false }, 10*time.Second) // until msg-2 says closing
	bob = loginAcks(t, addr1, "bob", false)
	replies.Wait()
	mu.Lock()
	want := len(confirmed)
	mu.Unlock()
	all := func() bool {
		for id := range confirmed {
			if got[id] == 0 {
				return false
			}
		}
		return true
	}
	collect := time.Now()
	read(bob, all, 15*time.Second)
	t.Logf("the rest arrived %v after the sender's last reply", time.Since(collect).Round(time.Millisecond))
	missing := 0
	for id := range confirmed {
		if got[id] == 0 {
			missing++
		}
	}
	if code := p2.Wait(10 * time.Second); code != 0 {
		t.Errorf("msg-2 exit code %d after SIGTERM", code)
	}
	t.Logf("%d sent, %d confirmed, %d refused, %d received (%d acked), %d missing", n, want, refused, len(got), acked, missing)
	if missing > 0 {
		t.Fatalf("%d of %d confirmed messages never reached bob", missing, want)
	}
	if want < n/2 {
		t.Fatalf("only %d of %d confirmed: the test did not load the shutdown", want, n)
	}
}
