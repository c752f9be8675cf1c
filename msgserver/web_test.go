package msgserver_test

import (
	"errors"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/testenv"
)

func wsURL(addr string) string { return "ws://" + addr + "/ws" }

// A browser user (WebSocket, on msg-a) and a TCP user (on msg-b) chat both
// ways through the relay; a message to a user who is away is stored and
// reaches them at their WebSocket login.
func TestWebSocketChatsWithTCPAcrossRelay(t *testing.T) {
	tr := startTier(t, nil)
	web := tr.a.ServeWeb(t)

	w := testenv.DialWS(t, wsURL(web), "")
	w.Login("webby")
	c := login(t, tr.b, "telly")

	w.Send(map[string]string{"cmd": "chat", "send": "webby", "recv": "telly", "content": "hi from a browser", "ref": "r1"})
	ev, _ := c.Expect(map[string]any{"event": "chat"})
	if ev.S("from") != "webby" || ev.S("content") != "hi from a browser" {
		t.Fatalf("TCP user got %v", ev)
	}
	rep, _ := w.Expect(map[string]any{"reply": "chat", "ref": "r1"})
	if rep["ok"] != true || rep.S("status") != msgserver.StatusRelayed || rep.S("id") != ev.S("id") {
		t.Fatalf("WebSocket sender's reply = %v (event id %s)", rep, ev.S("id"))
	}

	c.Chat("webby", "hi from telnet")
	ev, _ = w.Expect(map[string]any{"event": "chat"})
	if ev.S("from") != "telly" || ev.S("content") != "hi from telnet" {
		t.Fatalf("WebSocket user got %v", ev)
	}

	// Offline: stored while away, delivered at the WebSocket login.
	c.Send(map[string]string{"cmd": "chat", "send": "telly", "recv": "later", "content": "for when you come", "ref": "r2"})
	rep, _ = c.Expect(map[string]any{"reply": "chat", "ref": "r2"})
	if rep.S("status") != msgserver.StatusOffline {
		t.Fatalf("reply to a message for an absent user = %v", rep)
	}
	l := testenv.DialWS(t, wsURL(web), "")
	l.Login("later")
	ev, _ = l.Expect(map[string]any{"event": "chat"})
	if ev.S("content") != "for when you come" || ev["offline"] != true {
		t.Fatalf("offline message at WebSocket login = %v", ev)
	}
}

// Bad requests get the protocol's JSON errors; a message over MaxLine is
// line_too_long; a pretty-printed object is one request; a binary message
// and a message far over the limit end the connection with a close code.
func TestWebSocketBadFrames(t *testing.T) {
	tr := startTier(t, nil)
	web := tr.a.ServeWeb(t)
	w := testenv.DialWS(t, wsURL(web), "")

	w.SendLine(`not json`)
	if m := w.Next(); m.S("code") != msgserver.CodeBadJSON {
		t.Fatalf("not JSON: %v", m)
	}
	w.SendLine(`{"cmd":"dance"}`)
	if m := w.Next(); m.S("code") != msgserver.CodeUnknownCmd {
		t.Fatalf("unknown cmd: %v", m)
	}
	w.SendLine(`{"cmd":"ping","pad":"` + strings.Repeat("x", msgserver.DefaultMaxLine) + `"}`)
	if m := w.Next(); m.S("code") != msgserver.CodeLineTooLong {
		t.Fatalf("message over MaxLine: %v", m)
	}
	// One JSON object over several lines is one request, not several.
	ws := w.Conn().(*testenv.WSConn)
	ctx := testenv.WithTimeout(t, 5*time.Second)
	if err := ws.C.Write(ctx, websocket.MessageText, []byte("{\n  \"cmd\": \"ping\"\n}\n")); err != nil {
		t.Fatal(err)
	}
	if m := w.Next(); m.S("reply") != "ping" || m["ok"] != true {
		t.Fatalf("pretty-printed ping: %v", m)
	}
	// A newline inside a string does not make it valid JSON.
	if err := ws.C.Write(ctx, websocket.MessageText, []byte("{\"cmd\":\"pi\nng\"}")); err != nil {
		t.Fatal(err)
	}
	if m := w.Next(); m.S("code") != msgserver.CodeBadJSON {
		t.Fatalf("raw newline in a string: %v", m)
	}

	if err := ws.C.Write(ctx, websocket.MessageBinary, []byte(`{"cmd":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	w.ExpectClosed()
	if s := websocket.CloseStatus(ws.CloseErr()); s != websocket.StatusUnsupportedData {
		t.Fatalf("binary message: close status %v (%v), want 1003", s, ws.CloseErr())
	}

	w2 := testenv.DialWS(t, wsURL(web), "")
	ws2 := w2.Conn().(*testenv.WSConn)
	if err := ws2.C.Write(ctx, websocket.MessageText, []byte(strings.Repeat(" ", 20*msgserver.DefaultMaxLine))); err != nil {
		t.Fatal(err)
	}
	w2.ExpectClosed()
	if s := websocket.CloseStatus(ws2.CloseErr()); s != websocket.StatusMessageTooBig {
		t.Fatalf("huge message: close status %v (%v), want 1009", s, ws2.CloseErr())
	}
}

// A browser page from another site cannot open a session (cross-site
// WebSocket hijacking); the page's own origin, a listed one and a client
// with no Origin (not a browser) can.
func TestWebSocketOrigin(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) { c.AllowedOrigins = []string{"https://chat.example.com"} })
	web := tr.a.ServeWeb(t)

	_, err := testenv.DialWSErr(wsURL(web), "https://evil.example.net", nil)
	var de *testenv.DialError
	if !errors.As(err, &de) || de.Status != http.StatusForbidden {
		t.Fatalf("foreign origin: err %v, want a 403 refusal", err)
	}
	_, err = testenv.DialWSErr(wsURL(web), "http://chat.example.com", nil) // listed with https only
	if !errors.As(err, &de) || de.Status != http.StatusForbidden {
		t.Fatalf("listed host, other scheme: err %v, want a 403 refusal", err)
	}
	for _, origin := range []string{"", "http://" + web, "https://chat.example.com"} {
		w := testenv.DialWS(t, wsURL(web), origin)
		w.Send(map[string]string{"cmd": "ping"})
		if m := w.Next(); m.S("reply") != "ping" {
			t.Fatalf("origin %q: %v", origin, m)
		}
	}
}

// A WebSocket client that stops reading is cut as a slow consumer, like a
// TCP one; its sender is not held up.
func TestWebSocketSlowConsumer(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) {
		c.SessionQueueBytes = 32 << 10
		c.RequestRate = -1
		c.WriteTimeout = 30 * time.Second // the cut must come from the queue, not a write timeout
	})
	web := tr.a.ServeWeb(t)
	// A raw client that never reads after login.
	ctx := testenv.WithTimeout(t, 30*time.Second)
	ws, _, err := websocket.Dial(ctx, wsURL(web), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if err := ws.Write(ctx, websocket.MessageText, []byte(`{"cmd":"login","name":"sloth"}`)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "sloth logged in", func() bool { return tr.a.Sessions() == 1 })

	sender := login(t, tr.a, "pusher")
	content := strings.Repeat("z", 2000)
	const max = 20000 // 40 MB at most: far more than loopback buffers and the queue hold
	cut := false
	for i := 0; i < max && !cut; i++ {
		sender.Send(map[string]string{"cmd": "chat", "send": "pusher", "recv": "sloth", "content": content})
		// The sender reads its replies, as a client does: one that sends
		// without reading is cut as a slow consumer too, once its socket's
		// worth of replies has piled up.
		if m := sender.Next(); m.S("reply") != "chat" {
			t.Fatalf("sender got %v, want its chat reply", m)
		}
		if i%100 == 99 {
			cut = tr.a.Sessions() == 1
		}
	}
	testenv.Eventually(t, 10*time.Second, "the slow WebSocket client cut", func() bool { return tr.a.Sessions() == 1 })
	// The sender is served on.
	sender.Send(map[string]string{"cmd": "ping"})
	sender.Expect(map[string]any{"reply": "ping"})
}

// The connection limits of the TCP port hold on the web port: the request
// rate gets rate_limited, and a source address over its connection cap is
// refused at accept, before it costs an HTTP request or a session.
func TestWebSocketLimits(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) {
		c.RequestRate = 1
		c.RequestBurst = 3
		c.MaxConnsPerIP = 2
		c.PerIPExempt = []netip.Prefix{}
	})
	web := tr.a.ServeWeb(t)
	w := testenv.DialWS(t, wsURL(web), "")
	limited := false
	for i := 0; i < 10; i++ {
		w.Send(map[string]string{"cmd": "ping"})
		if m := w.Next(); m.S("code") == msgserver.CodeRateLimited {
			limited = true
			break
		}
	}
	if !limited {
		t.Fatal("10 pings at once over a burst of 3: never rate_limited")
	}
	second := testenv.DialWS(t, wsURL(web), "")
	if _, err := testenv.DialWSErr(wsURL(web), "", nil); err == nil {
		t.Fatal("third connection from one address over a cap of 2: upgraded")
	}
	// The cap counts open connections: one closed, one more comes in.
	second.Conn().Close()
	testenv.Eventually(t, 5*time.Second, "a connection once one has closed", func() bool {
		c, err := testenv.DialWSErr(wsURL(web), "", nil)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// The page and what it asks of the server are served on GET.
func TestWebPageServed(t *testing.T) {
	tr := startTier(t, nil)
	web := tr.a.ServeWeb(t)
	for path, want := range map[string]string{"/": "<title>chatrelay</title>", "/app.js": "new WebSocket", "/info": `"server":"msg-a"`} {
		resp, err := http.Get("http://" + web + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Fatalf("GET %s: %d %q", path, resp.StatusCode, b)
		}
		if path == "/" && !strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
			t.Fatalf("GET /: no CSP: %v", resp.Header)
		}
	}
}

// Over TLS (wss://, the client port's certificate) with signed logins: a
// browser session logs in with its token, a bad one gets auth_failed, and
// it chats with a TCP-over-TLS user on the other server.
func TestWebSocketOverTLSWithTokens(t *testing.T) {
	key, err := msgserver.ParseAuthKey([]byte(hmacKey))
	if err != nil {
		t.Fatal(err)
	}
	tr := startTLSTier(t, func(c *msgserver.Config) { c.AuthKey = key })
	web := tr.a.ServeWeb(t)
	url := "wss://" + web + "/ws"
	tc := testenv.ClientTLS(t, tr.ca, "127.0.0.1")

	w := testenv.DialWSS(t, url, tc)
	w.Send(map[string]string{"cmd": "login", "name": "webby", "token": jwtSign(t, jwt.SigningMethodHS256, []byte(hmacKey), claims("someone-else", time.Minute))})
	if m := w.Next(); m.S("code") != msgserver.CodeAuthFailed {
		t.Fatalf("login with another name's token: %v", m)
	}
	w.LoginWithToken("webby", jwtSign(t, jwt.SigningMethodHS256, []byte(hmacKey), claims("webby", time.Minute)))

	c := tr.dial(t, tr.b)
	c.LoginWithToken("telly", jwtSign(t, jwt.SigningMethodHS256, []byte(hmacKey), claims("telly", time.Minute)))
	w.Chat("telly", "over wss")
	c.Expect(map[string]any{"event": "chat", "from": "webby", "content": "over wss"})
	c.Chat("webby", "over TLS")
	w.Expect(map[string]any{"event": "chat", "from": "telly", "content": "over TLS"})

	// Plain HTTP to the TLS web port gets no page.
	if resp, err := http.Get("http://" + web + "/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("the TLS web port served the page over plain HTTP")
		}
	}
}

// An idle WebSocket session parks (no reader goroutine) like a TCP one:
// messages reach it, it wakes when its client speaks and parks again, and
// the idle timeout closes it while parked, with the closing event and a
// close frame that says why.
func TestWebSocketParks(t *testing.T) {
	tr := startTier(t, func(c *msgserver.Config) {
		parkFast(c)
		c.IdleTimeout = 2 * time.Second
	})
	web := tr.a.ServeWeb(t)
	w := testenv.DialWS(t, wsURL(web), "")
	w.Login("sleepy")
	waitParked(t, tr.a, 1)

	c := login(t, tr.b, "waker")
	c.Chat("sleepy", "while you rest")
	w.Expect(map[string]any{"event": "chat", "content": "while you rest"})
	waitParked(t, tr.a, 1)
	w.Send(map[string]string{"cmd": "ping"})
	w.Expect(map[string]any{"reply": "ping", "ok": true})
	waitParked(t, tr.a, 1)

	got := w.ExpectClosed()
	if len(got) == 0 || got[len(got)-1].S("code") != msgserver.CodeIdleTimeout {
		t.Fatalf("idle parked session: got %v, want the idle_timeout closing event", got)
	}
	ce := w.Conn().(*testenv.WSConn).CloseErr()
	if websocket.CloseStatus(ce) != websocket.StatusNormalClosure || !strings.Contains(ce.Error(), msgserver.CodeIdleTimeout) {
		t.Fatalf("close frame: %v, want 1000 idle_timeout", ce)
	}
	waitParked(t, tr.a, 0)
}
