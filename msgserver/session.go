package msgserver

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

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
	raw    syscall.RawConn // for the poller; nil if conn has no descriptor
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
	closed    atomic.Bool // set once, by the first close; no channel: 96 bytes less per session

	// While parked: how to take the session back from the poller, and the
	// timer that closes it at the idle timeout.
	pmu       sync.Mutex
	unparkFn  func() bool
	idleTimer *time.Timer
}

func newSession(srv *Server, conn net.Conn) *session {
	s := &session{
		srv:    srv,
		conn:   conn,
		id:     randomHex(8),
		remote: conn.RemoteAddr().String(),
	}
	if sc, ok := conn.(syscall.Conn); ok && srv.poller != nil {
		s.raw, _ = sc.SyscallConn()
	}
	s.q = sendq.NewWriter(srv.cfg.SessionQueueBytes, conn, srv.cfg.WriteTimeout) // no writer goroutine while idle
	s.q.SetCloser(s.dropConn)                                                    // a failed write must take the session out of the poller first
	return s
}

// queue lets fn append one line for the client. With a batch, the write
// waits for b.Flush (the uplink reader flushes once per read); without, it
// is made at once. A client too slow to take it is cut.
func (s *session) queue(b *sendq.Batch, fn func([]byte) []byte) {
	if err := s.q.AppendTo(b, fn); errors.Is(err, sendq.ErrFull) {
		// Not s.name: this runs on the sender's goroutine, not the owner's.
		s.srv.log.Warn("client too slow, disconnecting", "session", s.id, "remote", s.remote, "queued_bytes", s.q.Len())
		s.srv.m.disconnect(CodeSlowConsumer)
		s.abort()
	}
}

// send queues one line (ending in a newline) for the client.
func (s *session) send(line []byte) {
	s.queue(nil, func(b []byte) []byte { return append(b, line...) })
}

func (s *session) sendReply(b *sendq.Batch, r reply) { s.queue(b, r.appendLine) }

func (s *session) sendEvent(b *sendq.Batch, e *chatEvent) { s.queue(b, e.appendLine) }

// closeWith tells the client why, flushes what is queued, and closes.
func (s *session) closeWith(code, reason string) {
	s.closeOnce.Do(func() {
		_ = s.q.Write(appendJSONLine(nil, closingEvent{Event: eventFor(code), Code: code, Reason: reason}))
		s.q.Close() // flushed, then run closes conn
		s.srv.m.disconnect(code)
		s.closed.Store(true)
		_ = s.conn.SetReadDeadline(time.Now()) // wake the reader
		s.unpark(false)                        // or, if parked, finish it
	})
}

// abort closes at once, without flushing.
func (s *session) abort() {
	s.closeOnce.Do(func() {
		s.q.Close()
		s.dropConn()
	})
}

// dropConn closes the connection: out of the poller first, if parked. It is
// also what a failed write calls, which can happen inside closeOnce (the
// closing line of closeWith, or a flush at Close), so it does not use it.
func (s *session) dropConn() {
	s.closed.Store(true)
	s.unpark(true)
}

func (s *session) isClosed() bool { return s.closed.Load() }

func eventFor(code string) string {
	if code == CodeKicked {
		return "kicked"
	}
	return "closing"
}

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
	s.closeOnce.Do(func() { s.q.Close(); s.closed.Store(true) })
	<-s.q.Done() // everything queued is written (bounded by the write timeout)
	if err := s.q.Err(); err != nil {
		s.srv.log.Debug("client write failed", "session", s.id, "remote", s.remote, "err", err)
		s.conn.Close()
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
// up, for at most lingerTime.
func (s *session) lingerClose() {
	tc, ok := s.conn.(*net.TCPConn)
	if !ok || tc.CloseWrite() != nil {
		s.conn.Close()
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
				return false // closeWith's wake-up deadline was just overwritten
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
	s.closeWith(CodeTooManyErrors, "too many bad requests in a row")
	return true
}

func (s *session) readFailed(err error) {
	if s.isClosed() {
		return
	}
	if isTimeout(err) {
		s.idleExpired()
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
