package e2e

import (
	"errors"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/chatrelay/chatrelay/testenv"
)

// The msgserver binary with --http-listen: a browser-style WebSocket user
// on one server chats with a telnet-style user on the other; a page from
// a site not in --allowed-origins is refused, a listed one is not; on
// SIGTERM the WebSocket user is told the server is going away (closing
// event, then close frame 1001).
func TestWebPortOfTheBinary(t *testing.T) {
	s := newSystem(t)
	s.startRelay()
	_, p1 := s.startServer("msg-1", "--http-listen", "127.0.0.1:0", "--allowed-origins", "https://chat.example.com")
	web := p1.WaitAddr("serving the chat page", 10*time.Second)
	addr2, _ := s.startServer("msg-2")

	resp, err := http.Get("http://" + web + "/")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %v %v", resp, err)
	}
	resp.Body.Close()

	url := "ws://" + web + "/ws"
	var de *testenv.DialError
	if _, err := testenv.DialWSErr(url, "https://evil.example.org", nil); !errors.As(err, &de) || de.Status != http.StatusForbidden {
		t.Fatalf("foreign origin: %v, want 403", err)
	}
	w := testenv.DialWS(t, url, "https://chat.example.com")
	w.Login("zhima201")
	c := testenv.Dial(t, addr2)
	c.Login("zhima202")
	w.Chat("zhima202", "from a browser")
	c.Expect(map[string]any{"event": "chat", "from": "zhima201", "content": "from a browser"})
	c.Chat("zhima201", "from telnet")
	w.Expect(map[string]any{"event": "chat", "from": "zhima202", "content": "from telnet"})

	p1.Signal(syscall.SIGTERM)
	got := w.ExpectClosed()
	if len(got) == 0 || got[len(got)-1].S("code") != "shutting_down" {
		t.Fatalf("on SIGTERM the WebSocket user got %v, want the shutting_down closing event", got)
	}
	if st := websocket.CloseStatus(w.Conn().(*testenv.WSConn).CloseErr()); st != websocket.StatusGoingAway {
		t.Fatalf("close status %v, want 1001 going away", st)
	}
}
