package msgserver

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/chatrelay/chatrelay/internal/netx"
	"github.com/chatrelay/chatrelay/internal/sendq"
)

// maxConsecutiveErrors is how many bad requests in a row a client may send
// before it is disconnected: a few typos are fine, a stream of junk is not.
const maxConsecutiveErrors = 20

// session is one client connection. Its reader goroutine handles requests
// in order; everything it sends goes through q, written by whoever queues
// when the socket is free. A session silent for ParkIdleAfter has no
// goroutine at all: it waits in the server's poller (park.go) and gets a
// new reader when the client sends again.
type session struct {
	srv    *Server
	conn   net.Conn
	raw    syscall.RawConn // the TCP socket (under TLS too), for the poller; nil without one
	id     string
	remote string
	q      *sendq.Queue

	// name is set by login and read only by the reader goroutine (the
	// poller hands the session from one reader to the next); other
	// goroutines find sessions through Server.sessions.
	name string
	// badInARow counts bad requests in a row, across parks; reader only.
	badInARow int

	closeOnce sync.Once
	closed    atomic.Bool // set by the first close (or a failed write); no channel: 96 bytes less per session

	// While parked: how to take the session back from the poller, and the
	// timer that closes it at the idle timeout.
	pmu        sync.Mutex
	cancelWait func() bool
	idleTimer  *time.Timer
}

func newSession(srv *Server, conn net.Conn) *session {
	s := &session{
		srv:    srv,
		conn:   conn,
		id:     randomHex(8),
		remote: conn.RemoteAddr().String(),
	}
	// Under TLS the poller waits on the TCP socket too: a TLS read that
	// times out has no plaintext buffered (crypto/tls reads the socket only
	// when it has none, and a read timeout leaves the connection usable),
	// so the socket's readability is what the next read waits for.
	if sc, ok := netConn(conn).(syscall.Conn); ok && srv.poller != nil {
		s.raw, _ = sc.SyscallConn()
	}
	s.q = sendq.NewWriter(srv.cfg.SessionQueueBytes, conn, srv.cfg.WriteTimeout) // no writer goroutine while idle
	// A failed write must take the session out of the poller first.
	s.q.SetCloser(func() { s.close(closeWriteFailed) })
	return s
}

// queue lets fn append one line for the client. With a batch, the write
// waits for batch.Flush (the relay link reader flushes once per read); without,
// it is made at once. A client too slow to take it is cut.
func (s *session) queue(batch *sendq.Batch, fn func([]byte) []byte) {
	if err := s.q.AppendTo(batch, fn); errors.Is(err, sendq.ErrFull) {
		s.close(closeSlowConsumer)
	}
}

// send queues one line (ending in a newline) for the client.
func (s *session) send(line []byte) {
	s.queue(nil, func(b []byte) []byte { return append(b, line...) })
}

func (s *session) sendReply(batch *sendq.Batch, r reply) { s.queue(batch, r.appendLine) }

func (s *session) sendEvent(batch *sendq.Batch, e *chatEvent) { s.queue(batch, e.appendLine) }

// closeReason is why a session closes. Every close goes through
// session.close, and closeRules says, for each reason, what the client is
// told, whether what is queued for it still goes out, and what is logged.
type closeReason uint8

const (
	closeClientGone      closeReason = iota // the reader ended: the client hung up, or reading failed
	closeWriteFailed                        // a write to the client failed (reset, or the write timeout)
	closeTooManyErrors                      // maxConsecutiveErrors bad requests in a row
	closeIdleTimeout                        // no request for IdleTimeout
	closeKickedLocal                        // the user logged in again on this server
	closeKickedRemote                       // the user logged in on another server (a Kick, or presence says so)
	closeShutdown                           // Server.Shutdown tells every client before it stops
	closeSlowConsumer                       // the client does not read: SessionQueueBytes are queued
	closeServerClosed                       // Server.Close stops everything at once
	closeRefusedFull                        // refused at accept: MaxSessions clients are connected
	closeRefusedDraining                    // refused at accept: the server is shutting down
)

// closeRule is what a close does for one reason.
type closeRule struct {
	name string // the reason in logs (String)
	// code is the closing line's code and the label it is counted under in
	// msgserver_disconnects_total; "" for neither.
	code string
	// event and why (its "reason" text) make the closing line; no event,
	// no line.
	event string
	why   func(cfg *Config) string
	// drop closes the connection at once: what is still queued is lost,
	// and the server does not linger for the client to read a last line.
	// Otherwise the session's last goroutine (finish) writes out what is
	// queued, then lingers.
	drop bool
	// msg, if set, is logged at level when the close happens.
	msg   string
	level slog.Level
}

// closeRules is indexed by closeReason. The lines and codes are the
// protocol (docs/protocol.md): they must not change.
var closeRules = [...]closeRule{
	closeClientGone:  {name: "client_gone"},
	closeWriteFailed: {name: "write_failed", drop: true},
	closeTooManyErrors: {
		name: "too_many_errors", code: CodeTooManyErrors,
		event: "closing", why: text("too many bad requests in a row"),
		msg: "disconnecting client", level: slog.LevelDebug,
	},
	closeIdleTimeout: {
		name: "idle_timeout", code: CodeIdleTimeout,
		event: "closing", why: func(cfg *Config) string { return "no request for " + cfg.IdleTimeout.String() },
		msg: "disconnecting client", level: slog.LevelDebug,
	},
	closeKickedLocal: {
		name: "kicked_local", code: CodeKicked,
		event: "kicked", why: text("logged in again from another connection"),
		msg: "disconnecting client", level: slog.LevelDebug,
	},
	closeKickedRemote: {
		name: "kicked_remote", code: CodeKicked,
		event: "kicked", why: text("logged in again on another server"),
		msg: "disconnecting client", level: slog.LevelDebug,
	},
	closeShutdown: {
		name: "shutdown", code: CodeShuttingDown,
		event: "closing", why: text("server shutting down; reconnect to another server"),
		msg: "disconnecting client", level: slog.LevelDebug,
	},
	closeSlowConsumer: {
		name: "slow_consumer", code: CodeSlowConsumer, drop: true,
		msg: "client too slow, disconnecting", level: slog.LevelWarn,
	},
	closeServerClosed: {name: "server_closed", drop: true},
	// A refused connection has no reader: its line is written at once (a
	// new socket takes it whole; over TLS, by the queue's writer) and the
	// connection closed once it is out.
	closeRefusedFull: {
		name: "refused_full", code: CodeServerFull, drop: true,
		event: "closing", why: func(cfg *Config) string {
			return fmt.Sprintf("server is at its limit of %d connections", cfg.MaxSessions)
		},
		msg: "refusing client", level: slog.LevelDebug,
	},
	closeRefusedDraining: {
		name: "refused_draining", code: CodeShuttingDown, drop: true,
		event: "closing", why: text("server shutting down"),
		msg: "refusing client", level: slog.LevelDebug,
	},
}

// text is a closing line's fixed reason.
func text(s string) func(*Config) string { return func(*Config) string { return s } }

func (r closeReason) String() string {
	if int(r) < len(closeRules) {
		return closeRules[r].name
	}
	return "closeReason(" + strconv.Itoa(int(r)) + ")"
}

// close closes the session for reason r; the first close decides, later
// ones do nothing. The closing line, if r has one, is queued after what is
// already queued. Unless r drops the connection, the reader is woken (or,
// if the session is parked, a goroutine started) to finish the session:
// write out what is queued, then linger.
//
// closeWriteFailed is the exception: it is what a failed write calls (the
// queue's closer), which can happen inside the first close itself (its
// closing line, or the flush at q.Close), so it does not wait for that
// close; the queue has already ended. It closes the connection, after
// taking the session out of the poller if it is parked.
func (s *session) close(r closeReason) {
	if r == closeWriteFailed {
		s.closed.Store(true)
		s.unpark(true)
		return
	}
	s.closeOnce.Do(func() {
		c := &closeRules[r]
		if c.msg != "" {
			// Not s.name: close runs on any goroutine, the name is the reader's.
			s.srv.log.Log(context.Background(), c.level, c.msg, "session", s.id, "remote", s.remote, "reason", r, "queued_bytes", s.q.Len())
		}
		if c.event != "" {
			_ = s.q.Write(appendJSONLine(nil, closingEvent{Event: c.event, Code: c.code, Reason: c.why(&s.srv.cfg)}))
		}
		s.q.Close()
		if c.code != "" {
			s.srv.m.disconnect(c.code)
		}
		s.closed.Store(true)
		if c.drop {
			if c.event != "" && !s.q.Finished() {
				// A refusal over TLS: the queue's writer goroutine has
				// the closing line (a plain socket took it already).
				go func() {
					<-s.q.Done()
					s.unpark(true)
				}()
				return
			}
			s.unpark(true) // out of the poller, if parked, then the connection is closed
			return
		}
		_ = s.conn.SetReadDeadline(time.Now()) // wake the reader
		s.unpark(false)                        // or, if parked, finish it
	})
}

func (s *session) isClosed() bool { return s.closed.Load() }

// run serves the connection until it ends or parks. It is kept tiny, and
// the cleanup out of it: a session that cannot park waits in a read at the
// bottom of this call chain, and the runtime shrinks an idle goroutine's
// stack only when the frames in use are under a quarter of it.
func (s *session) run() {
	if s.readLoop() {
		return // parked: the poller or a closer runs it again
	}
	s.finish()
}

// finish ends the session: it runs once, on the last goroutine the
// session has.
//
//go:noinline
func (s *session) finish() {
	defer s.srv.wg.Done()
	s.srv.endSession(s)
	s.close(closeClientGone) // unless something closed it first
	<-s.q.Done()             // everything queued is written (bounded by the write timeout)
	if err := s.q.Err(); err != nil {
		s.srv.log.Debug("client write failed", "session", s.id, "remote", s.remote, "err", err)
		_ = netx.CloseNow(s.conn)
		return
	}
	s.lingerClose()
}

// lingerTime bounds how long a closing connection waits for the client to
// hang up after the server's last line.
const lingerTime = 500 * time.Millisecond

// lingerClose closes so that the last lines reach the client. Closing a
// socket with unread input makes the kernel send a reset, and a reset can
// destroy what the client has not read yet: typically the line saying why
// it was disconnected (a client that sends junk is still sending). So the
// server ends its side first, then discards input until the client hangs
// up, for at most lingerTime. Over TLS the server's end is a close_notify
// alert, then the TCP half-close, and the input discarded is the raw bytes
// under the TLS layer.
func (s *session) lingerClose() {
	if tlsConn, ok := s.conn.(*tls.Conn); ok {
		_ = tlsConn.CloseWrite() // bounded: crypto/tls gives the alert 5 s
	}
	tc, ok := netConn(s.conn).(*net.TCPConn)
	if !ok || tc.CloseWrite() != nil {
		_ = netx.CloseNow(s.conn)
		return
	}
	_ = tc.SetReadDeadline(time.Now().Add(lingerTime))
	var buf [512]byte
	for n := 0; n < 1<<20; {
		m, err := tc.Read(buf[:])
		if err != nil {
			break
		}
		n += m
	}
	tc.Close()
}

// readBufferSize is the per-session read buffer. Requests are short; a
// longer line (up to MaxLine) is gathered in a temporary slice. The buffer
// is lent by a pool while the session has a reader, so a parked session
// holds none.
const readBufferSize = 512

var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufferSize) }}

// readLoop reads and handles requests until the connection ends (false)
// or the session has parked (true).
func (s *session) readLoop() (parked bool) {
	cfg := &s.srv.cfg
	br := readers.Get().(*bufio.Reader)
	br.Reset(s.conn)
	defer func() {
		br.Reset(nil)
		readers.Put(br)
	}()
	canPark := s.raw != nil && cfg.ParkIdleAfter > 0 && cfg.ParkIdleAfter < cfg.IdleTimeout
	var long []byte // a line longer than the buffer, gathered so far
	tooLong := false
	var deadlineSet time.Time
	lastInput := time.Now()
	for {
		// Wait for input until the idle timeout, or until it is time to
		// park. Moving the deadline costs a timer update: at most once a
		// second.
		if now := time.Now(); now.Sub(deadlineSet) > time.Second {
			deadlineSet = now
			d := lastInput.Add(cfg.IdleTimeout)
			if p := now.Add(cfg.ParkIdleAfter); canPark && p.Before(d) {
				d = p
			}
			_ = s.conn.SetReadDeadline(d)
			if s.isClosed() {
				return false // close's wake-up deadline was just overwritten
			}
		}
		frag, err := br.ReadSlice('\n')
		if err != nil && isTimeout(err) && !s.isClosed() {
			if idle := time.Since(lastInput); idle < cfg.IdleTimeout {
				// Silent, but not yet for the idle timeout: park, or wait on.
				if canPark && len(frag) == 0 && long == nil && !tooLong && s.park(cfg.IdleTimeout-idle) {
					return true
				}
				long, tooLong = gather(long, frag, tooLong, cfg.MaxLine) // a partial line
				deadlineSet = time.Time{}
				continue
			}
		}
		if err == nil || len(frag) > 0 {
			lastInput = time.Now()
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			long, tooLong = gather(long, frag, tooLong, cfg.MaxLine)
			continue
		}
		if err != nil && !(errors.Is(err, io.EOF) && len(frag)+len(long) > 0) {
			s.readFailed(err)
			return false
		}
		line := frag
		if long != nil {
			long = append(long, frag...)
			line = long
		}
		if len(line) > cfg.MaxLine {
			tooLong = true
		}
		if tooLong {
			s.badInARow++
			s.fail("error", "", errorf(CodeLineTooLong, "line exceeds %d bytes; it was discarded", cfg.MaxLine))
		} else if line = bytes.TrimSpace(line); len(line) > 0 {
			if cerr := s.handle(line); cerr != nil {
				s.badInARow++
			} else {
				s.badInARow = 0
			}
		}
		tooLong, long = false, nil
		if s.tooManyErrors(s.badInARow) || err != nil || s.isClosed() {
			return false // too many errors, EOF after a last line without newline, or closed
		}
	}
}

// gather adds frag to a line being gathered, or, once the line is over
// maxLine, drops it and marks it too long (the rest is discarded too).
func gather(long, frag []byte, tooLong bool, maxLine int) ([]byte, bool) {
	if tooLong || len(long)+len(frag) > maxLine {
		return nil, true
	}
	return append(long, frag...), false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (s *session) tooManyErrors(n int) bool {
	if n < maxConsecutiveErrors {
		return false
	}
	s.close(closeTooManyErrors)
	return true
}

func (s *session) readFailed(err error) {
	if s.isClosed() {
		return
	}
	if isTimeout(err) {
		s.close(closeIdleTimeout)
		return
	}
	if !errors.Is(err, io.EOF) {
		s.srv.log.Debug("client read failed", "session", s.id, "remote", s.remote, "err", err)
	}
}

// handle runs one request line and sends its reply.
func (s *session) handle(line []byte) *clientError {
	r, cerr := decodeRequest(line)
	if cerr != nil {
		cmd := r.Cmd
		if cerr.code == CodeBadJSON || cmd == "" {
			cmd = "error"
		}
		s.fail(truncate(cmd, 32), "", cerr)
		return cerr
	}
	switch r.Cmd {
	case "ping":
		s.sendReply(nil, reply{Reply: "ping", OK: true})
	case "login":
		cerr = s.srv.login(s, r)
	case "chat":
		cerr = s.srv.chat(s, r)
	case "logout":
		cerr = s.srv.logout(s)
	}
	if cerr != nil {
		s.fail(r.Cmd, r.Ref, cerr)
	}
	return cerr
}

// fail sends an error reply.
func (s *session) fail(cmd, ref string, e *clientError) {
	s.srv.m.clientError(e.code)
	s.sendReply(nil, reply{Reply: cmd, OK: false, Code: e.code, Error: e.msg, Ref: ref})
}
