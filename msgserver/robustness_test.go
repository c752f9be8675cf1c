package msgserver_test

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/testenv"
)

func TestBadClientInputGetsClearErrors(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { c.MaxLine = 2048; c.MaxContent = 512 })
	cases := []struct {
		name, line, code string
		loggedIn         bool
	}{
		{"not json", `hello there`, "bad_json", false},
		{"json array", `["login"]`, "bad_json", false},
		{"binary junk", "\x00\xff\xfe\x01\x02garbage\x7f", "bad_json", false},
		{"missing cmd", `{"name":"x"}`, "unknown_cmd", false},
		{"unknown cmd", `{"cmd":"dance"}`, "unknown_cmd", false},
		{"chat before login", `{"cmd":"chat","recv":"x","content":"hi"}`, "not_logged_in", false},
		{"empty name", `{"cmd":"login","name":""}`, "bad_name", false},
		{"oversize name", `{"cmd":"login","name":"` + strings.Repeat("n", 65) + `"}`, "bad_name", false},
		{"control character in name", `{"cmd":"login","name":"a\u0007b"}`, "bad_name", false},
		{"line over the limit", `{"cmd":"chat","content":"` + strings.Repeat("x", 3000) + `"}`, "line_too_long", false},
		{"content over the limit", `{"cmd":"chat","recv":"bob","content":"` + strings.Repeat("x", 600) + `"}`, "content_too_long", true},
		{"bad recipient", `{"cmd":"chat","recv":"","content":"hi"}`, "bad_recipient", true},
		{"second login", `{"cmd":"login","name":"other"}`, "already_logged_in", true},
	}
	// A bystander keeps chatting through all of it.
	bystander := login(t, tr.a, "bystander")
	friend := login(t, tr.b, "friend")
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := testenv.Dial(t, tr.a.Addr)
			if tc.loggedIn {
				c.Login(fmt.Sprintf("user%d", i))
			}
			c.SendLine(tc.line)
			m := c.Next()
			if m["ok"] != false || m.S("code") != tc.code || m.S("error") == "" {
				t.Fatalf("reply = %v, want code %s with a message", m, tc.code)
			}
			// The session still works after the error.
			c.SendLine(`{"cmd":"ping"}`)
			c.Expect(map[string]any{"reply": "ping", "ok": true})

			bystander.Chat("friend", tc.name)
			friend.Expect(map[string]any{"event": "chat", "content": tc.name})
		})
	}
}

func TestStreamOfJunkIsDisconnected(t *testing.T) {
	tr := startTier(t, nil)
	c := testenv.Dial(t, tr.a.Addr)
	for i := 0; i < 50; i++ {
		if _, err := c.Conn().Write([]byte("\x16\x03\x01junk that is not json\n")); err != nil {
			break // the server may already have hung up
		}
	}
	got := c.ExpectClosed()
	if len(got) == 0 || got[len(got)-1].S("code") != "too_many_errors" {
		t.Fatalf("want a too_many_errors close, got %d lines, last %v", len(got), got[len(got)-1:])
	}
	login(t, tr.a, "still-works")
}

// The flood below comes from one connection as fast as it can write, which
// the per-connection request rate would stop: it is lifted, this test is
// about the client that does not read.
func TestClientThatNeverReadsIsCutAndOthersUnaffected(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { c.SessionQueueBytes = 64 << 10; c.RequestRate = -1 })
	slow := testenv.Dial(t, tr.a.Addr)
	slow.Login("sloth")
	if tcp, ok := slow.Conn().(*net.TCPConn); ok {
		_ = tcp.SetReadBuffer(4096)
	}
	flood := login(t, tr.b, "flood")
	other := login(t, tr.a, "other")
	peer := login(t, tr.b, "peer")

	big := strings.Repeat("z", 4000)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(done)
		for i := 0; i < 3000; i++ {
			flood.Send(map[string]string{"cmd": "chat", "recv": "sloth", "content": big})
		}
	}()
	// Replies to flood are read so that flood itself is not the slow one.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if _, err := flood.Read(10 * time.Second); err != nil {
				return
			}
			select {
			case <-done:
			default:
				continue
			}
		}
	}()
	testenv.Eventually(t, 20*time.Second, "the slow client's presence to be released", func() bool {
		v, _ := tr.redis.Command("EXISTS", "chatrelay:user:sloth")
		return v == ":0"
	})
	other.Chat("peer", "unaffected")
	peer.Expect(map[string]any{"event": "chat", "content": "unaffected"})
	<-done
	flood.Conn().Close()
	wg.Wait()
}

func TestRedisDownLocalDeliveryContinuesAndRecovers(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { c.RegistryTTL = time.Second; c.RedisTimeout = 300 * time.Millisecond })
	a1 := login(t, tr.a, "ann")
	a2 := login(t, tr.a, "ben")
	remote := login(t, tr.b, "cal")

	tr.redis.Kill()
	a1.Chat("ben", "local while redis is down")
	a2.Expect(map[string]any{"event": "chat", "content": "local while redis is down"})
	a1.Expect(map[string]any{"reply": "chat", "status": "delivered"})

	late := testenv.Dial(t, tr.a.Addr)
	late.SendLine(`{"cmd":"login","name":"dan"}`)
	m := late.Next()
	if m.S("code") != "presence_unavailable" || !strings.Contains(m.S("error"), "try again") {
		t.Fatalf("login with Redis down = %v", m)
	}

	tr.redis.Restart() // empty: presence must be rebuilt by the servers
	testenv.Eventually(t, 10*time.Second, "cal's presence to be rewritten after Redis returned", func() bool {
		v, _ := tr.redis.Command("GET", "chatrelay:user:cal")
		return strings.HasPrefix(v, "msg-b ")
	})
	late.Login("dan")
	a1.Chat("cal", "cross-server after restart")
	remote.Expect(map[string]any{"event": "chat", "content": "cross-server after restart"})
}

func TestRelayRestartMidStreamLosesNothingAndDuplicatesNothing(t *testing.T) {
	tr := startTier(t, nil)
	sender := login(t, tr.a, "sara")
	recv := login(t, tr.b, "tom")
	const n = 400
	stream := testenv.StartStream(t, sender, "tom", n)
	addr := tr.relay.Addr
	for _, at := range []int{n / 4, n / 2} {
		stream.WaitSent(t, at)
		tr.relay.Stop()
		tr.relay = testenv.StartRelay(t, addr, relay.Config{})
	}
	if stream.Sent() == n {
		t.Fatal("the stream ended before the relay restarts; the test proves nothing")
	}
	stream.Wait()
	stream.ExpectEachOnce(t, recv, 15*time.Second)
	relayed := 0
	for relayed < n {
		m := sender.Next()
		if m.S("reply") == "chat" {
			if m.S("status") != "relayed" {
				t.Fatalf("sender reply %v", m)
			}
			relayed++
		}
	}
}

func TestGracefulShutdownTellsClientsAndRemovesPresence(t *testing.T) {
	tr := startTier(t, nil)
	u := login(t, tr.a, "uma")
	login(t, tr.b, "vic")
	if err := tr.a.Shutdown(5 * time.Second); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	got := u.ExpectClosed()
	if len(got) == 0 || got[len(got)-1].S("code") != "shutting_down" {
		t.Fatalf("client should be told the server is shutting down, got %v", got)
	}
	if v, _ := tr.redis.Command("EXISTS", "chatrelay:user:uma", "chatrelay:server:msg-a"); v != ":0" {
		t.Fatalf("presence or registry entry left behind: EXISTS = %s", v)
	}
	if v, _ := tr.redis.Command("EXISTS", "chatrelay:user:vic"); v != ":1" {
		t.Fatalf("the other server's user was touched: EXISTS = %s", v)
	}
	if _, err := net.DialTimeout("tcp", tr.a.Addr, time.Second); err == nil {
		t.Fatal("still accepting clients after shutdown")
	}
}

// A client whose socket stays full past the write timeout is disconnected
// (and its presence released), not kept as a session that swallows messages.
// The sender floods from one connection, so its request rate is lifted.
func TestStuckClientIsCutAtTheWriteTimeout(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) {
		c.SessionQueueBytes = 64 << 20
		c.WriteTimeout = 300 * time.Millisecond
		c.RequestRate = -1
	})
	stuck := testenv.Dial(t, tr.a.Addr)
	stuck.Login("stuck")
	if tcp, ok := stuck.Conn().(*net.TCPConn); ok {
		_ = tcp.SetReadBuffer(4096)
	}
	sender := login(t, tr.a, "sender")
	big := strings.Repeat("w", 4000)
	for i := 0; i < 3000; i++ { // ~12 MB: far more than the socket buffers hold
		sender.Send(map[string]string{"cmd": "chat", "recv": "stuck", "content": big})
	}
	testenv.Eventually(t, 10*time.Second, "the stuck client's presence to be released", func() bool {
		v, _ := tr.redis.Command("EXISTS", "chatrelay:user:stuck")
		return v == ":0"
	})
}
