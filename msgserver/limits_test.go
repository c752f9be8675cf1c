package msgserver_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/testenv"
)

// chatting is a logged-in pair on one server that must keep working while
// a limit is hit next to it: every message arrives, once.
type chatting struct {
	from, to *testenv.Client
	n        int
}

func startChatting(t *testing.T, s *testenv.InServer, prefix string) *chatting {
	t.Helper()
	return &chatting{from: login(t, s, prefix+"-from"), to: login(t, s, prefix+"-to")}
}

// check sends one more message and waits for it; it returns what the
// recipient got before it.
func (c *chatting) check(t *testing.T) []testenv.Msg {
	t.Helper()
	c.n++
	content := fmt.Sprintf("still here %d", c.n)
	c.from.Chat(c.to.Name, content)
	_, before := c.to.Expect(map[string]any{"event": "chat", "content": content})
	c.from.Expect(map[string]any{"reply": "chat", "ok": true, "status": "delivered"})
	return before
}

// rawClient is a connection from a chosen source address, read line by
// line; the per-address tests need sources other than 127.0.0.1.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func dialFrom(t *testing.T, addr, source string) *rawClient {
	t.Helper()
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, source, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawClient{t: t, conn: conn, br: bufio.NewReader(conn)}
}

func (c *rawClient) send(line string) {
	c.t.Helper()
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.conn.Write([]byte(line + "\n")); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// next returns the next line, decoded; io.EOF (or a reset) when the
// server has closed the connection.
func (c *rawClient) next() (testenv.Msg, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := c.br.ReadString('\n')
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.t.Fatalf("no line and no close within 5s")
		}
		return nil, err
	}
	var m testenv.Msg
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		c.t.Fatalf("line is not JSON: %q", line)
	}
	return m, nil
}

func (c *rawClient) expect(want map[string]any) testenv.Msg {
	c.t.Helper()
	m, err := c.next()
	if err != nil {
		c.t.Fatalf("waiting for %v: %v", want, err)
	}
	for k, v := range want {
		if fmt.Sprint(m[k]) != fmt.Sprint(v) {
			c.t.Fatalf("got %v, want %v", m, want)
		}
	}
	return m
}

// expectClosed reads the rest: the lines before the server's close.
func (c *rawClient) expectClosed() []testenv.Msg {
	c.t.Helper()
	var got []testenv.Msg
	for {
		m, err := c.next()
		if err != nil {
			return got
		}
		got = append(got, m)
	}
}

// exemptOnly exempts 127.0.0.1 from the per-address limits: the testenv
// clients (the bystanders) come from there, the tests' strangers from
// other loopback addresses.
func exemptOnly(c *msgserver.Config) {
	c.PerIPExempt = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
}

func lastCode(t *testing.T, got []testenv.Msg) string {
	t.Helper()
	if len(got) == 0 {
		t.Fatal("the server closed without a last line")
	}
	return got[len(got)-1].S("code")
}

// A connection that does not log in in time is closed with login_timeout,
// whether it waits on its goroutine or parked; one that did log in stays,
// and so do the users around it.
func TestLoginTimeout(t *testing.T) {
	for _, park := range []bool{false, true} {
		t.Run(fmt.Sprintf("parked=%v", park), func(t *testing.T) {
			tr := startTier(t, func(c *msgserver.Config) {
				c.LoginTimeout = 300 * time.Millisecond
				if park {
					parkFast(c)
				}
			})
			pair := startChatting(t, tr.a, "pair")
			lazy := testenv.Dial(t, tr.a.Addr)
			prompt := testenv.Dial(t, tr.a.Addr)
			prompt.Login("prompt")
			lazy.SendLine(`{"cmd":"ping"}`) // requests do not stand in for a login
			lazy.Expect(map[string]any{"reply": "ping", "ok": true})
			if park {
				waitParked(t, tr.a, 4)
			}
			got := lazy.ExpectClosed()
			if len(got) != 1 || got[0].S("event") != "closing" || got[0].S("code") != "login_timeout" ||
				got[0].S("reason") != "not logged in within 300ms" {
				t.Fatalf("lazy client got %v, want one closing line with login_timeout", got)
			}
			prompt.SendLine(`{"cmd":"ping"}`)
			prompt.Expect(map[string]any{"reply": "ping", "ok": true})
			pair.check(t)
		})
	}
}

// A line not finished within the line timeout of its first byte ends the
// connection with line_timeout, though bytes keep trickling in (they used
// to keep a goroutine busy forever); a slow but finished line is a request.
func TestSlowlorisLineIsCut(t *testing.T) {
	for _, park := range []bool{false, true} {
		t.Run(fmt.Sprintf("parked=%v", park), func(t *testing.T) {
			tr := startTier(t, func(c *msgserver.Config) {
				c.LineTimeout = 500 * time.Millisecond
				if park {
					parkFast(c)
				}
			})
			pair := startChatting(t, tr.a, "pair")
			slow := login(t, tr.a, "slow")
			if park {
				waitParked(t, tr.a, 3)
			}
			// Within the timeout: one request.
			for _, part := range []string{`{"cmd"`, `:"ping"`, "}\n"} {
				if _, err := slow.Conn().Write([]byte(part)); err != nil {
					t.Fatal(err)
				}
				time.Sleep(50 * time.Millisecond) // the scenario is the pause between the parts
			}
			slow.Expect(map[string]any{"reply": "ping", "ok": true})

			loris := login(t, tr.a, "loris")
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := loris.Conn().Write([]byte(`{"cmd":"pi`)); err != nil {
					return
				}
				for {
					select {
					case <-stop:
						return
					case <-time.After(100 * time.Millisecond): // one byte at a time: the attack's pace
					}
					if _, err := loris.Conn().Write([]byte("n")); err != nil {
						return
					}
				}
			}()
			got := loris.ExpectClosed()
			close(stop)
			wg.Wait()
			if len(got) != 1 || got[0].S("code") != "line_timeout" || got[0].S("reason") != "line not completed within 500ms" {
				t.Fatalf("slowloris client got %v, want one closing line with line_timeout", got)
			}
			testenv.Eventually(t, 5*time.Second, "loris's presence to be released", func() bool {
				v, _ := tr.redis.Command("EXISTS", "chatrelay:user:loris")
				return v == ":0"
			})
			pair.check(t)
		})
	}
}

// A line over the limit is answered as soon as the limit is passed, with no
// newline in sight; the rest of it is discarded up to its newline and the
// session goes on.
func TestLineTooLongAnsweredBeforeItsNewline(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { c.MaxLine = 2048; c.MaxContent = 512 })
	pair := startChatting(t, tr.a, "pair")
	big := login(t, tr.a, "big")
	written := make(chan error, 1)
	go func() {
		_, err := big.Conn().Write([]byte(strings.Repeat("x", 4<<20))) // 4 MiB, no newline
		written <- err
	}()
	m := big.Next()
	if m.S("reply") != "error" || m.S("code") != "line_too_long" || m.S("error") == "" {
		t.Fatalf("got %v, want a line_too_long error", m)
	}
	pair.check(t) // meanwhile
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	big.SendLine(`"}`) // the end of the long line: nothing more is said about it
	big.SendLine(`{"cmd":"ping"}`)
	if m := big.Next(); m.S("reply") != "ping" || m["ok"] != true {
		t.Fatalf("after the long line: %v, want the ping reply", m)
	}
	pair.check(t)
}

// Over its request rate a connection's requests get rate_limited (with
// their ref); if it keeps on, it is disconnected for too many errors. Its
// neighbours are not slowed.
func TestRequestRateLimited(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) {
		c.RequestRate = 0.01 // no token comes back during the test
		c.RequestBurst = 3
	})
	pair := startChatting(t, tr.a, "pair")
	hasty := login(t, tr.a, "hasty") // the first request of three
	hasty.SendLine(`{"cmd":"ping"}`)
	hasty.Expect(map[string]any{"reply": "ping", "ok": true})
	hasty.Send(map[string]string{"cmd": "chat", "recv": "pair-to", "content": "third", "ref": "r3"})
	hasty.Expect(map[string]any{"reply": "chat", "ok": true, "ref": "r3"})
	pair.to.Expect(map[string]any{"event": "chat", "content": "third"})

	hasty.Send(map[string]string{"cmd": "chat", "recv": "pair-to", "content": "fourth", "ref": "r4"})
	m := hasty.Next()
	if m.S("reply") != "chat" || m["ok"] != false || m.S("code") != "rate_limited" || m.S("ref") != "r4" || m.S("error") == "" {
		t.Fatalf("fourth request: %v, want a rate_limited chat reply with ref r4", m)
	}
	if before := pair.check(t); len(before) != 0 {
		t.Fatalf("the refused message reached its recipient: %v", before)
	}

	for i := 0; i < 30; i++ {
		if _, err := hasty.Conn().Write([]byte(`{"cmd":"ping"}` + "\n")); err != nil {
			break // cut already
		}
	}
	got := hasty.ExpectClosed()
	if lastCode(t, got) != "too_many_errors" {
		t.Fatalf("a connection that keeps on got %v, want rate_limited replies, then a too_many_errors close", got)
	}
	for _, m := range got[:len(got)-1] {
		if m.S("code") != "rate_limited" {
			t.Fatalf("reply %v, want rate_limited", m)
		}
	}
	pair.check(t)
}

// A source address gets at most MaxConnsPerIP connections; the next one is
// told too_many_connections and closed. Other sources, and the connections
// it already has, are not affected, and a closed connection frees its slot.
func TestConnectionsPerIPCapped(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { exemptOnly(c); c.MaxConnsPerIP = 3 })
	pair := startChatting(t, tr.a, "pair")
	var held []*rawClient
	for i := range 3 {
		c := dialFrom(t, tr.a.Addr, "127.0.0.2")
		c.send(fmt.Sprintf(`{"cmd":"login","name":"held%d"}`, i))
		c.expect(map[string]any{"reply": "login", "ok": true})
		held = append(held, c)
	}
	extra := dialFrom(t, tr.a.Addr, "127.0.0.2")
	got := extra.expectClosed()
	want := `[map[code:too_many_connections event:closing reason:too many connections from your address (the limit is 3)]]`
	if fmt.Sprint(got) != want {
		t.Fatalf("fourth connection got %v, want %s", got, want)
	}
	other := dialFrom(t, tr.a.Addr, "127.0.0.3")
	other.send(`{"cmd":"login","name":"elsewhere"}`)
	other.expect(map[string]any{"reply": "login", "ok": true})
	held[0].send(`{"cmd":"ping"}`)
	held[0].expect(map[string]any{"reply": "ping", "ok": true})
	pair.check(t)

	held[1].conn.Close()
	testenv.Eventually(t, 5*time.Second, "a slot to be free again", func() bool {
		c := dialFrom(t, tr.a.Addr, "127.0.0.2")
		defer c.conn.Close()
		c.send(`{"cmd":"ping"}`)
		m, err := c.next()
		return err == nil && m.S("reply") == "ping"
	})
	pair.check(t)
}

// A source address may send LoginBurstPerIP login requests, then
// LoginRatePerIP a second; over that a login is refused with rate_limited
// and the connection closed, and reconnecting does not refill the bucket.
func TestLoginRatePerIP(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { exemptOnly(c); c.LoginRatePerIP = 0.01; c.LoginBurstPerIP = 2 })
	pair := startChatting(t, tr.a, "pair")
	burst := []*rawClient{dialFrom(t, tr.a.Addr, "127.0.0.2"), dialFrom(t, tr.a.Addr, "127.0.0.2")}
	for i, c := range burst {
		c.send(fmt.Sprintf(`{"cmd":"login","name":"burst%d"}`, i))
		c.expect(map[string]any{"reply": "login", "ok": true})
	}
	over := dialFrom(t, tr.a.Addr, "127.0.0.2")
	over.send(`{"cmd":"login","name":"victim"}`)
	got := over.expectClosed()
	if len(got) != 2 || got[0].S("reply") != "login" || got[0]["ok"] != false || got[0].S("code") != "rate_limited" ||
		got[1].S("event") != "closing" || got[1].S("code") != "rate_limited" {
		t.Fatalf("third login got %v, want a rate_limited reply and a rate_limited closing line", got)
	}
	if v, _ := tr.redis.Command("EXISTS", "chatrelay:user:victim"); v != ":0" {
		t.Fatalf("a refused login claimed presence: EXISTS = %s", v)
	}

	// The source keeps its bucket when it has no connection left.
	for _, c := range burst {
		c.conn.Close()
	}
	testenv.Eventually(t, 5*time.Second, "the burst's presence to be released", func() bool {
		v, _ := tr.redis.Command("EXISTS", "chatrelay:user:burst0", "chatrelay:user:burst1")
		return v == ":0"
	})
	again := dialFrom(t, tr.a.Addr, "127.0.0.2")
	again.send(`{"cmd":"login","name":"again"}`)
	if m := again.expect(map[string]any{"reply": "login"}); m.S("code") != "rate_limited" {
		t.Fatalf("login after reconnecting: %v, want rate_limited", m)
	}

	elsewhere := dialFrom(t, tr.a.Addr, "127.0.0.3")
	elsewhere.send(`{"cmd":"login","name":"elsewhere"}`)
	elsewhere.expect(map[string]any{"reply": "login", "ok": true})
	pair.check(t)
}
