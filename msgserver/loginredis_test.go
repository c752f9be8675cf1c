package msgserver_test

import (
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/testenv"
)

// What a login storm costs Redis, counted: users without offline messages
// cost three plain commands each (the presence write and a look at the
// inbox, then the look again a moment later) and no script, and the logins
// share round trips. This is what keeps a login cheap for Redis; a change
// that adds a command or a script to every login fails here.
func TestLoginRedisCommands(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	h := &testenv.CommandLog{Match: func(key string) bool { return strings.Contains(key, ":cost-") }}
	rdb.AddHook(h)
	s := testenv.StartServer(t, r.Addr, msgserver.Config{ID: "msg-a", Redis: rdb, RedisTimeout: 200 * time.Millisecond})
	const n = 60
	users := names("cost", n)
	clients := dialAll(t, s.Addr, n)
	replies, errs := loginConcurrently(clients, users)
	for i := range users {
		if errs[i] != nil || replies[i]["ok"] != true {
			t.Fatalf("login %s: %v %v", users[i], replies[i], errs[i])
		}
	}
	// The late read of each login (msgserver reads the inbox once more
	// RedisTimeout+0.5s after the login).
	testenv.Eventually(t, 10*time.Second, "the late inbox reads", func() bool { return h.Count("exists") >= 2*n })
	time.Sleep(100 * time.Millisecond) // anything a late read would send after its look
	commands, roundTrips := h.Take()
	if len(commands) != 3*n {
		t.Errorf("%d logins sent %d commands, want %d (3 each): %q", n, len(commands), 3*n, commands)
	}
	for _, c := range commands {
		if !strings.HasPrefix(c, "set chatrelay:user:") && !strings.HasPrefix(c, "exists chatrelay:inbox:") {
			t.Errorf("a login with an empty inbox sent %q; want only SET of presence and EXISTS of the inbox", c)
		}
	}
	// One round trip per login at most for the claims (a lone login has
	// its own; concurrent ones share), and the late reads share theirs.
	if roundTrips > n+n/2 {
		t.Errorf("%d logins took %d round trips, want at most %d", n, roundTrips, n+n/2)
	}
	t.Logf("%d logins: %d commands in %d round trips", n, len(commands), roundTrips)
}

// A message stored in a user's inbox just after its login read the inbox
// (by a server that had looked the user up just before) reaches the session
// a moment later without another login: for many logins at once, with and
// without acks.
func TestLoginReadsInboxAgainLater(t *testing.T) {
	r := testenv.StartRedis(t)
	s := testenv.StartServer(t, r.Addr, msgserver.Config{ID: "msg-a", RedisTimeout: 200 * time.Millisecond})
	const n = 20
	clients := make([]*testenv.Client, n)
	for i := range clients {
		clients[i] = loginWith(t, s, fmt.Sprintf("late-%02d", i), i%2 == 1, false)
	}
	for i := range clients {
		line := fmt.Sprintf(`{"event":"chat","from":"x","to":"late-%02d","content":"stored after login %d","ts":1}`, i, i)
		if _, err := r.Command("RPUSH", fmt.Sprintf("chatrelay:inbox:late-%02d", i), line); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range clients {
		m, _ := c.Expect(map[string]any{"event": "chat"})
		if want := fmt.Sprintf("stored after login %d", i); m.S("content") != want {
			t.Fatalf("late-%02d got %v, want %q", i, m, want)
		}
	}
	for i := range clients {
		if i%2 == 1 {
			continue // with acks, the inbox keeps what the client has not acked
		}
		if v, _ := r.Command("EXISTS", fmt.Sprintf("chatrelay:inbox:late-%02d", i)); v != ":0" {
			t.Errorf("late-%02d: the inbox is still there after the late read", i)
		}
	}
}

// When Redis is gone as the late inbox reads of a login storm fall due,
// the operator gets a warning per batch of reads that failed, naming a few
// users and counting the logins, not one warning per login.
func TestLateReadFailuresAreLoggedPerBatch(t *testing.T) {
	r := testenv.StartRedis(t)
	var logs testenv.LogBuffer
	s := testenv.StartServer(t, r.Addr, msgserver.Config{ID: "msg-a", RedisTimeout: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	const n = 20
	for i := range n {
		loginWith(t, s, fmt.Sprintf("gone-%02d", i), i%2 == 1, false)
	}
	r.Kill() // before the late reads, 0.7 s after each login
	counted := regexp.MustCompile(`inboxes not read again after login, twice.* logins=(\d+)`)
	var lines int
	testenv.Eventually(t, 10*time.Second, "a warning for every failed late read", func() bool {
		sum := 0
		ms := counted.FindAllStringSubmatch(logs.String(), -1)
		for _, m := range ms {
			k, _ := strconv.Atoi(m[1])
			sum += k
		}
		lines = len(ms)
		return sum == n
	})
	if lines > 5 {
		t.Fatalf("%d warnings for %d failed late reads, want one per batch:\n%s", lines, n, logs.String())
	}
}
