package msgserver_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/testenv"
)

// tier is a relay, two message servers (msg-a, msg-b) and a real Redis.
type tier struct {
	redis *testenv.Redis
	relay *testenv.InRelay
	a, b  *testenv.InServer
}

func startTier(t *testing.T, tweak func(*msgserver.Config)) *tier {
	t.Helper()
	tr := &tier{redis: testenv.StartRedis(t)}
	tr.relay = testenv.StartRelay(t, "", relay.Config{})
	tr.a = tr.server(t, "msg-a", tweak)
	tr.b = tr.server(t, "msg-b", tweak)
	testenv.WaitLinked(t, tr.a, tr.b)
	return tr
}

func (tr *tier) server(t *testing.T, id string, tweak func(*msgserver.Config)) *testenv.InServer {
	cfg := msgserver.Config{ID: id, RelayAddr: tr.relay.Addr}
	if tweak != nil {
		tweak(&cfg)
	}
	return testenv.StartServer(t, tr.redis.Addr, cfg)
}

func login(t *testing.T, s *testenv.InServer, name string) *testenv.Client {
	t.Helper()
	c := testenv.Dial(t, s.Addr)
	c.Login(name)
	return c
}

func TestArticleMessagesCrossServer(t *testing.T) {
	tr := startTier(t, nil)
	u1 := testenv.Dial(t, tr.a.Addr)
	u2 := testenv.Dial(t, tr.b.Addr)
	u1.SendLine(`{"cmd":"login","name":"zhima201"}`)
	u1.Expect(map[string]any{"reply": "login", "ok": true, "server": "msg-a"})
	u2.SendLine(`{"cmd":"login","name":"zhima202"}`)
	u2.Expect(map[string]any{"reply": "login", "ok": true, "server": "msg-b"})

	before := time.Now().UnixMilli()
	u1.SendLine(`{"cmd":"chat","send":"zhima201","recv":"zhima202","content":"how are you"}`)
	ev, _ := u2.Expect(map[string]any{"event": "chat"})
	if ev.S("from") != "zhima201" || ev.S("to") != "zhima202" || ev.S("content") != "how are you" {
		t.Fatalf("event = %v", ev)
	}
	if ts, _ := ev["ts"].(float64); int64(ts) < before-1000 || int64(ts) > time.Now().UnixMilli()+1000 {
		t.Fatalf("event ts %v is not the server time of sending", ev["ts"])
	}
	ack, _ := u1.Expect(map[string]any{"reply": "chat"})
	if ack["ok"] != true || ack.S("status") != msgserver.StatusRelayed || ack.S("id") != ev.S("id") || len(ack.S("id")) != 32 {
		t.Fatalf("sender ack = %v, event id %q", ack, ev.S("id"))
	}

	// The reply comes the other way too, and ids are unique.
	u2.Chat("zhima201", "fine, thanks")
	ev2, _ := u1.Expect(map[string]any{"event": "chat"})
	if ev2.S("content") != "fine, thanks" || ev2.S("id") == ev.S("id") {
		t.Fatalf("reply event = %v", ev2)
	}
}

func TestLocalDeliveryAndPing(t *testing.T) {
	tr := startTier(t, nil)
	a := login(t, tr.a, "alice")
	b := login(t, tr.a, "bob")
	a.Send(map[string]string{"cmd": "chat", "recv": "bob", "content": "same server", "ref": "r1"})
	ev, _ := b.Expect(map[string]any{"event": "chat"})
	if ev.S("from") != "alice" || ev.S("content") != "same server" {
		t.Fatalf("event = %v", ev)
	}
	a.Expect(map[string]any{"reply": "chat", "ok": true, "status": "delivered", "ref": "r1"})
	a.SendLine(`{"cmd":"ping"}`)
	a.Expect(map[string]any{"reply": "ping", "ok": true})
}

func TestSenderSpoofingRefused(t *testing.T) {
	tr := startTier(t, nil)
	mallory := login(t, tr.a, "mallory")
	victim := login(t, tr.b, "victim")
	login(t, tr.b, "alice")
	mallory.SendLine(`{"cmd":"chat","send":"alice","recv":"victim","content":"I am alice"}`)
	mallory.Expect(map[string]any{"reply": "chat", "ok": false, "code": "sender_mismatch"})
	mallory.Chat("victim", "honest")
	ev := victim.Next()
	if ev.S("content") != "honest" || ev.S("from") != "mallory" {
		t.Fatalf("victim's first line should be the honest message, got %v", ev)
	}
}

func TestSecondLoginTakesOverOnSameServer(t *testing.T) {
	tr := startTier(t, nil)
	old := login(t, tr.a, "carol")
	newer := login(t, tr.a, "carol")
	got := old.ExpectClosed()
	if len(got) == 0 || got[len(got)-1].S("event") != "kicked" {
		t.Fatalf("old session should be told it was kicked, got %v", got)
	}
	sender := login(t, tr.b, "dave")
	sender.Chat("carol", "to the new session")
	newer.Expect(map[string]any{"event": "chat", "content": "to the new session"})
}

func TestSecondLoginTakesOverAcrossServers(t *testing.T) {
	tr := startTier(t, nil)
	old := login(t, tr.a, "erin")
	sender := login(t, tr.a, "frank")
	sender.Chat("erin", "first, local")
	old.Expect(map[string]any{"event": "chat", "content": "first, local"})

	newer := login(t, tr.b, "erin")
	got := old.ExpectClosed()
	if len(got) == 0 || got[len(got)-1].S("event") != "kicked" {
		t.Fatalf("old session on msg-a should be kicked, got %v", got)
	}
	v, err := tr.redis.Command("GET", "chatrelay:user:erin")
	if err != nil || !strings.HasPrefix(v, "msg-b ") {
		t.Fatalf("presence of erin = %q, %v; want msg-b", v, err)
	}
	sender.Chat("erin", "now remote")
	newer.Expect(map[string]any{"event": "chat", "content": "now remote"})
	sender.Expect(map[string]any{"reply": "chat", "status": "relayed"})
}

func TestOfflineMessagesKeptBoundedAndDeliveredInOrder(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { c.InboxMax = 5; c.InboxTTL = time.Hour })
	sender := login(t, tr.a, "gina")
	for i := 1; i <= 8; i++ {
		sender.Chat("henry", fmt.Sprintf("m%d", i))
		if i <= 5 {
			sender.Expect(map[string]any{"reply": "chat", "ok": true, "status": "offline"})
		} else {
			// A full inbox refuses; nothing stored is dropped for it.
			sender.Expect(map[string]any{"reply": "chat", "ok": false, "code": "inbox_full"})
		}
	}
	if n, _ := tr.redis.Command("LLEN", "chatrelay:inbox:henry"); n != ":5" {
		t.Fatalf("inbox length = %s, want :5 (bounded)", n)
	}
	if ttl, _ := tr.redis.Command("TTL", "chatrelay:inbox:henry"); ttl == ":-1" || ttl == ":-2" {
		t.Fatalf("inbox TTL = %s, want a TTL", ttl)
	}
	henry := login(t, tr.b, "henry")
	for i := 1; i <= 5; i++ {
		ev := henry.Next()
		if ev.S("content") != fmt.Sprintf("m%d", i) || ev["offline"] != true {
			t.Fatalf("offline message %d = %v", i, ev)
		}
	}
	if n, _ := tr.redis.Command("EXISTS", "chatrelay:inbox:henry"); n != ":0" {
		t.Fatalf("inbox still exists after delivery: %s", n)
	}
	// Nothing is delivered twice at the next login.
	henry2 := login(t, tr.a, "henry")
	henry2.SendLine(`{"cmd":"ping"}`)
	if m := henry2.Next(); m.S("reply") != "ping" {
		t.Fatalf("after re-login expected only the ping reply, got %v", m)
	}
}

func TestLogoutReleasesPresence(t *testing.T) {
	tr := startTier(t, nil)
	ivy := login(t, tr.a, "ivy")
	ivy.SendLine(`{"cmd":"logout"}`)
	ivy.Expect(map[string]any{"reply": "logout", "ok": true})
	if v, _ := tr.redis.Command("EXISTS", "chatrelay:user:ivy"); v != ":0" {
		t.Fatalf("presence after logout: %s", v)
	}
	sender := login(t, tr.b, "jack")
	sender.Chat("ivy", "later")
	sender.Expect(map[string]any{"reply": "chat", "status": "offline"})
	ivy.SendLine(`{"cmd":"chat","recv":"jack","content":"x"}`)
	ivy.Expect(map[string]any{"reply": "chat", "code": "not_logged_in"})
}

func TestPresenceRefreshAndCompareAndDelete(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { c.PresenceTTL = time.Second })
	kate := login(t, tr.a, "kate")
	v, _ := tr.redis.Command("GET", "chatrelay:user:kate")
	if !strings.HasPrefix(v, "msg-a ") {
		t.Fatalf("presence = %q", v)
	}
	// The record outlives several TTLs because the server refreshes it.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if e, _ := tr.redis.Command("EXISTS", "chatrelay:user:kate"); e != ":1" {
			t.Fatal("presence expired although the session is alive")
		}
		pttl, _ := tr.redis.Command("PTTL", "chatrelay:user:kate")
		if n, _ := strconv.Atoi(strings.TrimPrefix(pttl, ":")); n <= 0 || n > 1000 {
			t.Fatalf("PTTL = %s, want 1..1000 ms", pttl)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A newer login elsewhere; the old connection's late close must not
	// remove it.
	login(t, tr.b, "kate")
	kate.ExpectClosed()
	kate.Conn().Close()
	time.Sleep(200 * time.Millisecond) // give a wrong delete the chance to happen
	v, _ = tr.redis.Command("GET", "chatrelay:user:kate")
	if !strings.HasPrefix(v, "msg-b ") {
		t.Fatalf("presence after the old session closed = %q, want msg-b", v)
	}
}

func TestCrashedServerUsersExpire(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { c.PresenceTTL = time.Second; c.RegistryTTL = time.Second })
	login(t, tr.a, "leo")
	login(t, tr.b, "mia")
	testenv.Eventually(t, 3*time.Second, "both servers registered", func() bool {
		v, _ := tr.redis.Command("EXISTS", "chatrelay:server:msg-a", "chatrelay:server:msg-b")
		return v == ":2"
	})
	tr.a.Close() // no graceful release: as if the process died
	testenv.Eventually(t, 5*time.Second, "leo's presence and msg-a's registry entry to expire", func() bool {
		v, _ := tr.redis.Command("EXISTS", "chatrelay:user:leo", "chatrelay:server:msg-a")
		return v == ":0"
	})
	if v, _ := tr.redis.Command("EXISTS", "chatrelay:user:mia", "chatrelay:server:msg-b"); v != ":2" {
		t.Fatalf("msg-b's user and registry entry should live on, EXISTS = %s", v)
	}
}

func TestRoutingDoesNotAskRedisPerMessage(t *testing.T) {
	tr := startTier(t, nil)
	a := login(t, tr.a, "nina")
	b := login(t, tr.b, "omar")
	getCalls := func() int {
		info, _ := tr.redis.Command("INFO", "commandstats")
		for _, line := range strings.Split(info, "\n") {
			if strings.HasPrefix(line, "cmdstat_get:calls=") {
				n, _ := strconv.Atoi(strings.TrimPrefix(strings.SplitN(line, ",", 2)[0], "cmdstat_get:calls="))
				return n
			}
		}
		return 0
	}
	before := getCalls()
	const n = 300
	for i := 0; i < n; i++ {
		a.Chat("omar", strconv.Itoa(i))
	}
	for i := 0; i < n; i++ {
		b.Expect(map[string]any{"event": "chat", "content": strconv.Itoa(i)})
	}
	if d := getCalls() - before; d > 2 {
		t.Fatalf("%d messages cost %d Redis GETs; routing should be cached", n, d)
	}
}

func TestStaleRouteIsCorrected(t *testing.T) {
	tr := startTier(t, nil)
	c := tr.server(t, "msg-c", nil)
	testenv.WaitLinked(t, c)
	sender := login(t, tr.a, "paul")
	old := login(t, tr.b, "quinn")
	sender.Chat("quinn", "one")
	old.Expect(map[string]any{"event": "chat", "content": "one"})
	sender.Expect(map[string]any{"reply": "chat", "status": "relayed"})

	// quinn moves to msg-c; msg-a's cache still says msg-b.
	moved := login(t, c, "quinn")
	old.ExpectClosed()
	sender.Chat("quinn", "two")
	moved.Expect(map[string]any{"event": "chat", "content": "two"})
	sender.Expect(map[string]any{"reply": "chat", "status": "relayed"})

	// quinn leaves; the next message is stored, not lost.
	moved.SendLine(`{"cmd":"logout"}`)
	moved.Expect(map[string]any{"reply": "logout"})
	sender.Chat("quinn", "three")
	sender.Expect(map[string]any{"reply": "chat", "status": "offline"})
}

func TestIdleClientDisconnected(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { c.IdleTimeout = 300 * time.Millisecond })
	c := login(t, tr.a, "rita")
	got := c.ExpectClosed()
	if len(got) == 0 || got[len(got)-1].S("code") != "idle_timeout" {
		t.Fatalf("idle client should be told idle_timeout, got %v", got)
	}
}

func TestDisconnectReleasesPresence(t *testing.T) {
	tr := startTier(t, nil)
	var clients []*testenv.Client
	for i := 0; i < 50; i++ {
		clients = append(clients, login(t, tr.a, fmt.Sprintf("leaver%d", i)))
	}
	for _, c := range clients {
		c.Conn().Close() // all at once, as a network blip would
	}
	testenv.Eventually(t, 5*time.Second, "every leaver's presence to be released", func() bool {
		keys, _ := tr.redis.Command("KEYS", "chatrelay:user:leaver*")
		return keys == ""
	})
}
