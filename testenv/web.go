package testenv

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// ServeWeb serves the server's web port (the chat page and /ws) on a free
// port of 127.0.0.1 and returns its address; it stops with the server.
func (s *InServer) ServeWeb(t testing.TB) string {
	t.Helper()
	return s.ServeWebAt(t, "127.0.0.1:0")
}

// ServeWebAt is ServeWeb on addr: the address of a server stopped
// earlier, say, for its clients to reconnect to (retried for 5s while the
// port is released).
func (s *InServer) ServeWebAt(t testing.TB, addr string) string {
	t.Helper()
	var ln net.Listener
	Eventually(t, 5*time.Second, "listen on "+addr, func() bool {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Server.ServeWeb(ln); err != nil {
			t.Errorf("web port: %v", err)
		}
	}()
	t.Cleanup(func() {
		s.Close()
		<-done
	})
	return ln.Addr().String()
}

// DialWS opens a WebSocket client session at url (ws://host/ws), sending
// origin as its Origin header when it is not empty. The Client speaks the
// protocol as over TCP: each text message is one line. WS (Client.Conn)
// gives the WebSocket itself, for frames a line client cannot send.
func DialWS(t testing.TB, url, origin string) *Client {
	t.Helper()
	c, err := DialWSErr(url, origin, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	return newClient(t, c)
}

// DialWSS is DialWS over TLS (a wss:// url), trusting tc's roots.
func DialWSS(t testing.TB, url string, tc *tls.Config) *Client {
	t.Helper()
	c, err := DialWSErr(url, "", &http.Client{Transport: &http.Transport{TLSClientConfig: tc}})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	return newClient(t, c)
}

// DialWSErr is DialWS that returns the error (and the HTTP response, if
// one came) instead of failing.
func DialWSErr(url, origin string, hc *http.Client) (*WSConn, error) {
	h := http.Header{}
	if origin != "" {
		h.Set("Origin", origin)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h, HTTPClient: hc})
	if err != nil {
		if resp != nil {
			return nil, &DialError{Status: resp.StatusCode, Err: err}
		}
		return nil, err
	}
	c.SetReadLimit(1 << 20)
	w := &WSConn{C: c, msgs: make(chan []byte, 64), stop: make(chan struct{})}
	go w.pump()
	return w, nil
}

// DialError is a refused WebSocket upgrade.
type DialError struct {
	Status int
	Err    error
}

func (e *DialError) Error() string { return e.Err.Error() }

// WSConn is a WebSocket client seen as a connection of lines: Read gives
// each text message with a newline, Write sends each line as a message.
type WSConn struct {
	C    *websocket.Conn
	msgs chan []byte
	stop chan struct{}
	once sync.Once

	mu       sync.Mutex
	err      error // why reading ended: a *websocket.CloseError when the server closed
	deadline time.Time
	cur      []byte
}

func (w *WSConn) pump() {
	defer close(w.msgs)
	for {
		typ, b, err := w.C.Read(context.Background())
		if err != nil {
			w.mu.Lock()
			w.err = err
			w.mu.Unlock()
			return
		}
		if typ != websocket.MessageText {
			continue
		}
		select {
		case w.msgs <- append(b, '\n'):
		case <-w.stop:
			return
		}
	}
}

// CloseErr is why the connection ended, once Read has returned an error.
func (w *WSConn) CloseErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *WSConn) Read(p []byte) (int, error) {
	if len(w.cur) == 0 {
		w.mu.Lock()
		d := w.deadline
		w.mu.Unlock()
		var timeout <-chan time.Time
		if !d.IsZero() {
			t := time.NewTimer(time.Until(d))
			defer t.Stop()
			timeout = t.C
		}
		select {
		case m, ok := <-w.msgs:
			if !ok {
				return 0, io.EOF
			}
			w.cur = m
		case <-timeout:
			return 0, os.ErrDeadlineExceeded
		}
	}
	n := copy(p, w.cur)
	w.cur = w.cur[n:]
	return n, nil
}

func (w *WSConn) Write(p []byte) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := 0
	for i, c := range p {
		if c == '\n' {
			if err := w.C.Write(ctx, websocket.MessageText, p[start:i]); err != nil {
				return start, err
			}
			start = i + 1
		}
	}
	if start < len(p) {
		return start, errors.New("WSConn writes whole lines only")
	}
	return len(p), nil
}

func (w *WSConn) Close() error {
	w.once.Do(func() { close(w.stop) })
	return w.C.CloseNow()
}

func (w *WSConn) LocalAddr() net.Addr  { return wsAddr{} }
func (w *WSConn) RemoteAddr() net.Addr { return wsAddr{} }
func (w *WSConn) SetDeadline(t time.Time) error {
	return w.SetReadDeadline(t)
}
func (w *WSConn) SetReadDeadline(t time.Time) error {
	w.mu.Lock()
	w.deadline = t
	w.mu.Unlock()
	return nil
}
func (w *WSConn) SetWriteDeadline(time.Time) error { return nil }

type wsAddr struct{}

func (wsAddr) Network() string { return "websocket" }
func (wsAddr) String() string  { return "websocket" }
