package msgserver_test

import (
	"bytes"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/testenv"
)

// parkFast parks sessions after 50 ms of silence.
func parkFast(c *msgserver.Config) { c.ParkIdleAfter = 50 * time.Millisecond }

func waitParked(t *testing.T, s *testenv.InServer, n int) {
	t.Helper()
	testenv.Eventually(t, 5*time.Second, "sessions parked", func() bool { return s.Parked() == n })
}

// Parked sessions receive messages, local and relayed, and wake up when
// their client speaks; then they park again.
func TestParkedSessionsChat(t *testing.T) {
	tr := startTier(t, parkFast)
	alice := login(t, tr.a, "alice")
	carol := login(t, tr.a, "carol")
	bob := login(t, tr.b, "bob")
	waitParked(t, tr.a, 2)
	waitParked(t, tr.b, 1)

	bob.Chat("alice", "to a parked session, through the relay")
	alice.Expect(map[string]any{"event": "chat", "from": "bob", "content": "to a parked session, through the relay"})
	carol.Chat("alice", "to a parked session, locally")
	alice.Expect(map[string]any{"event": "chat", "from": "carol", "content": "to a parked session, locally"})

	alice.Chat("bob", "from a session that was parked")
	bob.Expect(map[string]any{"event": "chat", "from": "alice", "content": "from a session that was parked"})
	alice.SendLine(`{"cmd":"ping"}`)
	alice.Expect(map[string]any{"reply": "ping", "ok": true})
	waitParked(t, tr.a, 2) // idle again

	alice.SendLine(`{"cmd":"logout"}`)
	alice.Expect(map[string]any{"reply": "logout", "ok": true})
	if n := tr.a.Sessions(); n != 1 {
		t.Fatalf("%d sessions after alice's logout, want 1", n)
	}
}

// The idle timeout still applies to a parked session.
func TestParkedSessionIdleTimeout(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) {
		parkFast(c)
		c.IdleTimeout = 400 * time.Millisecond
	})
	c := login(t, tr.a, "sleepy")
	got := c.ExpectClosed()
	if len(got) == 0 || got[len(got)-1].S("code") != "idle_timeout" {
		t.Fatalf("want an idle_timeout close, got %v", got)
	}
	testenv.Eventually(t, 5*time.Second, "session gone", func() bool { return tr.a.Sessions() == 0 && tr.a.Parked() == 0 })
}

// A parked session is kicked by a login elsewhere, and one whose client
// hangs up is noticed at once.
func TestParkedSessionKickAndHangUp(t *testing.T) {
	tr := startTier(t, parkFast)
	old := login(t, tr.a, "dave")
	gone := login(t, tr.a, "erin")
	waitParked(t, tr.a, 2)

	login(t, tr.b, "dave")
	got := old.ExpectClosed()
	if len(got) == 0 || got[len(got)-1].S("event") != "kicked" {
		t.Fatalf("want a kicked event, got %v", got)
	}

	gone.Conn().Close()
	testenv.Eventually(t, 5*time.Second, "hung-up session ended", func() bool { return tr.a.Sessions() == 0 && tr.a.Parked() == 0 })
}

// Shutdown tells parked sessions and closes them; nothing is left behind
// (the suite checks goroutines with goleak).
func TestParkedSessionsShutdown(t *testing.T) {
	tr := startTier(t, parkFast)
	var clients []*testenv.Client
	for _, name := range []string{"p1", "p2", "p3"} {
		clients = append(clients, login(t, tr.a, name))
	}
	waitParked(t, tr.a, 3)
	if err := tr.a.Shutdown(5 * time.Second); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	for _, c := range clients {
		got := c.ExpectClosed()
		if len(got) == 0 || got[len(got)-1].S("code") != "shutting_down" {
			t.Fatalf("want a shutting_down close, got %v", got)
		}
	}
}

// A line cut in two by a silence longer than the park time is still one
// request: a session with part of a line waits on its goroutine.
func TestSplitLineAcrossSilence(t *testing.T) {
	tr := startTier(t, parkFast)
	c := login(t, tr.a, "frank")
	waitParked(t, tr.a, 1)
	if _, err := c.Conn().Write([]byte(`{"cmd":"pi`)); err != nil {
		t.Fatal(err)
	}
	// The scenario is the silence itself: several park times with half a
	// line read.
	time.Sleep(300 * time.Millisecond)
	if n := tr.a.Parked(); n != 0 {
		t.Fatalf("%d sessions parked holding half a line", n)
	}
	if _, err := c.Conn().Write([]byte("ng\"}\n")); err != nil {
		t.Fatal(err)
	}
	c.Expect(map[string]any{"reply": "ping", "ok": true})
	c.SendLine(`{"cmd":"chat","recv":"nobody-here","content":"` + strings.Repeat("x", 10) + `"}`)
	c.Expect(map[string]any{"reply": "chat", "ok": true, "status": "offline"})
}

// A parked client that stops reading is cut when a write to it times out,
// and leaves the poller (its descriptor is not closed under the poller).
func TestParkedClientThatNeverReadsIsCut(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) {
		parkFast(c)
		c.WriteTimeout = 300 * time.Millisecond
		c.SessionQueueBytes = 64 << 20 // so the write timeout, not the queue limit, cuts it
		c.RequestRate = -1             // the flood comes from one connection
	})
	slow := testenv.Dial(t, tr.a.Addr)
	slow.Login("sloth")
	if tcp, ok := slow.Conn().(*net.TCPConn); ok {
		_ = tcp.SetReadBuffer(4096)
	}
	waitParked(t, tr.a, 1)
	flood := testenv.Dial(t, tr.b.Addr)
	flood.Login("flood")

	line := []byte(`{"cmd":"chat","recv":"sloth","content":"` + strings.Repeat("z", 4000) + "\"}\n")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; i < 3000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := flood.Conn().Write(line); err != nil {
				return
			}
		}
	}()
	go func() { // flood reads its replies, so that it is not the slow one
		defer wg.Done()
		for {
			if _, err := flood.Read(10 * time.Second); err != nil {
				return
			}
		}
	}()
	testenv.Eventually(t, 20*time.Second, "the stuck parked session to end", func() bool {
		v, _ := tr.redis.Command("EXISTS", "chatrelay:user:sloth")
		return v == ":0" && tr.a.Sessions() == 0 && tr.a.Parked() == 0
	})
	close(stop)
	flood.Conn().Close()
	wg.Wait()
}

// Bad requests in a row are counted across parks: pausing between bursts
// of junk does not reset the count.
func TestBadRequestsCountedAcrossParks(t *testing.T) {
	tr := startTier(t, parkFast)
	c := testenv.Dial(t, tr.a.Addr)
	waitParked(t, tr.a, 1) // parked before the first request too
	for i := 0; i < 19; i++ {
		c.SendLine("not json")
		if m := c.Next(); m.S("code") != "bad_json" {
			t.Fatalf("reply %d = %v, want bad_json", i, m)
		}
	}
	waitParked(t, tr.a, 1)
	c.SendLine("not json either")
	got := c.ExpectClosed()
	if len(got) == 0 || got[len(got)-1].S("code") != "too_many_errors" {
		t.Fatalf("want a too_many_errors close after 20 bad lines with a pause, got %v", got)
	}
}

// A server's cost per idle client: logged-in sessions that have gone quiet
// park soon after their login and then hold no goroutine (no stack, no
// read buffer), and what they keep on the heap stays small. Measured in
// this process after a full GC: the heap grown by n logged-in, parked
// sessions, client sockets included (about 0.4 KB of it), per session.
// Measured here: 1.4-1.6 KB (the server's part about 1 KB); a parked
// session that kept its 512-byte read buffer, or a goroutine, would fail.
func TestParkedSessionMemory(t *testing.T) {
	const n = 2000
	const maxBytesPerSession = 2048
	r := testenv.StartRedis(t)
	// A Redis client with all its connections open from the start (64 KB
	// of buffers each): one opened while measuring is not a session's.
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, PoolSize: 4, MinIdleConns: 4})
	t.Cleanup(func() { rdb.Close() })
	// Sessions park 50 ms after their login: the goroutines of the logins
	// in flight, whose descriptors the runtime keeps, are not sessions'.
	srv := testenv.StartServer(t, r.Addr, msgserver.Config{ID: "msg-mem", Redis: rdb, RedisTimeout: 500 * time.Millisecond, ParkIdleAfter: 50 * time.Millisecond})
	// heap is the heap and stacks in use once they have settled: a login's
	// late inbox read holds it for a moment (readInboxLate), and a server
	// of an earlier test may still be freed.
	heap := func() uint64 {
		read := func() uint64 {
			var m runtime.MemStats
			runtime.GC()
			runtime.GC()
			runtime.ReadMemStats(&m)
			return m.HeapAlloc + m.StackInuse
		}
		prev := read()
		for range 20 {
			time.Sleep(500 * time.Millisecond) // bounded: 10 s at most
			now := read()
			if max(now, prev)-min(now, prev) < 32<<10 {
				return now
			}
			prev = now
		}
		return prev
	}
	// Warmed up first: the server's pools and maps, and this process's
	// dialer.
	conns := make([]net.Conn, 0, n+400)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	loginRaw := func(name string) (net.Conn, error) {
		c, err := net.Dial("tcp", srv.Addr)
		if err != nil {
			return nil, err
		}
		if _, err := fmt.Fprintf(c, `{"cmd":"login","name":%q}`+"\n", name); err != nil {
			c.Close()
			return nil, err
		}
		var buf [512]byte // the reply, read without a buffer kept per client
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var got []byte
		for !bytes.Contains(got, []byte("\n")) {
			k, err := c.Read(buf[:])
			if err != nil {
				c.Close()
				return nil, fmt.Errorf("login %s: %w", name, err)
			}
			got = append(got, buf[:k]...)
		}
		if !bytes.Contains(got, []byte(`"ok":true`)) {
			c.Close()
			return nil, fmt.Errorf("login %s: %s", name, got)
		}
		return c, nil
	}
	// open logs k clients in, 20 at a time: enough that the server's Redis
	// client opens all the connections it may (64 KB of buffers each) in
	// the warm-up, not while measuring.
	open := func(prefix string, k int) {
		t.Helper()
		var mu sync.Mutex
		var wg sync.WaitGroup
		var firstErr error
		next := make(chan int)
		for range 20 {
			wg.Go(func() {
				for i := range next {
					c, err := loginRaw(fmt.Sprintf("%s%d", prefix, i))
					mu.Lock()
					if err != nil && firstErr == nil {
						firstErr = err
					}
					if c != nil {
						conns = append(conns, c)
					}
					mu.Unlock()
				}
			})
		}
		for i := range k {
			next <- i
		}
		close(next)
		wg.Wait()
		if firstErr != nil {
			t.Fatal(firstErr)
		}
	}
	open("warm", 400)
	waitParked(t, srv, len(conns))
	h0 := heap()
	g0 := runtime.NumGoroutine()
	open("idle", n)
	testenv.Eventually(t, 20*time.Second, "the new sessions parked", func() bool { return srv.Parked() == len(conns) })
	h1 := heap()
	g1 := runtime.NumGoroutine()
	per := (float64(h1) - float64(h0)) / n
	t.Logf("%d parked sessions: %.0f bytes of heap and stack each, %d goroutines more", n, per, g1-g0)
	if g1-g0 > n/20 {
		t.Errorf("%d more goroutines with %d more parked sessions: a parked session must have none", g1-g0, n)
	}
	if per > maxBytesPerSession {
		t.Errorf("%.0f bytes of heap and stack per parked session, more than %d", per, maxBytesPerSession)
	}
}

// A client that logs in and then stays silent parks well before
// ParkIdleAfter: after a reconnect storm the server holds a goroutine per
// login for a moment only, and the parked count says so at once.
func TestSilentLoginParksSoon(t *testing.T) {
	r := testenv.StartRedis(t)
	srv := testenv.StartServer(t, r.Addr, msgserver.Config{ID: "msg-park", ParkIdleAfter: 30 * time.Second})
	quiet := login(t, srv, "quiet")
	testenv.Eventually(t, 3*time.Second, "the silent session parked", func() bool { return srv.Parked() == 1 })

	// It is served as before: a request wakes it, and it parks again only
	// after ParkIdleAfter (no longer just logged in).
	quiet.SendLine(`{"cmd":"ping"}`)
	quiet.Expect(map[string]any{"reply": "ping", "ok": true})
	if n := srv.Parked(); n != 0 {
		t.Fatalf("%d parked right after a request", n)
	}
}
