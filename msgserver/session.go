package msgserver

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/internal/sendq"
)

// maxConsecutiveErrors is how many bad requests in a row a client may send
// before it is disconnected: a few typos are fine, a stream of junk is not.
const maxConsecutiveErrors = 20

// session is one client connection. Its reader goroutine handles requests
// in order; everything it sends goes through q, drained by its writer.
type session struct {
	srv    *Server
	conn   net.Conn
	id     string
	remote string
	q      *sendq.Queue

	// name is set by login and read only by the reader goroutine; other
	// goroutines find sessions through Server.sessions.
	name string

	closeOnce sync.Once
	closed    chan struct{}
}

func newSession(srv *Server, conn net.Conn) *session {
	s := &session{
		srv:    srv,
		conn:   conn,
		id:     randomHex(8),
		remote: conn.RemoteAddr().String(),
		closed: make(chan struct{}),
	}
	s.q = sendq.NewWriter(srv.cfg.SessionQueueBytes, conn, srv.cfg.WriteTimeout) // no writer goroutine while idle
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
		close(s.closed)
		_ = s.conn.SetReadDeadline(time.Now()) // wake the reader
	})
}

// abort closes at once, without flushing.
func (s *session) abort() {
	s.closeOnce.Do(func() {
		s.q.Close()
		close(s.closed)
		s.conn.Close()
	})
}

func (s *session) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

func eventFor(code string) string {
	if code == CodeKicked {
		return "kicked"
	}
	return "closing"
}

// run serves the connection until it ends, then cleans up. It is kept
// tiny, and the cleanup out of it: an idle session waits in a read at the
// bottom of this call chain, and the runtime shrinks an idle goroutine's
// stack only when the frames in use are under a quarter of it; a few
// hundred bytes less here halve the memory of every idle session.
func (s *session) run() {
	s.readLoop()
	s.finish()
}

//go:noinline
func (s *session) finish() {
	s.srv.endSession(s)
	s.closeOnce.Do(func() { s.q.Close(); close(s.closed) })
	<-s.q.Done() // everything queued is written (bounded by the write timeout)
	if err := s.q.Err(); err != nil {
		s.srv.log.Debug("client write failed", "session", s.id, "remote", s.remote, "err", err)
	}
	s.conn.Close()
}

// readBufferSize is the per-session read buffer. Requests are short; a
// longer line (up to MaxLine) is gathered in a temporary slice, so an idle
// session holds 512 bytes, not MaxLine.
const readBufferSize = 512

func (s *session) readLoop() {
	cfg := &s.srv.cfg
	br := bufio.NewReaderSize(s.conn, readBufferSize)
	var long []byte // a line longer than the buffer, gathered so far
	tooLong := false
	errorsInARow := 0
	var deadlineSet time.Time
	for {
		if now := time.Now(); now.Sub(deadlineSet) > time.Second {
			deadlineSet = now
			_ = s.conn.SetReadDeadline(now.Add(cfg.IdleTimeout))
			if s.isClosed() {
				return // closeWith's wake-up deadline was just overwritten
			}
		}
		frag, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if !tooLong && len(long)+len(frag) <= cfg.MaxLine {
				long = append(long, frag...)
			} else {
				tooLong, long = true, nil // discard the rest of this line
			}
			continue
		}
		if err != nil && !(errors.Is(err, io.EOF) && len(frag)+len(long) > 0) {
			s.readFailed(err)
			return
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
			errorsInARow++
			s.fail("error", "", errorf(CodeLineTooLong, "line exceeds %d bytes; it was discarded", cfg.MaxLine))
		} else if line = bytes.TrimSpace(line); len(line) > 0 {
			if cerr := s.handle(line); cerr != nil {
				errorsInARow++
			} else {
				errorsInARow = 0
			}
		}
		tooLong, long = false, nil
		if s.tooManyErrors(errorsInARow) || err != nil || s.isClosed() {
			return // too many errors, EOF after a last line without newline, or closed
		}
	}
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
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		s.closeWith(CodeIdleTimeout, "no request for "+s.srv.cfg.IdleTimeout.String())
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
