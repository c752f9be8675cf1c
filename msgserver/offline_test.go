package msgserver_test

import (
	"bufio"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/testenv"
)

// chatRef sends a chat with a ref, to match its reply.
func chatRef(c *testenv.Client, to, content, ref string) {
	c.Send(map[string]string{"cmd": "chat", "recv": to, "content": content, "ref": ref})
}

// A full inbox refuses the next message and tells the sender; nothing
// stored is dropped, and the sender is not cut off for it.
func TestFullInboxRefusesAndKeepsEveryMessage(t *testing.T) {
	tr := startTier(t, nil) // the default --inbox-max, 200
	sender := login(t, tr.a, "filler")
	for i := 1; i <= msgserver.DefaultInboxMax; i++ {
		chatRef(sender, "away", fmt.Sprintf("m%d", i), strconv.Itoa(i))
		sender.Expect(map[string]any{"reply": "chat", "ok": true, "status": "offline", "ref": strconv.Itoa(i)})
	}
	chatRef(sender, "away", "one too many", "201")
	m, _ := sender.Expect(map[string]any{"reply": "chat", "ref": "201"})
	if m["ok"] != false || m.S("code") != msgserver.CodeInboxFull || !strings.Contains(m.S("error"), "away") {
		t.Fatalf("the 201st message's reply = %v, want inbox_full", m)
	}
	// More than too_many_errors' limit of refusals: the sender stays.
	for i := 0; i < 25; i++ {
		chatRef(sender, "away", "still too many", "more")
		sender.Expect(map[string]any{"reply": "chat", "ok": false, "code": msgserver.CodeInboxFull})
	}
	sender.SendLine(`{"cmd":"ping"}`)
	sender.Expect(map[string]any{"reply": "ping", "ok": true})
	if n, _ := tr.redis.Command("LLEN", "chatrelay:inbox:away"); n != ":200" {
		t.Fatalf("inbox length = %s, want :200", n)
	}

	away := login(t, tr.b, "away")
	for i := 1; i <= msgserver.DefaultInboxMax; i++ {
		ev := away.Next()
		if ev.S("event") != "chat" || ev.S("content") != fmt.Sprintf("m%d", i) || ev["offline"] != true || ev.S("from") != "filler" {
			t.Fatalf("offline message %d = %v", i, ev)
		}
	}
	away.SendLine(`{"cmd":"ping"}`)
	if m := away.Next(); m.S("reply") != "ping" {
		t.Fatalf("after the 200 offline messages expected the ping reply, got %v", m)
	}
	// Taken at login: the inbox has room again.
	away.SendLine(`{"cmd":"logout"}`)
	away.Expect(map[string]any{"reply": "logout"})
	chatRef(sender, "away", "room again", "after")
	sender.Expect(map[string]any{"reply": "chat", "ok": true, "status": "offline", "ref": "after"})
}

// The origin stores a message offline when the recipient's server says
// "not here" (stale presence); a full inbox is refused there too, and the
// sender hears it, by ref.
func TestFullInboxRefusedAfterNotHere(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { c.InboxMax = 2 })
	// ghost's presence names msg-b, where ghost is not.
	if _, err := tr.redis.Command("SET", "chatrelay:user:ghost", "msg-b no-such-session", "EX", "60"); err != nil {
		t.Fatal(err)
	}
	sender := login(t, tr.a, "caller")
	for i := 1; i <= 2; i++ {
		chatRef(sender, "ghost", fmt.Sprintf("kept %d", i), strconv.Itoa(i))
		sender.Expect(map[string]any{"reply": "chat", "ok": true, "status": "offline", "ref": strconv.Itoa(i)})
	}
	chatRef(sender, "ghost", "refused", "3")
	sender.Expect(map[string]any{"reply": "chat", "ok": false, "code": msgserver.CodeInboxFull, "ref": "3"})

	if _, err := tr.redis.Command("DEL", "chatrelay:user:ghost"); err != nil {
		t.Fatal(err)
	}
	ghost := login(t, tr.a, "ghost")
	for i := 1; i <= 2; i++ {
		if ev := ghost.Next(); ev.S("content") != fmt.Sprintf("kept %d", i) || ev["offline"] != true {
			t.Fatalf("offline message %d = %v", i, ev)
		}
	}
	ghost.SendLine(`{"cmd":"ping"}`)
	if m := ghost.Next(); m.S("reply") != "ping" {
		t.Fatalf("the refused message was stored after all: %v", m)
	}
}

// Inboxes written by the previous version (the event's JSON line) are
// delivered after the upgrade, as they are, in order with new entries; an
// entry no server wrote is skipped.
func TestOldFormatEntriesStillDelivered(t *testing.T) {
	tr := startTier(t, nil)
	old := `{"event":"chat","id":"0123456789abcdef0123456789abcdef","from":"gina","to":"upgrader","content":"\u003cb\u003eold\u003c/b\u003e \u0026 kept","ts":1732000000000,"offline":true}`
	for _, entry := range []string{old, "not an entry"} {
		if _, err := tr.redis.Command("RPUSH", "chatrelay:inbox:upgrader", entry); err != nil {
			t.Fatal(err)
		}
	}
	sender := login(t, tr.a, "gina")
	sender.Chat("upgrader", "<b>new</b>")
	sender.Expect(map[string]any{"reply": "chat", "ok": true, "status": "offline"})

	conn, err := net.Dial("tcp", tr.b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	fmt.Fprint(conn, `{"cmd":"login","name":"upgrader"}`+"\n"+`{"cmd":"ping"}`+"\n")
	var lines []string
	for len(lines) < 4 {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("after %q: %v", lines, err)
		}
		lines = append(lines, strings.TrimSuffix(l, "\n"))
	}
	if !strings.Contains(lines[0], `"reply":"login","ok":true`) {
		t.Fatalf("first line %s, want the login reply", lines[0])
	}
	if lines[1] != old {
		t.Fatalf("old entry delivered as\n %s\nwant it as stored\n %s", lines[1], old)
	}
	if !strings.Contains(lines[2], `"content":"\u003cb\u003enew\u003c/b\u003e"`) || !strings.Contains(lines[2], `"offline":true`) {
		t.Fatalf("new entry delivered as %s", lines[2])
	}
	if !strings.Contains(lines[3], `"reply":"ping"`) {
		t.Fatalf("after the inbox expected the ping reply, got %s", lines[3])
	}
}

// 4 KiB of '<' is stored as about 4 KiB, and delivered intact.
func TestOfflineEntryIsCompact(t *testing.T) {
	tr := startTier(t, nil)
	content := strings.Repeat("<", 4096)
	sender := login(t, tr.a, "angler")
	// As a client writes it, unescaped (escaped, the line would be 24 KiB).
	sender.SendLine(`{"cmd":"chat","recv":"bracket","content":"` + content + `"}`)
	sender.Expect(map[string]any{"reply": "chat", "ok": true, "status": "offline"})
	entry, err := tr.redis.Command("LINDEX", "chatrelay:inbox:bracket", "0")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("4 KiB of '<' stored in %d bytes", len(entry))
	if len(entry) > len(content)+64 {
		t.Fatalf("4 KiB of '<' stored in %d bytes", len(entry))
	}
	if ev := login(t, tr.b, "bracket").Next(); ev.S("content") != content || ev["offline"] != true {
		t.Fatalf("delivered %d bytes of content, offline=%v", len(ev.S("content")), ev["offline"])
	}
}

// usedMemory reads Redis's used_memory, as the server does.
func usedMemory(t *testing.T, r *testenv.Redis) int64 {
	t.Helper()
	info, err := r.Command("INFO", "memory")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no used_memory in %q", info)
	return 0
}

// Past the offline storage cap, offline messages are refused with
// offline_full; everything else goes on: live chat, logins, and the
// messages stored before. Once Redis has room again, they are stored again.
func TestOfflineCapRefusesAndLiveChatGoesOn(t *testing.T) {
	tr := &tier{redis: testenv.StartRedis(t)}
	limit := usedMemory(t, tr.redis) + 1<<20
	tweak := func(c *msgserver.Config) { c.OfflineMaxBytes = limit; c.OfflineRate = -1; c.InboxTTL = time.Hour }
	tr.relay = testenv.StartRelay(t, "", relay.Config{})
	tr.a, tr.b = tr.server(t, "msg-a", tweak), tr.server(t, "msg-b", tweak)
	testenv.WaitLinked(t, tr.a, tr.b)

	hoarder := login(t, tr.a, "hoarder")
	big := strings.Repeat("x", 4000)
	stored := 0
	for ; ; stored++ {
		if stored == 20000 {
			t.Fatalf("%d offline messages of 4 KB stored under a 1 MiB cap", stored)
		}
		chatRef(hoarder, fmt.Sprintf("ghost-%d", stored), big, "")
		m := hoarder.Next()
		if m.S("status") == "offline" {
			continue
		}
		if m["ok"] != false || m.S("code") != msgserver.CodeOfflineFull {
			t.Fatalf("reply %d = %v, want offline or offline_full", stored, m)
		}
		break
	}
	t.Logf("refused after %d messages of 4 KB under a cap 1 MiB above the first reading", stored)
	// Refused, not cut off.
	for i := 0; i < 25; i++ {
		chatRef(hoarder, "ghost-0", "more", "")
		hoarder.Expect(map[string]any{"reply": "chat", "ok": false, "code": msgserver.CodeOfflineFull})
	}

	// Everyone else chats on, live, and logs in.
	alice := login(t, tr.a, "alice")
	bob := login(t, tr.b, "bob")
	carol := login(t, tr.a, "carol")
	alice.Chat("bob", "across")
	bob.Expect(map[string]any{"event": "chat", "content": "across"})
	alice.Expect(map[string]any{"reply": "chat", "ok": true, "status": "relayed"})
	alice.Chat("carol", "next door")
	carol.Expect(map[string]any{"event": "chat", "content": "next door"})
	alice.Expect(map[string]any{"reply": "chat", "ok": true, "status": "delivered"})
	hoarder.Chat("bob", "live is fine")
	bob.Expect(map[string]any{"event": "chat", "content": "live is fine"})
	// What was stored before is delivered.
	if ev := login(t, tr.b, "ghost-0").Next(); ev.S("content") != big || ev["offline"] != true {
		t.Fatalf("ghost-0's stored message = %v", ev)
	}

	// Room again: offline messages are stored again.
	for i := 1; i < stored; i++ {
		if _, err := tr.redis.Command("DEL", fmt.Sprintf("chatrelay:inbox:ghost-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 5*time.Second, "offline messages to be stored again", func() bool {
		chatRef(hoarder, "later", "room again", "")
		return hoarder.Next().S("status") == "offline"
	})
}

// A sender may store OfflineRate offline messages a minute; past that they
// are refused with rate_limited. Live messages are not limited by it, nor
// other senders.
func TestOfflineRateLimitsEachSender(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { c.OfflineRate = 5 })
	eager := login(t, tr.a, "eager")
	for i := 1; i <= 5; i++ {
		chatRef(eager, fmt.Sprintf("away-%d", i), "hello", strconv.Itoa(i))
		eager.Expect(map[string]any{"reply": "chat", "ok": true, "status": "offline", "ref": strconv.Itoa(i)})
	}
	chatRef(eager, "away-6", "hello", "6")
	m, _ := eager.Expect(map[string]any{"reply": "chat", "ref": "6"})
	if m["ok"] != false || m.S("code") != msgserver.CodeRateLimited {
		t.Fatalf("the 6th offline message's reply = %v, want rate_limited", m)
	}
	if v, _ := tr.redis.Command("EXISTS", "chatrelay:inbox:away-6"); v != ":0" {
		t.Fatalf("a rate-limited message was stored (EXISTS %s)", v)
	}
	online := login(t, tr.b, "online")
	eager.Chat("online", "live")
	online.Expect(map[string]any{"event": "chat", "content": "live"})
	eager.Expect(map[string]any{"reply": "chat", "ok": true, "status": "relayed"})

	other := login(t, tr.a, "other")
	chatRef(other, "away-6", "from someone else", "o")
	other.Expect(map[string]any{"reply": "chat", "ok": true, "status": "offline", "ref": "o"})
}

// A login whose inbox take ran in Redis but whose reply never came (the
// connection cut; the test servers' go-redis does not retry) still gets its
// offline messages: the login takes again under the same name, which
// returns what the first take moved (store/take.go), instead of leaving
// them under the take's key until it expires.
func TestLoginGetsInboxWhoseTakeReplyWasLost(t *testing.T) {
	r := testenv.StartRedis(t)
	a := testenv.StartServer(t, r.Addr, msgserver.Config{ID: "msg-a"})
	ctx := testenv.WithTimeout(t, 10*time.Second)
	// The take script is loaded, so what the proxy cuts is a take Redis ran.
	if _, err := store.New(a.Redis, store.Config{}).TakeInbox(ctx, "warm", "warm-1"); err != nil {
		t.Fatal(err)
	}
	alice := login(t, a, "alice")
	for i := range 3 {
		chatRef(alice, "dee", fmt.Sprint("m", i), strconv.Itoa(i))
		alice.Expect(map[string]any{"reply": "chat", "ok": true, "status": "offline", "ref": strconv.Itoa(i)})
	}
	p := testenv.StartCutProxy(t, r.Addr, "chatrelay:taken:")
	b := testenv.StartServer(t, p.Addr(), msgserver.Config{ID: "msg-b"})
	dee := login(t, b, "dee")
	for i := range 3 {
		ev, _ := dee.Expect(map[string]any{"event": "chat"})
		if ev.S("content") != fmt.Sprint("m", i) || ev["offline"] != true {
			t.Fatalf("dee's event %d = %v, want m%d marked offline", i, ev, i)
		}
	}
	if p.Cuts() != 1 {
		t.Fatalf("the proxy cut %d connections, want 1: the test did not lose the take's reply", p.Cuts())
	}
}

// The late inbox read of a login (for what others stored just after the
// login's own read) is a named take too: when Redis ran it and its reply
// was lost, it is taken again under the same name and the session gets
// the messages, instead of their waiting under the take's name to expire.
func TestLateReadGetsInboxWhoseTakeReplyWasLost(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := testenv.WithTimeout(t, 10*time.Second)
	// The take script is loaded (straight, not through the proxy), so what
	// the proxy cuts is a take Redis ran.
	direct := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { direct.Close() })
	if _, err := store.New(direct, store.Config{}).TakeInbox(ctx, "warm", "warm-1"); err != nil {
		t.Fatal(err)
	}
	p := testenv.StartCutProxy(t, r.Addr, "chatrelay:taken:")
	b := testenv.StartServer(t, p.Addr(), msgserver.Config{ID: "msg-b", RedisTimeout: 200 * time.Millisecond})
	dee := login(t, b, "dee") // an empty inbox: the login takes nothing
	// Stored just after the login read the inbox, as a racing sender does.
	for i := range 3 {
		line := fmt.Sprintf(`{"event":"chat","from":"x","to":"dee","content":"m%d","ts":1}`, i)
		if _, err := r.Command("RPUSH", "chatrelay:inbox:dee", line); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		ev, _ := dee.Expect(map[string]any{"event": "chat"})
		if ev.S("content") != fmt.Sprint("m", i) {
			t.Fatalf("dee's event %d = %v, want m%d", i, ev, i)
		}
	}
	if p.Cuts() != 1 {
		t.Fatalf("the proxy cut %d connections, want 1: the test did not lose the late take's reply", p.Cuts())
	}
}
