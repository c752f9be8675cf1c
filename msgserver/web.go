package msgserver

import (
	"context"
	"crypto/tls"
	"embed"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/chatrelay/chatrelay/internal/netx"
)

// The web port (ServeWeb): GET / is the chat page, GET /ws the client
// protocol over WebSocket (websocket.go), GET /info what the page needs to
// know of this server. It is HTTPS when the client port is TLS (the same
// certificate, reloaded the same way).
//
// The WebSocket library is github.com/coder/websocket: maintained, small,
// no dependencies, passes the Autobahn suite, and checks the Origin of an
// upgrade against the request's Host (plus Config.AllowedOrigins) out of
// the box, which is what stops cross-site WebSocket hijacking. gobwas/ws
// would let idle sessions park in the poller, but leaves framing, control
// frames and the close handshake to the caller, which is the hand-written
// code this is meant to avoid; the README gives the idle cost measured.
//
// What a stranger can cost before a session exists: every TCP connection to
// the web port counts against its source address's connection cap from
// accept on (webListener), so one address cannot hold more pending HTTP
// connections than sessions; an HTTP request must bring its headers within
// HandshakeTimeout (and, over TLS, finish its handshake by then); headers
// are capped at 8 KiB. Once upgraded, the connection is admitted like a TCP
// client (Server.admit): the same connection limits, the same refusals.

//go:embed web
var webFiles embed.FS

// webIdleTimeout closes a keep-alive HTTP connection (the page's, not a
// WebSocket) that sends no new request.
const webIdleTimeout = 60 * time.Second

// webServer is the web port's state in a Server.
type webServer struct {
	mu      sync.Mutex
	closed  bool
	servers map[*http.Server]struct{}
	closers sync.WaitGroup // WebSocket close handshakes under way (wsConn.Close)
	parked  atomic.Int64   // WebSocket sessions parked (wsConn.waitMessage)
}

// track counts a close handshake in; false once the server is closing.
func (w *webServer) track() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	w.closers.Add(1)
	return true
}

func (w *webServer) untrack() { w.closers.Done() }

func (w *webServer) add(hs *http.Server) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	if w.servers == nil {
		w.servers = make(map[*http.Server]struct{})
	}
	w.servers[hs] = struct{}{}
	return true
}

// close stops the HTTP servers (and their keep-alive connections) and waits
// for the close handshakes under way, each bounded by lingerTime.
func (w *webServer) close() {
	w.mu.Lock()
	w.closed = true
	servers := w.servers
	w.servers = nil
	w.mu.Unlock()
	for hs := range servers {
		_ = hs.Close()
	}
	w.closers.Wait()
}

// ServeWeb serves the chat page and the WebSocket endpoint on ln until
// Shutdown or Close: HTTPS when the client port serves TLS.
func (s *Server) ServeWeb(ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.webHandler(),
		ReadHeaderTimeout: s.cfg.HandshakeTimeout,
		IdleTimeout:       webIdleTimeout,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.With("port", "web").Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, webConnKey{}, c)
		},
		// No HTTP/2: a WebSocket upgrade takes the HTTP/1.1 connection.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	s.mu.Lock()
	if s.draining || s.ctx.Err() != nil || !s.web.add(hs) {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	wl := &webListener{Listener: ln, s: s}
	s.log.Info("serving the chat page and WebSocket clients", "addr", ln.Addr().String(), "tls", s.cfg.TLS != nil)
	var err error
	if s.cfg.TLS != nil {
		hs.TLSConfig = s.cfg.TLS.Clone()
		hs.TLSConfig.NextProtos = []string{"http/1.1"}
		err = hs.ServeTLS(wl, "", "")
	} else {
		err = hs.Serve(wl)
	}
	s.mu.Lock()
	stopping := s.draining || s.ctx.Err() != nil
	s.mu.Unlock()
	if stopping || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (s *Server) webHandler() http.Handler {
	static, err := fs.Sub(webFiles, "web")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServerFS(static)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", s.serveWebSocket)
	mux.HandleFunc("GET /info", s.serveWebInfo)
	mux.Handle("GET /", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	}))
	return mux
}

// webInfo is what the page asks the server before it logs in.
type webInfo struct {
	Server     string `json:"server"`
	Auth       bool   `json:"auth"`
	MaxContent int    `json:"max_content"`
	MaxName    int    `json:"max_name"`
}

func (s *Server) serveWebInfo(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(webInfo{Server: s.cfg.ID, Auth: s.auth != nil, MaxContent: s.cfg.MaxContent, MaxName: s.cfg.MaxNameLen})
}

// serveWebSocket upgrades GET /ws and admits the connection as a client
// session. A browser's Origin must be the page's own (the request's Host)
// or one of Config.AllowedOrigins, else the upgrade is refused with 403; a
// request with no Origin (not a browser) is accepted.
func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	wc := webConnOf(r)
	if wc == nil {
		http.Error(w, "not served here", http.StatusInternalServerError)
		return
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		OriginPatterns: s.cfg.AllowedOrigins,
		// No permessage-deflate: chat lines are short, and a compressor
		// per connection would cost more memory than the session.
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		// Accept has answered (403 for a foreign Origin, 400 for a bad upgrade).
		s.log.Debug("WebSocket upgrade refused", "remote", r.RemoteAddr, "origin", r.Header.Get("Origin"), "err", err)
		return
	}
	_ = wc.SetDeadline(time.Time{}) // the HTTP server's header deadline is left on a hijacked connection
	s.admit(newWSConn(&s.web, c, wc, wc.RemoteAddr(), s.cfg.MaxLine), wc.take())
}

type webConnKey struct{}

func webConnOf(r *http.Request) *webConn {
	c, _ := r.Context().Value(webConnKey{}).(net.Conn)
	wc, _ := netConn(c).(*webConn)
	return wc
}

// webListener counts every connection against its source address's cap
// from accept on, and closes one over the cap at once.
type webListener struct {
	net.Listener
	s *Server
}

func (l *webListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip, ok := l.s.ips.open(c.RemoteAddr())
		if !ok {
			l.s.m.disconnect(CodeTooManyConns)
			if l.s.cfg.TLS == nil {
				// A new socket takes a short answer at once; over TLS there
				// is no TLS to answer in before a handshake.
				_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
				_, _ = io.WriteString(c, tooManyConnsResponse)
			}
			_ = netx.CloseNow(c)
			continue
		}
		return &webConn{Conn: c, ips: l.s.ips, ip: ip}, nil
	}
}

const tooManyConnsResponse = "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 46\r\n\r\ntoo many connections from your address (429)\r\n"

// webConn is a web port connection holding its place in the per-address
// count until it closes, or until a WebSocket session takes it over.
//
// It can also hold writes back (cork) and make them in one (uncork): the
// WebSocket library flushes each message to the connection, and a session
// writing a batch of lines (wsConn.Write) would otherwise make a syscall
// (and, under TLS, a record) per line. Writes are serialised by wmu, so
// under TLS the records go out in order whoever writes them.
type webConn struct {
	net.Conn
	ips *ipLimits
	mu  sync.Mutex
	ip  *ipSource

	wmu    sync.Mutex
	corked bool
	held   []byte
}

func (c *webConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.corked {
		c.held = append(c.held, p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *webConn) cork() {
	c.wmu.Lock()
	c.corked = true
	c.wmu.Unlock()
}

// uncork writes what was held back, by the deadline given (zero: none).
func (c *webConn) uncork(deadline time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.corked = false
	held := c.held
	c.held = c.held[:0]
	if cap(c.held) > 64<<10 {
		c.held = nil // a burst's buffer is not kept by an idle session
	}
	if len(held) == 0 {
		return nil
	}
	if !deadline.IsZero() {
		_ = c.Conn.SetWriteDeadline(deadline)
		defer func() { _ = c.Conn.SetWriteDeadline(time.Time{}) }()
	}
	_, err := c.Conn.Write(held)
	return err
}

// take hands the connection's place in the count to its session.
func (c *webConn) take() *ipSource {
	c.mu.Lock()
	defer c.mu.Unlock()
	ip := c.ip
	c.ip = nil
	return ip
}

func (c *webConn) Close() error {
	c.ips.close(c.take())
	return c.Conn.Close()
}
