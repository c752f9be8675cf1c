package msgserver_test

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/testenv"
)

// loginWith logs in as name with the login options given (acks,
// receipts) and returns the client once the login reply is read.
func loginWith(t *testing.T, s *testenv.InServer, name string, acks, receipts bool) *testenv.Client {
	t.Helper()
	c := testenv.Dial(t, s.Addr)
	c.Name = name
	c.Send(map[string]any{"cmd": "login", "name": name, "acks": acks, "receipts": receipts})
	m, _ := c.Expect(map[string]any{"reply": "login"})
	if m["ok"] != true {
		t.Fatalf("login %s: %v", name, m)
	}
	return c
}

// events reads n chat events (skipping replies), failing after 5s.
func events(t *testing.T, c *testenv.Client, n int) []testenv.Msg {
	t.Helper()
	var got []testenv.Msg
	for len(got) < n {
		m, _ := c.Expect(map[string]any{"event": "chat"})
		got = append(got, m)
	}
	return got
}

func ack(t *testing.T, c *testenv.Client, ids ...string) {
	t.Helper()
	c.Send(map[string]any{"cmd": "ack", "ids": ids})
	if m, _ := c.Expect(map[string]any{"reply": "ack"}); m["ok"] != true {
		t.Fatalf("ack: %v", m)
	}
}

// A session with acks that ends before acking (its client crashed) gets
// the unacked events again at its next login, in their order, marked
// redelivered; acked ones do not come back. Its sender, who asked for
// receipts, gets one per event acked, across servers.
func TestAcksRedeliverWhatWasNotAcked(t *testing.T) {
	tr := startTier(t, nil)
	alice := loginWith(t, tr.a, "alice", false, true)
	bob := loginWith(t, tr.b, "bob", true, false)
	for i := range 4 {
		chatRef(alice, "bob", fmt.Sprint("m", i), strconv.Itoa(i))
		alice.Expect(map[string]any{"reply": "chat", "ok": true, "status": "relayed", "ref": strconv.Itoa(i)})
	}
	got := events(t, bob, 4)
	ack(t, bob, got[0].S("id"))
	m, _ := alice.Expect(map[string]any{"event": "receipt"})
	if m.S("id") != got[0].S("id") || m.S("status") != "delivered" || m.S("from") != "bob" {
		t.Fatalf("receipt = %v, want one for %s from bob", m, got[0].S("id"))
	}
	bob.Conn().Close() // the client crashes with three events unacked

	bob = loginWith(t, tr.a, "bob", true, false)
	again := events(t, bob, 3)
	for i, ev := range again {
		if ev.S("id") != got[i+1].S("id") || ev.S("content") != fmt.Sprint("m", i+1) || ev["redelivered"] != true {
			t.Fatalf("redelivered event %d = %v, want %s (m%d) marked redelivered", i, ev, got[i+1].S("id"), i+1)
		}
	}
	ack(t, bob, again[0].S("id"), again[1].S("id"), again[2].S("id"))
	for i := range 3 {
		m, _ := alice.Expect(map[string]any{"event": "receipt"})
		if m.S("id") != got[i+1].S("id") {
			t.Fatalf("receipt %d = %v, want %s", i, m, got[i+1].S("id"))
		}
	}
	bob.Conn().Close()
	bob = loginWith(t, tr.b, "bob", true, false)
	bob.SendLine(`{"cmd":"ping"}`)
	if m := bob.Next(); m.S("reply") != "ping" {
		t.Fatalf("after every event was acked the next login got %v, want nothing before the ping reply", m)
	}
	if n, _ := tr.redis.Command("LLEN", "chatrelay:inbox:bob"); n != ":0" {
		t.Fatalf("bob's inbox after acking everything: LLEN %s", n)
	}
}

// A session without acks is the article's: no "redelivered", nothing kept,
// and an ack is refused with bad_ack.
func TestNoAcksSessionsUnchanged(t *testing.T) {
	tr := startTier(t, nil)
	alice := login(t, tr.a, "alice")
	bob := login(t, tr.b, "bob")
	alice.Chat("bob", "hi")
	ev := events(t, bob, 1)[0]
	if _, ok := ev["redelivered"]; ok {
		t.Fatalf("event %v", ev)
	}
	if n, _ := tr.redis.Command("LLEN", "chatrelay:inbox:bob"); n != ":0" {
		t.Fatalf("an event for a session without acks was kept: LLEN %s", n)
	}
	bob.Send(map[string]any{"cmd": "ack", "id": ev.S("id")})
	if m, _ := bob.Expect(map[string]any{"reply": "ack"}); m["ok"] != false || m.S("code") != msgserver.CodeBadAck {
		t.Fatalf("ack without acks on: %v", m)
	}
}

// A slow consumer with acks is cut with events queued; they come again at
// its next login, every one, in order.
func TestAcksSlowConsumerLosesNothing(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { c.SessionQueueBytes = 8 << 10; c.UnackedMax = 1000 })
	alice := loginWith(t, tr.a, "alice", false, false)
	bob := loginWith(t, tr.b, "bob", true, false)
	_ = bob.Conn().(interface{ SetReadBuffer(int) error }).SetReadBuffer(4 << 10)
	big := strings.Repeat("x", 2000)
	const n = 200
	confirmed := 0
	// alice keeps at most 16 replies unread: her own queue is as small as
	// bob's, and a loaded machine must not cut her instead of him.
	const window = 16
	reply := func() {
		m, _ := alice.Expect(map[string]any{"reply": "chat"})
		if m["ok"] == true {
			confirmed++
		}
	}
	for i := range n {
		chatRef(alice, "bob", fmt.Sprint(i, big), strconv.Itoa(i))
		if i >= window {
			reply()
		}
	}
	for range min(n, window) {
		reply()
	}
	// bob has not read a byte: it was cut as a slow consumer.
	testenv.Eventually(t, 5*time.Second, "bob cut", func() bool { return tr.b.Sessions() == 0 })
	if confirmed < 50 {
		t.Fatalf("only %d of %d confirmed: the test did not queue enough to cut bob", confirmed, n)
	}
	// The next login gets them in pages of what its queue takes, the next
	// page as the client acks the last: every confirmed message once, the
	// ones kept as they were sent (redelivered) first and in their order.
	// Messages that came after the cut went offline by way of a re-route
	// and may be in another order among themselves.
	bob = loginWith(t, tr.a, "bob", true, false)
	seen := make(map[string]bool)
	lastKept, offline := -1, false
	for range confirmed {
		ev, _ := bob.Expect(map[string]any{"event": "chat"})
		var i int
		if _, err := fmt.Sscanf(ev.S("content"), "%dx", &i); err != nil || seen[ev.S("content")] {
			t.Fatalf("event %.20s: unreadable or seen twice", ev.S("content"))
		}
		seen[ev.S("content")] = true
		switch {
		case ev["redelivered"] == true && (offline || i < lastKept):
			t.Fatalf("kept event %d after %d or after an offline one", i, lastKept)
		case ev["redelivered"] == true:
			lastKept = i
		default:
			offline = true
		}
		bob.Send(map[string]any{"cmd": "ack", "id": ev.S("id")})
	}
	if lastKept < 0 {
		t.Fatal("no event was kept as sent: the cut came before any")
	}
	testenv.Eventually(t, 5*time.Second, "every event acked", func() bool {
		n, _ := tr.redis.Command("LLEN", "chatrelay:inbox:bob")
		return n == ":0"
	})
}

// A session with acks that never acks holds at most InboxMax+UnackedMax
// events: the next one closes it with too_many_unacked, and its sender is
// told the message was not stored (inbox_full).
func TestAcksNeverAckedIsBounded(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { c.InboxMax = 2; c.UnackedMax = 3 })
	alice := loginWith(t, tr.a, "alice", false, false)
	bob := loginWith(t, tr.a, "bob", true, false)
	for i := range 5 {
		chatRef(alice, "bob", fmt.Sprint("m", i), strconv.Itoa(i))
		alice.Expect(map[string]any{"reply": "chat", "ok": true, "status": "delivered", "ref": strconv.Itoa(i)})
	}
	chatRef(alice, "bob", "one too many", "5")
	m, _ := alice.Expect(map[string]any{"reply": "chat", "ref": "5"})
	if m["ok"] != false || m.S("code") != msgserver.CodeInboxFull {
		t.Fatalf("the message past the cap: %v, want inbox_full", m)
	}
	got := bob.ExpectClosed()
	last := got[len(got)-1]
	if last.S("event") != "closing" || last.S("code") != msgserver.CodeTooManyUnacked {
		t.Fatalf("bob's last line = %v, want closing too_many_unacked", last)
	}
	if n, _ := tr.redis.Command("LLEN", "chatrelay:inbox:bob"); n != ":5" {
		t.Fatalf("bob's inbox holds %s, want the 5 unacked events", n)
	}
}

// A message sent while its recipient's login is in progress on another
// server (presence claimed there, session not yet published) reaches the
// new session live; it does not land in the inbox the login just read.
func TestLoginRaceAcrossServersReachesTheSession(t *testing.T) {
	tr := startTier(t, nil)
	claimed, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	let := func() { once.Do(func() { close(release) }) }
	t.Cleanup(let) // a failing test must not leave the login held
	msgserver.SetLoginClaimedHook(tr.b.Server, func(user string) {
		if user == "bob" {
			close(claimed)
			<-release
		}
	})
	held := make(chan struct{}, 1)
	msgserver.SetForwardHeldHook(tr.b.Server, func(user string) {
		if user == "bob" {
			select {
			case held <- struct{}{}:
			default:
			}
		}
	})
	alice := login(t, tr.a, "alice")
	bob := testenv.Dial(t, tr.b.Addr)
	bob.Send(map[string]any{"cmd": "login", "name": "bob"})
	<-claimed
	chatRef(alice, "bob", "during the login", "r1")
	// The Forward reaches msg-b while bob's login is held open, and msg-b
	// holds it for the login.
	select {
	case <-held:
	case <-time.After(5 * time.Second):
		t.Fatal("the Forward was not held for bob's login")
	}
	let()
	bob.Expect(map[string]any{"reply": "login", "ok": true})
	ev, _ := bob.Expect(map[string]any{"event": "chat"})
	if ev.S("content") != "during the login" || ev["offline"] == true {
		t.Fatalf("event = %v, want the message live", ev)
	}
	alice.Expect(map[string]any{"reply": "chat", "ok": true, "status": "relayed", "ref": "r1"})
	if n, _ := tr.redis.Command("LLEN", "chatrelay:inbox:bob"); n != ":0" {
		t.Fatalf("bob's inbox: LLEN %s, want 0", n)
	}
}

// A message to a server the relay has no route to (it went away) is
// routed to where presence says the user is now, at the first NACK,
// instead of being retried there for NoRouteGiveUp and stored offline.
func TestNackReroutesToWhereTheUserIsNow(t *testing.T) {
	tr := startTier(t, nil)
	c := tr.server(t, "msg-c", nil)
	testenv.WaitLinked(t, c)
	alice := login(t, tr.a, "alice")
	bob := login(t, tr.b, "bob")
	chatRef(alice, "bob", "first", "1")
	alice.Expect(map[string]any{"reply": "chat", "ok": true, "status": "relayed", "ref": "1"})
	events(t, bob, 1)
	tr.b.Close() // msg-b dies; its presence records stay (no release), msg-a's route cache names it
	bob = login(t, c, "bob")
	start := time.Now()
	chatRef(alice, "bob", "second", "2")
	m, _ := alice.Expect(map[string]any{"reply": "chat", "ref": "2"})
	if m["ok"] != true || m.S("status") != "relayed" {
		t.Fatalf("reply = %v, want relayed", m)
	}
	ev := events(t, bob, 1)[0]
	if ev.S("content") != "second" || ev["offline"] == true {
		t.Fatalf("bob at msg-c got %v", ev)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("re-routed after %v: it waited for the give-up", took)
	}
}

// A receipt for a message acked while its sender is offline waits in the
// sender's inbox.
func TestReceiptWaitsForAnOfflineSender(t *testing.T) {
	tr := startTier(t, nil)
	alice := loginWith(t, tr.a, "alice", false, true)
	chatRef(alice, "bob", "while you were out", "1")
	m, _ := alice.Expect(map[string]any{"reply": "chat", "ok": true, "status": "offline", "ref": "1"})
	id := m.S("id")
	alice.Send(map[string]any{"cmd": "logout"})
	alice.Expect(map[string]any{"reply": "logout"})

	bob := loginWith(t, tr.b, "bob", true, false)
	ev := events(t, bob, 1)[0]
	if ev.S("id") != id || ev["offline"] != true {
		t.Fatalf("bob got %v", ev)
	}
	ack(t, bob, id)
	testenv.Eventually(t, 5*time.Second, "the receipt stored", func() bool {
		n, _ := tr.redis.Command("LLEN", "chatrelay:inbox:alice")
		return n == ":1"
	})
	alice = loginWith(t, tr.b, "alice", false, false)
	r, _ := alice.Expect(map[string]any{"event": "receipt"})
	if r.S("id") != id || r.S("status") != "delivered" || r.S("from") != "bob" {
		t.Fatalf("receipt = %v", r)
	}
}

// An ack costs Redis a scan of the user's whole list of kept events, so
// only ids the session was sent are looked for there: a client acking ids
// it made up (within its request rate, a few hundred a second) costs Redis
// nothing, and its real acks still remove what they name.
func TestAckOfMadeUpIDsCostsRedisNothing(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	scans := &testenv.CommandLog{Match: func(key string) bool { return key == "chatrelay:inbox:eve" }}
	rdb.AddHook(scans)
	s := testenv.StartServer(t, r.Addr, msgserver.Config{ID: "msg-a", Redis: rdb})
	eve := loginWith(t, s, "eve", true, false)
	bob := login(t, s, "bob")
	bob.Chat("eve", "kept until acked")
	got := events(t, eve, 1)
	scans.Take()

	made := make([]string, 200)
	for i := range made {
		made[i] = fmt.Sprintf("%032x", i+1)
	}
	for range 20 {
		eve.Send(map[string]any{"cmd": "ack", "ids": made})
		eve.Expect(map[string]any{"reply": "ack", "ok": true})
	}
	if cmds, _ := scans.Take(); len(cmds) != 0 {
		t.Fatalf("acks of made-up ids sent %d commands on eve's list to Redis (%v), want none", len(cmds), cmds)
	}

	eve.Send(map[string]any{"cmd": "ack", "ids": append(made[:5:5], got[0].S("id"))})
	eve.Expect(map[string]any{"reply": "ack", "ok": true})
	if v, _ := r.Command("LLEN", "chatrelay:inbox:eve"); v != ":0" {
		t.Fatalf("eve's list holds %s entries after she acked the one event, want 0", v)
	}
	if cmds, _ := scans.Take(); len(cmds) != 1 {
		t.Fatalf("the real ack sent %v to Redis, want one scan", cmds)
	}
}

// A client that keeps its list of kept events long and acks one event at
// a time makes Redis scan the whole list for each: past its budget of that
// work (8 MiB a second, bursts of 16 MiB) its next request waits, and the
// wait is counted. Acking in batches, as clients should, costs one scan.
func TestAcksOverTheirRedisBudgetWait(t *testing.T) {
	r := testenv.StartRedis(t)
	reg := prometheus.NewRegistry()
	s := testenv.StartServer(t, r.Addr, msgserver.Config{ID: "msg-a", Metrics: msgserver.NewMetrics(reg)})
	eve := loginWith(t, s, "eve", true, false)
	bob := login(t, s, "bob")
	const n = 250 // 1 MB kept: each ack of one event scans it all
	big := strings.Repeat("x", 4000)
	for i := range n {
		chatRef(bob, "eve", big, strconv.Itoa(i))
		bob.Expect(map[string]any{"reply": "chat", "ok": true, "ref": strconv.Itoa(i)})
	}
	got := events(t, eve, n)

	var i int
	for i = n - 1; i >= n-40 && counter(t, reg, "msgserver_ack_throttled_total") == 0; i-- {
		eve.Send(map[string]any{"cmd": "ack", "id": got[i].S("id")})
		eve.Expect(map[string]any{"reply": "ack", "ok": true})
	}
	if counter(t, reg, "msgserver_ack_throttled_total") == 0 {
		t.Fatalf("%d acks of one event each, every one a scan of about 1 MB, and none waited", n-1-i)
	}
	ids := make([]string, 0, i+1)
	for _, e := range got[:i+1] {
		ids = append(ids, e.S("id"))
	}
	for len(ids) > 0 {
		k := min(len(ids), 200) // a line holds about 200
		eve.Send(map[string]any{"cmd": "ack", "ids": ids[:k]})
		eve.Expect(map[string]any{"reply": "ack", "ok": true})
		ids = ids[k:]
	}
	if v, _ := r.Command("LLEN", "chatrelay:inbox:eve"); v != ":0" {
		t.Fatalf("eve's list holds %s entries after every event was acked, want 0", v)
	}
}

// An id is hex whatever its case: a client that writes ids back in upper
// case (as .NET's Convert.ToHexString does) has its acks count.
func TestAckInUpperCase(t *testing.T) {
	r := testenv.StartRedis(t)
	s := testenv.StartServer(t, r.Addr, msgserver.Config{ID: "msg-a"})
	eve := loginWith(t, s, "eve", true, false)
	bob := login(t, s, "bob")
	bob.Chat("eve", "ack me in capitals")
	got := events(t, eve, 1)
	eve.Send(map[string]any{"cmd": "ack", "id": strings.ToUpper(got[0].S("id"))})
	eve.Expect(map[string]any{"reply": "ack", "ok": true})
	if v, _ := r.Command("LLEN", "chatrelay:inbox:eve"); v != ":0" {
		t.Fatalf("eve's list holds %s entries after she acked the event in upper case, want 0", v)
	}
}
