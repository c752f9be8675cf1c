package msgserver_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/testenv"
)

// dialAll connects n clients to addr.
func dialAll(t *testing.T, addr string, n int) []*testenv.Client {
	t.Helper()
	cs := make([]*testenv.Client, n)
	for i := range cs {
		cs[i] = testenv.Dial(t, addr)
	}
	return cs
}

// loginConcurrently sends every client's login at once (client i logs in
// as names[i]) and returns each client's first line back, or its error.
func loginConcurrently(clients []*testenv.Client, names []string) ([]testenv.Msg, []error) {
	replies := make([]testenv.Msg, len(clients))
	errs := make([]error, len(clients))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range clients {
		c.Name = names[i]
		line, _ := json.Marshal(map[string]string{"cmd": "login", "name": names[i]})
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_ = c.Conn().SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Conn().Write(append(line, '\n')); err != nil {
				errs[i] = err
				return
			}
			replies[i], errs[i] = c.Read(10 * time.Second)
		}()
	}
	close(start)
	wg.Wait()
	return replies, errs
}

func names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%03d", prefix, i)
	}
	return out
}

func TestConcurrentLoginsAllSucceedWithDistinctSessions(t *testing.T) {
	tr := startTier(t, nil)
	const n = 200
	users := names("crowd", n)
	clients := dialAll(t, tr.a.Addr, n)
	replies, errs := loginConcurrently(clients, users)
	sessions := make(map[string]string, n)
	for i, m := range replies {
		if errs[i] != nil {
			t.Fatalf("login %s: %v", users[i], errs[i])
		}
		if m.S("reply") != "login" || m["ok"] != true || m.S("name") != users[i] || m.S("server") != "msg-a" || m.S("session") == "" {
			t.Fatalf("login %s: reply %v", users[i], m)
		}
		if other, dup := sessions[m.S("session")]; dup {
			t.Fatalf("%s and %s got the same session %s", other, users[i], m.S("session"))
		}
		sessions[m.S("session")] = users[i]
		if v, err := tr.redis.Command("GET", "chatrelay:user:"+users[i]); err != nil || v != "msg-a "+m.S("session") {
			t.Fatalf("presence of %s = %q, %v; want %q", users[i], v, err, "msg-a "+m.S("session"))
		}
	}
	if got := tr.a.Sessions(); got != n {
		t.Fatalf("msg-a has %d sessions, want %d", got, n)
	}
	// Every one of them is reachable.
	sender := login(t, tr.b, "crowd-sender")
	for _, i := range []int{0, n / 2, n - 1} {
		sender.Chat(users[i], "hello "+users[i])
		clients[i].Expect(map[string]any{"event": "chat", "content": "hello " + users[i]})
	}
}

func TestOfflineMessagesDeliveredOnceInOrderToConcurrentLogins(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { c.InboxTTL = time.Hour })
	const n, perUser = 20, 5
	users := names("away", n)
	sender := login(t, tr.b, "postman")
	for _, u := range users {
		for j := 0; j < perUser; j++ {
			sender.Chat(u, fmt.Sprintf("%s #%d", u, j))
			sender.Expect(map[string]any{"reply": "chat", "ok": true, "status": "offline"})
		}
	}
	clients := dialAll(t, tr.a.Addr, n)
	replies, errs := loginConcurrently(clients, users)
	for i, c := range clients {
		// The login reply comes first, then the inbox in order, then
		// nothing more: the ping reply is next.
		if errs[i] != nil || replies[i].S("reply") != "login" || replies[i]["ok"] != true {
			t.Fatalf("login %s: %v, %v", users[i], replies[i], errs[i])
		}
		for j := 0; j < perUser; j++ {
			ev := c.Next()
			if ev.S("event") != "chat" || ev.S("content") != fmt.Sprintf("%s #%d", users[i], j) || ev["offline"] != true {
				t.Fatalf("%s: offline message %d = %v", users[i], j, ev)
			}
		}
		c.SendLine(`{"cmd":"ping"}`)
		if m := c.Next(); m.S("reply") != "ping" {
			t.Fatalf("%s: after the inbox expected the ping reply, got %v", users[i], m)
		}
		if v, _ := tr.redis.Command("EXISTS", "chatrelay:inbox:"+users[i]); v != ":0" {
			t.Fatalf("inbox of %s still exists after delivery: %s", users[i], v)
		}
	}
	// Nothing is delivered twice at the next login.
	again := login(t, tr.b, users[0])
	again.SendLine(`{"cmd":"ping"}`)
	if m := again.Next(); m.S("reply") != "ping" {
		t.Fatalf("after re-login expected only the ping reply, got %v", m)
	}
}

// A key that fails (here: a presence key of the wrong type) fails only its
// own login; the logins sharing its pipeline go through, and the inbox
// taken with the failed claim is put back for the next attempt.
func TestOneFailingKeyFailsOnlyItsLogin(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { c.InboxTTL = time.Hour })
	sender := login(t, tr.b, "courier")
	for j := 0; j < 3; j++ {
		sender.Chat("broken", fmt.Sprintf("kept %d", j))
		sender.Expect(map[string]any{"reply": "chat", "status": "offline"})
	}
	if _, err := tr.redis.Command("RPUSH", "chatrelay:user:broken", "not a presence record"); err != nil {
		t.Fatal(err)
	}
	// An inbox of the wrong type: the login works, the inbox is skipped.
	if _, err := tr.redis.Command("SET", "chatrelay:inbox:odd-inbox", "not a list"); err != nil {
		t.Fatal(err)
	}
	users := append(names("neighbour", 30), "broken", "odd-inbox")
	clients := dialAll(t, tr.a.Addr, len(users))
	replies, errs := loginConcurrently(clients, users)
	for i, m := range replies {
		if errs[i] != nil {
			t.Fatalf("login %s: %v", users[i], errs[i])
		}
		if users[i] == "broken" {
			if m["ok"] != false || m.S("code") != "presence_unavailable" {
				t.Fatalf("login with a broken presence key = %v, want presence_unavailable", m)
			}
			continue
		}
		if m.S("reply") != "login" || m["ok"] != true {
			t.Fatalf("login %s = %v", users[i], m)
		}
	}
	if v, _ := tr.redis.Command("LLEN", "chatrelay:inbox:broken"); v != ":3" {
		t.Fatalf("inbox of the failed login has LLEN %s, want :3 (put back)", v)
	}
	if ttl, _ := tr.redis.Command("TTL", "chatrelay:inbox:broken"); ttl == ":-1" || ttl == ":-2" {
		t.Fatalf("restored inbox TTL = %s, want a TTL", ttl)
	}
	if _, err := tr.redis.Command("DEL", "chatrelay:user:broken"); err != nil {
		t.Fatal(err)
	}
	fixed := login(t, tr.a, "broken")
	for j := 0; j < 3; j++ {
		if ev := fixed.Next(); ev.S("content") != fmt.Sprintf("kept %d", j) {
			t.Fatalf("restored offline message %d = %v", j, ev)
		}
	}
}

func TestLoginsFailWhileRedisIsDownAndWorkAfter(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { c.RegistryTTL = time.Second; c.RedisTimeout = 300 * time.Millisecond })
	before := login(t, tr.a, "early")

	tr.redis.Kill()
	down := names("during", 10)
	replies, errs := loginConcurrently(dialAll(t, tr.a.Addr, len(down)), down)
	for i, m := range replies {
		if errs[i] != nil {
			t.Fatalf("login %s with Redis down: %v", down[i], errs[i])
		}
		if m["ok"] != false || m.S("code") != "presence_unavailable" || !strings.Contains(m.S("error"), "try again") {
			t.Fatalf("login %s with Redis down = %v", down[i], m)
		}
	}

	tr.redis.Restart()
	// Connections to the dead server may fail once more; within a few
	// seconds logins work again, through the same batcher.
	late := testenv.Dial(t, tr.a.Addr)
	testenv.Eventually(t, 10*time.Second, "a login to work after Redis returned", func() bool {
		late.SendLine(`{"cmd":"login","name":"late"}`)
		m := late.Next()
		if m.S("code") == "presence_unavailable" {
			time.Sleep(50 * time.Millisecond)
			return false
		}
		if m["ok"] != true {
			t.Fatalf("login after restart = %v", m)
		}
		return true
	})
	after := names("after", 50)
	clients := dialAll(t, tr.a.Addr, len(after))
	replies, errs = loginConcurrently(clients, after)
	for i, m := range replies {
		if errs[i] != nil || m["ok"] != true {
			t.Fatalf("login %s after Redis returned = %v, %v", after[i], m, errs[i])
		}
		if v, _ := tr.redis.Command("GET", "chatrelay:user:"+after[i]); v != "msg-a "+m.S("session") {
			t.Fatalf("presence of %s = %q", after[i], v)
		}
	}
	clients[0].Chat("early", "still here")
	before.Expect(map[string]any{"event": "chat", "content": "still here"})
}
