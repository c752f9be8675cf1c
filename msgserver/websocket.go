package msgserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// The client protocol over WebSocket: one JSON object per text message, in
// each direction. A WebSocket connection is made to look like the line
// connection a session reads (wsConn): each text message it receives is
// one line, and each line the session writes goes out as one text message.
// So a browser's session is the same session as a TCP client's, under the
// same code: replies, events, error codes, the request rate, the line and
// login timeouts, the slow-consumer cut, and whatever the protocol gains
// later, with no change here.
//
// What differs is below the session: frames are read by a goroutine of the
// WebSocket library's connection (pump) and handed over one message at a
// time, so the session's read deadlines (which wake it for timeouts and
// closes) never break the WebSocket; the writes go through the session
// queue's writer goroutine, as under TLS. An idle WebSocket session parks
// as a TCP one does, giving up its reader goroutine and read buffer, but
// not in the poller (the library reads from a buffer of its own, which the
// poller cannot see): the pump starts a reader when the next message comes
// (waitMessage). The pump's own goroutine stays. The README gives the idle
// cost measured.

// wsReadLimitLines is how many MaxLines a message may have before the
// library closes the connection (1009, message too big) rather than the
// session answering line_too_long: that much is read and thrown away.
const wsReadLimitLines = 16

// wsConn is a WebSocket connection seen as a net.Conn carrying lines.
type wsConn struct {
	c      *websocket.Conn
	raw    *webConn // the TCP connection (under TLS, if any): closing it aborts everything
	web    *webServer
	local  net.Addr
	remote net.Addr
	ctx    context.Context // ends when the connection is closed
	cancel context.CancelFunc

	maxLine int
	msgs    chan []byte // from the pump: one message, ending in '\n'
	errMu   sync.Mutex
	readErr error // why the pump ended; set before msgs closes

	cur []byte // the rest of the message the session is reading
	rd  deadline

	wmu     sync.Mutex
	wdMu    sync.Mutex
	wd      time.Time
	partial []byte // a line written in part: the rest comes with the next Write

	// A parked session's wake-up (waitMessage); ready is set while the
	// pump holds a message the reader has not taken, or has ended.
	wakeMu sync.Mutex
	wake   func()
	ready  bool

	closeOnce sync.Once
	statusMu  sync.Mutex
	status    websocket.StatusCode
	reason    string
}

func newWSConn(web *webServer, c *websocket.Conn, raw *webConn, remote net.Addr, maxLine int) *wsConn {
	ctx, cancel := context.WithCancel(context.Background())
	w := &wsConn{
		c: c, raw: raw, web: web,
		local: raw.LocalAddr(), remote: remote,
		ctx: ctx, cancel: cancel,
		maxLine: maxLine,
		msgs:    make(chan []byte),
		rd:      newDeadline(),
		status:  websocket.StatusNormalClosure,
	}
	c.SetReadLimit(int64(wsReadLimitLines * maxLine))
	go w.pump()
	return w
}

// pump reads messages and hands each to the session's reader, one at a
// time: it reads the next only when the session has taken this one, so a
// client that floods waits on TCP like a line client. A message longer than
// MaxLine is handed over cut just past the limit (the session answers
// line_too_long, as for a long line); a binary message ends the connection
// (1003, unsupported data).
func (w *wsConn) pump() {
	defer func() {
		close(w.msgs)
		w.wakeReader(true)
	}()
	for {
		// No context: a cancellable one costs the library a registration
		// per message. Closing the connection ends the read.
		typ, r, err := w.c.Reader(context.Background())
		if err != nil {
			switch websocket.CloseStatus(err) {
			case websocket.StatusNormalClosure, websocket.StatusGoingAway, websocket.StatusNoStatusRcvd:
				err = io.EOF
			}
			w.setReadErr(err)
			return
		}
		if typ != websocket.MessageText {
			w.setStatus(websocket.StatusUnsupportedData, "binary messages are not supported: send one JSON object per text message")
			w.setReadErr(errors.New("binary message"))
			_ = w.Close()
			return
		}
		msg, err := readMessage(r, w.maxLine+1)
		if err != nil {
			w.setReadErr(err)
			return
		}
		w.wakeReader(true)
		select {
		case w.msgs <- msg:
			w.wakeReader(false)
		case <-w.ctx.Done():
			w.setReadErr(net.ErrClosed)
			return
		}
	}
}

// wakeReader notes whether a message (or the end) is waiting for the
// reader, and starts the parked session's reader if there is one.
func (w *wsConn) wakeReader(ready bool) {
	w.wakeMu.Lock()
	w.ready = ready
	fn := w.wake
	if ready {
		w.wake = nil
	} else {
		fn = nil
	}
	if fn != nil {
		w.web.parked.Add(-1)
	}
	w.wakeMu.Unlock()
	if fn != nil {
		go fn()
	}
}

// errReady refuses a park: a message is already waiting.
var errReady = errors.New("a message is waiting")

// waitMessage is the poller's Wait for a WebSocket session: fn runs on a
// new goroutine when the next message comes or the connection ends;
// cancelWait removes the wait.
func (w *wsConn) waitMessage(fn func()) error {
	w.wakeMu.Lock()
	defer w.wakeMu.Unlock()
	if w.ready {
		return errReady
	}
	w.wake = fn
	w.web.parked.Add(1)
	return nil
}

// cancelWait removes the wait of waitMessage and reports whether it did;
// false means its function has been or is being started.
func (w *wsConn) cancelWait() bool {
	w.wakeMu.Lock()
	defer w.wakeMu.Unlock()
	if w.wake == nil {
		return false
	}
	w.wake = nil
	w.web.parked.Add(-1)
	return true
}

// readMessage reads a message: up to limit bytes of it, the rest read and
// dropped, as one line (newline-terminated, with no newline inside).
func readMessage(r io.Reader, limit int) ([]byte, error) {
	var b bytes.Buffer
	if _, err := io.Copy(&b, io.LimitReader(r, int64(limit))); err != nil {
		return nil, err
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, err
	}
	return append(oneLine(b.Bytes()), '\n'), nil
}

// oneLine turns a message into one line: a line break between JSON tokens
// is whitespace (a pretty-printed object is fine); one inside a string,
// which JSON does not allow, ends the message there, so that it stays
// invalid (bad_json, as the TCP port answers the same bytes).
func oneLine(m []byte) []byte {
	if !bytes.ContainsAny(m, "\r\n") {
		return m
	}
	inString, escaped := false, false
	for i, c := range m {
		switch {
		case escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		case c == '\n' || c == '\r':
			if inString {
				return m[:i]
			}
			m[i] = ' '
		}
	}
	return m
}

func (w *wsConn) setReadErr(err error) {
	w.errMu.Lock()
	if w.readErr == nil {
		w.readErr = err
	}
	w.errMu.Unlock()
}

// Read returns the messages as lines, each ending in '\n'.
func (w *wsConn) Read(p []byte) (int, error) {
	if len(w.cur) == 0 {
		expired := w.rd.wait()
		select {
		case <-expired:
			return 0, os.ErrDeadlineExceeded
		default:
		}
		select {
		case m, ok := <-w.msgs:
			if !ok {
				w.errMu.Lock()
				defer w.errMu.Unlock()
				return 0, w.readErr
			}
			w.cur = m
		case <-expired:
			return 0, os.ErrDeadlineExceeded
		}
	}
	n := copy(p, w.cur)
	w.cur = w.cur[n:]
	return n, nil
}

// Write sends each complete line in p as one text message.
func (w *wsConn) Write(p []byte) (int, error) {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	w.wdMu.Lock()
	wd := w.wd
	w.wdMu.Unlock()
	data := p
	if len(w.partial) > 0 {
		data = append(w.partial, p...)
		w.partial = nil
	}
	// The messages go out in one write (webConn.cork), by the deadline;
	// the library's own writes do not wait, so they need no context.
	ctx := context.Background()
	w.raw.cork()
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		if i > 0 {
			if err := w.c.Write(ctx, websocket.MessageText, data[:i]); err != nil {
				_ = w.raw.uncork(wd)
				if errors.Is(err, context.DeadlineExceeded) {
					err = os.ErrDeadlineExceeded
				}
				return 0, fmt.Errorf("websocket write: %w", err)
			}
		}
		data = data[i+1:]
	}
	if err := w.raw.uncork(wd); err != nil {
		return 0, fmt.Errorf("websocket write: %w", err)
	}
	if len(data) > 0 {
		w.partial = append([]byte(nil), data...)
	}
	return len(p), nil
}

// setStatus sets the close frame's status and reason; the first one set wins.
func (w *wsConn) setStatus(code websocket.StatusCode, reason string) {
	w.statusMu.Lock()
	if w.status == websocket.StatusNormalClosure && w.reason == "" {
		w.status, w.reason = code, reason
	}
	w.statusMu.Unlock()
}

// closeCode is the session's close reason as a WebSocket close frame: its
// protocol code as the frame's reason text, and a status that says whether
// to come back (1001 going away, 1013 try again later) or what went wrong
// (1008 policy violation).
func (w *wsConn) closeCode(code string) {
	if code == "" {
		return
	}
	status := websocket.StatusPolicyViolation
	switch code {
	case CodeShuttingDown:
		status = websocket.StatusGoingAway
	case CodeServerFull, CodeTooManyConns:
		status = websocket.StatusTryAgainLater
	case CodeKicked, CodeIdleTimeout:
		status = websocket.StatusNormalClosure
	}
	w.setStatus(status, code)
}

// Close ends the connection with a close frame, on a goroutine of its own
// so that no caller waits on a client: the close handshake is given
// lingerTime, then the TCP connection is closed whatever the client does.
func (w *wsConn) Close() error {
	w.closeOnce.Do(func() {
		w.statusMu.Lock()
		status, reason := w.status, w.reason
		w.statusMu.Unlock()
		if !w.web.track() {
			w.cancel() // the server is closing: no handshake
			_ = w.raw.Close()
			_ = w.c.CloseNow()
			return
		}
		go func() {
			defer w.web.untrack()
			// Not w.cancel first: the library drops a connection whose
			// read is cancelled, and the close frame would not go out.
			t := time.AfterFunc(lingerTime, func() { _ = w.raw.Close() })
			_ = w.c.Close(status, reason)
			t.Stop()
			w.cancel()
			_ = w.raw.Close()
		}()
	})
	return nil
}

func (w *wsConn) LocalAddr() net.Addr  { return w.local }
func (w *wsConn) RemoteAddr() net.Addr { return w.remote }

func (w *wsConn) SetDeadline(t time.Time) error {
	_ = w.SetReadDeadline(t)
	return w.SetWriteDeadline(t)
}

func (w *wsConn) SetReadDeadline(t time.Time) error {
	w.rd.set(t)
	return nil
}

func (w *wsConn) SetWriteDeadline(t time.Time) error {
	w.wdMu.Lock()
	w.wd = t
	w.wdMu.Unlock()
	return nil
}

// deadline is a read deadline as net.Pipe keeps one: a channel closed when
// it passes, reused while it has not.
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	cancel chan struct{}
}

func newDeadline() deadline { return deadline{cancel: make(chan struct{})} }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the timer fired: wait for it to close the channel
	}
	d.timer = nil
	closed := isClosed(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		c := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(c) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
