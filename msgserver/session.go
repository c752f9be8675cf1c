package msgserver

import (
	"bufio"
	"bytes"
	"context"
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
	"golang.org/x/time/rate"

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
	srv  *Server
	conn net.Conn
	raw  syscall.RawConn // the TCP socket (under TLS too), for the poller; nil without one
	id   string
	q    *sendq.Queue

	// name is set by login and read only by the reader goroutine (the
	// poller hands the session from one reader to the next); other
	// goroutines find sessions through Server.sessions.
	name string
	// badInARow counts bad requests in a row, across parks; reader only.
	badInARow int32
	// loginBy is the login deadline, in whole seconds since the server
	// started (rounded up), and 0 once the session has logged in; reader
	// only (and the idle timer of a parked session).
	loginBy int32
	// reqs is the session's request bucket; reader only. A parked session
	// whose bucket is full holds none: a new one is the same.
	reqs *rate.Limiter
	// ip is the session's source address in the per-address counts; nil
	// if none counts it (an exempt network).
	ip *ipSource
	// offlineRate is the bucket offline messages from this connection
	// take from, made at the first (offline.go).
	offlineRate atomic.Pointer[rate.Limiter]
	// acks and receipts are the login's options (acks.go); set by the
	// reader at login, read by whoever delivers to the session.
	acks, receipts atomic.Bool
	// pager sends a session with acks what it has kept in pages (acks.go);
	// made at its first login with acks, nil for the others.
	pager atomic.Pointer[pager]
	// ackable is what a session with acks was sent and has not acked
	// (acks.go); made at each login with acks, nil for the others.
	ackable atomic.Pointer[ackable]
	// ackScan is the connection's budget of Redis work for acks
	// (ackable.go), made at its first ack; the reader's only.
	ackScan *rate.Limiter

	closeOnce sync.Once
	closed    atomic.Bool // set by the first close (or a failed write); no channel: 96 bytes less per session

	// While parked (park.go): its wait in the poller (a poller.Token, or
	// wsWait; 0 while not waiting) and its tick on the idle wheel (0 when
	// on none), under pmu; and its place in that tick, under the wheel's
	// lock.
	pmu      sync.Mutex
	waitTok  uint64
	parkTick int64
	wheelIdx int32
}

func newSession(srv *Server, conn net.Conn) *session {
	s := &session{
		srv:  srv,
		conn: conn,
		id:   randomHex(8),
		// Rounded up, so at least 1: 0 means logged in.
		loginBy: int32((time.Since(srv.started) + srv.cfg.LoginTimeout + time.Second - 1) / time.Second),
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
// it is made at once. A client too slow to take it is cut. An error means
// the line is not queued: the session is closing (or was just cut), and a
// message must not be confirmed for it.
func (s *session) queue(batch *sendq.Batch, fn func([]byte) []byte) error {
	err := s.q.AppendTo(batch, fn)
	if errors.Is(err, sendq.ErrFull) {
		s.close(closeSlowConsumer)
	}
	return err
}

func (s *session) sendReply(batch *sendq.Batch, r reply) { _ = s.queue(batch, r.appendLine) }

// sendEvent queues an event. Its id is recorded as sent first: the client
// may have it, and ack it, as soon as it is queued.
func (s *session) sendEvent(batch *sendq.Batch, e *chatEvent) error {
	s.ackable.Load().sent(e.ID)
	return s.queue(batch, e.appendLine)
}

// queueInboxEvent queues an event read from the inbox, as sendEvent does.
func (s *session) queueInboxEvent(batch *sendq.Batch, e *inboxEvent) error {
	s.ackable.Load().sent(e.ev.ID)
	return s.queue(batch, e.appendLine)
}

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
	closeRefusedPerIP                       // refused at accept: MaxConnsPerIP clients are connected from its source
	closeLoginTimeout                       // not logged in within LoginTimeout of connecting
	closeLineTimeout                        // a line not complete within LineTimeout of its first byte
	closeLoginRateLimit                     // a login request over LoginRatePerIP for its source
	closeTooManyUnacked                     // a session with acks holds InboxMax+UnackedMax unacked events
	closeKickedAdmin                        // an operator kicked the user (admin API)
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
	closeRefusedPerIP: {
		name: "refused_per_ip", code: CodeTooManyConns, drop: true,
		event: "closing", why: func(cfg *Config) string {
			return fmt.Sprintf("too many connections from your address (the limit is %d)", cfg.MaxConnsPerIP)
		},
		msg: "refusing client", level: slog.LevelDebug,
	},
	closeLoginTimeout: {
		name: "login_timeout", code: CodeLoginTimeout,
		event: "closing", why: func(cfg *Config) string { return "not logged in within " + cfg.LoginTimeout.String() },
		msg: "disconnecting client", level: slog.LevelDebug,
	},
	closeLineTimeout: {
		name: "line_timeout", code: CodeLineTimeout,
		event: "closing", why: func(cfg *Config) string { return "line not completed within " + cfg.LineTimeout.String() },
		msg: "disconnecting client", level: slog.LevelDebug,
	},
	closeLoginRateLimit: {
		name: "login_rate_limited", code: CodeRateLimited,
		event: "closing", why: text("too many logins from your address; try again later"),
		msg: "disconnecting client", level: slog.LevelDebug,
	},
	closeTooManyUnacked: {
		name: "too_many_unacked", code: CodeTooManyUnacked,
		event: "closing", why: func(cfg *Config) string {
			return fmt.Sprintf("%d events not acked: ack each event with {\"cmd\":\"ack\",\"id\":\"...\"}; they are sent again at the next login", cfg.InboxMax+cfg.UnackedMax)
		},
		msg: "disconnecting client", level: slog.LevelInfo,
	},
	closeKickedAdmin: {
		name: "kicked_admin", code: CodeKickedByAdmin,
		event: "kicked", why: text("disconnected by an operator"),
		msg: "session kicked by an operator", level: slog.LevelInfo,
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
			s.srv.log.Log(context.Background(), c.level, c.msg, "session", s.id, "remote", s.remote(), "reason", r, "queued_bytes", s.q.Len())
		}
		if wc, ok := s.conn.(*wsConn); ok {
			wc.closeCode(c.code) // the WebSocket close frame says it too
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

// remote is the client's address, for logs: made when asked, not kept
// by every session.
func (s *session) remote() string { return s.conn.RemoteAddr().String() }

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
		s.srv.log.Debug("client write failed", "session", s.id, "remote", s.remote(), "err", err)
		_ = netx.CloseNow(s.conn)
		return
	}
	s.lingerClose()
}

// lingerTime bounds how long a closing connection waits for the client to
// hang up after the server's last line.
const lingerTime = 500 * time.Millisecond

// lingerClose closes so that the last lines reach the client: the line
// saying why it was disconnected must not be destroyed by a reset (see
// netx.LingerClose).
func (s *session) lingerClose() { netx.LingerClose(s.conn, lingerTime, 1<<20) }

// readBufferSize is the per-session read buffer. Requests are short; a
// longer line (up to MaxLine) is gathered in a temporary slice. The buffer
// is lent by a pool while the session has a reader, so a parked session
// holds none. A client whose read fills it (one that sends faster than
// requests come one by one) is moved to a buffer of busyReadBufferSize (8 times larger): at
// 512 bytes a busy sender's messages took a read system call per two or
// three of them, the largest difference to a direct link in system calls
// per message. Only busy readers hold the large one.
const (
	readBufferSize     = 512
	busyReadBufferSize = 4 << 10
)

// lineReader is a session's read buffer with the clock of the line being
// read, for the line timeout.
type lineReader struct {
	br   *bufio.Reader // reads from src
	src  timedConn
	busy bool // the buffer is busyReadBufferSize
	// credit is room in the window of forwarded messages granted to this
	// reader and not yet spent (flow.go); given back when the reader ends.
	credit int
	// batch holds the writes the requests of one read cause (forwarded
	// frames, events, replies): flushed before the next read, so a read of
	// many messages makes one write per connection it touches.
	batch sendq.Batch
}

// timedConn notes when reads bring bytes: the latest read, and the one
// that brought the first byte of the line not yet complete.
type timedConn struct {
	conn        net.Conn
	rd          io.Reader // reads conn (netx.NewReader: without waking the runtime's monitor)
	last, start time.Time // start is zero while no line is begun
	filled      bool      // a read filled the whole buffer
}

func (c *timedConn) Read(p []byte) (int, error) {
	n, err := c.rd.Read(p)
	if n == len(p) {
		c.filled = true
	}
	if n > 0 {
		c.last = time.Now()
		if c.start.IsZero() {
			c.start = c.last
		}
	}
	return n, err
}

var lineReaders = sync.Pool{New: func() any {
	lr := &lineReader{}
	lr.br = bufio.NewReaderSize(&lr.src, readBufferSize)
	return lr
}}

var busyLineReaders = sync.Pool{New: func() any {
	lr := &lineReader{busy: true}
	lr.br = bufio.NewReaderSize(&lr.src, busyReadBufferSize)
	return lr
}}

// getLineReader lends a reader with the small buffer, or the large one.
func getLineReader(conn net.Conn, busy bool) *lineReader {
	pool := &lineReaders
	if busy {
		pool = &busyLineReaders
	}
	lr := pool.Get().(*lineReader)
	lr.reset(conn)
	return lr
}

// put flushes the batch and gives the reader back to its pool.
func (lr *lineReader) put() {
	lr.batch.Flush()
	lr.reset(nil)
	if lr.busy {
		busyLineReaders.Put(lr)
	} else {
		lineReaders.Put(lr)
	}
}

// grow returns a reader with the large buffer in place of lr, which has
// nothing buffered and its batch flushed, keeping the line clock.
func (lr *lineReader) grow() *lineReader {
	big := getLineReader(lr.src.conn, true)
	big.src = lr.src
	big.src.filled = false
	big.credit, lr.credit = lr.credit, 0
	lr.put()
	return big
}

func (lr *lineReader) reset(conn net.Conn) {
	lr.src = timedConn{conn: conn}
	if conn != nil {
		lr.src.rd = netx.NewReader(conn)
	}
	lr.br.Reset(&lr.src)
}

// lineDone restarts the line clock after a complete line: what is still
// buffered, the next line's beginning, came with the latest read.
func (lr *lineReader) lineDone() {
	if lr.br.Buffered() == 0 {
		lr.src.start = time.Time{}
	} else {
		lr.src.start = lr.src.last
	}
}

// readLoop reads and handles requests until the connection ends (false)
// or the session has parked (true).
func (s *session) readLoop() (parked bool) {
	cfg := &s.srv.cfg
	lr := getLineReader(s.conn, false)
	defer func() {
		s.giveBack(lr)
		lr.put()
	}()
	br := lr.br
	_, ws := s.conn.(*wsConn) // parks on its own (wsConn.waitMessage)
	canPark := (s.raw != nil || ws) && cfg.ParkIdleAfter > 0 && cfg.ParkIdleAfter < cfg.IdleTimeout
	var long []byte // a line longer than the buffer, gathered so far
	tooLong := false
	var deadlineSet time.Time
	// now is the time of the latest read (lr.src.last), or of the latest
	// wake-up: reading the clock costs as much as taking a token, so the
	// loop reads it once per read, not per line.
	now := time.Now()
	lastInput := now
	// parkAfter is ParkIdleAfter, or parkAfterLogin while nothing has come
	// since a login.
	parkAfter := cfg.ParkIdleAfter
	for {
		// Wait for input until the next deadline (wakeAt). Moving it costs
		// a timer update: at most once a second, unless a wake-up has just
		// found a line begun.
		if now.Sub(deadlineSet) > time.Second {
			deadlineSet = now
			_ = s.conn.SetReadDeadline(s.wakeAt(now, lastInput, lr.src.start, canPark, parkAfter))
			if s.isClosed() {
				return false // close's wake-up deadline was just overwritten
			}
		}
		if br.Buffered() == 0 {
			// Before a read that may wait: what this read produced goes
			// out, and room not spent on it goes back to the window.
			lr.batch.Flush()
			s.giveBack(lr)
			if lr.src.filled && !lr.busy && long == nil && !tooLong {
				lr = lr.grow()
				br = lr.br
			}
		}
		frag, err := br.ReadSlice('\n')
		if err != nil && isTimeout(err) && !s.isClosed() {
			now = time.Now()
			if r, ok := s.overdue(now, lastInput, lr.src.start); ok {
				s.close(r)
				return false
			}
			// Not yet: park, or wait on.
			if canPark && len(frag) == 0 && long == nil && !tooLong && s.park(s.parkFor(now, lastInput)) {
				return true
			}
			long, tooLong = s.gather(long, frag, tooLong) // a partial line
			if s.tooManyErrors(s.badInARow) {
				return false
			}
			deadlineSet = time.Time{}
			continue
		}
		now = lr.src.last
		if errors.Is(err, bufio.ErrBufferFull) {
			long, tooLong = s.gather(long, frag, tooLong)
			if s.tooManyErrors(s.badInARow) {
				return false
			}
			continue
		}
		if err != nil && !(errors.Is(err, io.EOF) && len(frag)+len(long) > 0) {
			s.readFailed(err)
			return false
		}
		lastInput = now
		lr.lineDone()
		line := frag
		if long != nil {
			long = append(long, frag...)
			line = long
		}
		if !tooLong && len(line) > cfg.MaxLine {
			s.lineTooLong() // passed the limit with its last piece
		} else if line = bytes.TrimSpace(line); !tooLong && len(line) > 0 {
			loggedIn := s.loginBy == 0
			switch cerr := s.handle(line, now, lr); {
			case cerr == nil:
				s.badInARow = 0
			case cerr.badRequest():
				s.badInARow++
			}
			// A client that logged in and says nothing more parks soon:
			// a login storm holds a goroutine per session for a moment,
			// not for ParkIdleAfter (their structures stay allocated for
			// the life of the process).
			switch {
			case !loggedIn && s.loginBy == 0 && parkAfterLogin < parkAfter:
				parkAfter, deadlineSet = parkAfterLogin, time.Time{}
			case parkAfter != cfg.ParkIdleAfter:
				parkAfter, deadlineSet = cfg.ParkIdleAfter, time.Time{}
			}
		}
		tooLong, long = false, nil
		if s.tooManyErrors(s.badInARow) || err != nil || s.isClosed() {
			return false // too many errors, EOF after a last line without newline, or closed
		}
	}
}

// giveBack returns the reader's unspent room in the window (flow.go).
func (s *session) giveBack(lr *lineReader) {
	if lr.credit > 0 && s.srv.ledger != nil {
		s.srv.ledger.giveBack(lr.credit)
	}
	lr.credit = 0
}

// parkAfterLogin is how long a session that has just logged in waits for
// its client's next request before it parks (ParkIdleAfter if that is
// shorter). A client that goes on at once (a chat right after the login)
// does not park; one that stays silent, as most do after a login, parks
// now rather than later, so a reconnect storm of 20 000 clients runs a few
// hundred readers at a time instead of all of them: the runtime keeps a
// goroutine's descriptor (480 bytes) for reuse once it has existed.
const parkAfterLogin = 250 * time.Millisecond

// wakeAt is when a reader waiting for input must look up: at the idle
// timeout, the time to park, the login deadline, or the line deadline, of
// the line begun (lineStart) or of one that may begin while it waits.
func (s *session) wakeAt(now, lastInput, lineStart time.Time, canPark bool, parkAfter time.Duration) time.Time {
	cfg := &s.srv.cfg
	if lineStart.IsZero() {
		lineStart = now
	}
	d := earliest(lastInput.Add(cfg.IdleTimeout), lineStart.Add(cfg.LineTimeout))
	if canPark {
		d = earliest(d, now.Add(parkAfter))
	}
	if by, ok := s.loginDeadline(); ok {
		d = earliest(d, by)
	}
	return d
}

// overdue says why a reader that woke up without a complete line must
// close the session, if it must.
func (s *session) overdue(now, lastInput, lineStart time.Time) (closeReason, bool) {
	cfg := &s.srv.cfg
	if !lineStart.IsZero() && now.Sub(lineStart) >= cfg.LineTimeout {
		return closeLineTimeout, true
	}
	if by, ok := s.loginDeadline(); ok && !now.Before(by) {
		return closeLoginTimeout, true
	}
	if now.Sub(lastInput) >= cfg.IdleTimeout {
		return closeIdleTimeout, true
	}
	return 0, false
}

// parkFor is how long a session parking now may wait in the poller: until
// the idle timeout or the login deadline. Its request bucket, if full, is
// dropped on the way.
func (s *session) parkFor(now, lastInput time.Time) time.Duration {
	if s.reqs != nil && s.reqs.TokensAt(now) >= float64(s.srv.cfg.RequestBurst) {
		s.reqs = nil
	}
	d := s.srv.cfg.IdleTimeout - now.Sub(lastInput)
	if by, ok := s.loginDeadline(); ok {
		d = min(d, by.Sub(now))
	}
	return d
}

// loginDeadline is when the session must have logged in; false once it has.
func (s *session) loginDeadline() (time.Time, bool) {
	if s.loginBy == 0 {
		return time.Time{}, false
	}
	return s.srv.started.Add(time.Duration(s.loginBy) * time.Second), true
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// gather adds frag to a line being gathered. The moment the line passes
// MaxLine the client is told (lineTooLong), without waiting for a newline
// that may never come, and the rest of the line, up to its newline, is
// discarded.
func (s *session) gather(long, frag []byte, tooLong bool) ([]byte, bool) {
	if tooLong {
		return nil, true
	}
	if len(long)+len(frag) > s.srv.cfg.MaxLine {
		s.lineTooLong()
		return nil, true
	}
	return append(long, frag...), false
}

// lineTooLong tells the client its line is over MaxLine: a bad request.
func (s *session) lineTooLong() {
	s.badInARow++
	s.fail("error", "", errorf(CodeLineTooLong, "line exceeds %d bytes; it is discarded up to its newline", s.srv.cfg.MaxLine))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (s *session) tooManyErrors(n int32) bool {
	if n < maxConsecutiveErrors {
		return false
	}
	s.close(closeTooManyErrors)
	return true
}

// readFailed ends a read that failed: the client hung up or reset, or the
// session was closed (which wakes its reader with a deadline).
func (s *session) readFailed(err error) {
	if s.isClosed() {
		return
	}
	if !errors.Is(err, io.EOF) {
		s.srv.log.Debug("client read failed", "session", s.id, "remote", s.remote(), "err", err)
	}
}

// handle runs one request line, read at the time given, and sends its
// reply; a chat's writes may wait in the reader's batch, and it may spend
// the reader's credit.
func (s *session) handle(line []byte, at time.Time, lr *lineReader) *clientError {
	r, cerr := decodeRequest(line)
	if cerr != nil {
		cmd := r.Cmd
		if cerr.code == CodeBadJSON || cmd == "" {
			cmd = "error"
		}
		s.fail(truncate(cmd, 32), "", cerr)
		return cerr
	}
	if !s.allowRequest(at) {
		cerr = errorf(CodeRateLimited, "over %g requests per second; slow down", s.srv.cfg.RequestRate)
		s.fail(r.Cmd, r.Ref, cerr)
		return cerr
	}
	switch r.Cmd {
	case "ping":
		s.sendReply(nil, reply{Reply: "ping", OK: true})
	case "login":
		if !s.srv.ips.allowLogin(s.ip) {
			cerr = errorf(CodeRateLimited, "too many logins from your address; try again later")
			s.srv.m.login(cerr)
			s.fail(r.Cmd, r.Ref, cerr)
			s.close(closeLoginRateLimit)
			return cerr
		}
		if cerr = s.srv.login(s, r); cerr == nil {
			s.loginBy = 0 // logged in: no deadline any more
		}
		s.srv.m.login(cerr)
	case "chat":
		cerr = s.srv.chat(s, r, &lr.batch, &lr.credit)
	case "logout":
		cerr = s.srv.logout(s)
	case "ack":
		cerr = s.srv.ack(s, r)
	}
	if cerr != nil {
		s.fail(r.Cmd, r.Ref, cerr)
	}
	return cerr
}

// allowRequest takes a request read at the time given from the session's
// bucket, and reports whether there was one.
func (s *session) allowRequest(at time.Time) bool {
	cfg := &s.srv.cfg
	if cfg.RequestRate < 0 {
		return true
	}
	if s.reqs == nil {
		s.reqs = rate.NewLimiter(rate.Limit(cfg.RequestRate), cfg.RequestBurst)
	}
	return s.reqs.AllowN(at, 1)
}

// fail sends an error reply.
func (s *session) fail(cmd, ref string, e *clientError) {
	s.srv.m.clientError(e.code)
	s.sendReply(nil, reply{Reply: cmd, OK: false, Code: e.code, Error: e.msg, Ref: ref})
}
