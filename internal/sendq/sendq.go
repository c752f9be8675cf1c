// Package sendq is the outbound side of every connection of the relay and the
// message servers: a bounded byte queue that producers append encoded frames
// or lines to, drained with a single write per batch.
//
// Producers never block on the network: Append copies into the pending buffer
// and returns. When the pending bytes exceed the limit the queue reports
// ErrFull and the owner cuts the connection (a slow consumer is cut, not
// waited for). A write takes everything queued so far, so under load many
// frames share one syscall and at low rates nothing waits for a timer.
//
// The queue writes without a goroutine of its own when it can: the producer
// that finds it idle makes one non-blocking write itself; only what the
// socket does not take at once, or what arrives while that write runs, goes
// to a writer goroutine that lives until the queue is empty. A reader that
// queues to many connections while handling one read buffer passes a Batch
// (AppendTo) and flushes it before it reads again, so each connection gets
// one write for everything that buffer produced (the way nats-server
// flushes the clients a read touched). Both matter: on loopback a write
// syscall also runs the receiver's side of TCP and wakes it, and it was the
// largest cost of a relayed message in the profile.
package sendq

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/chatrelay/chatrelay/internal/netx"
)

// ErrFull means the peer is not reading fast enough: the queue passed its
// byte limit. ErrClosed means the queue was closed.
var (
	ErrFull   = errors.New("outbound queue full: peer too slow")
	ErrClosed = errors.New("outbound queue closed")
)

// Queue is a bounded outbound byte queue for one connection.
type Queue struct {
	max int

	mu      sync.Mutex
	buf     []byte
	items   int
	oldest  time.Time // when the first item now pending was appended
	closed  bool
	flushed func(bytes, items int, waited time.Duration)

	// The connection (Start) and the state of writing to it: a goroutine
	// exists only while there is something the socket did not take at once.
	conn         net.Conn
	raw          syscall.RawConn // for non-blocking inline writes; nil if conn has none
	closer       func()          // ends the connection after a failed write (SetCloser); nil: conn.Close
	writeTimeout time.Duration
	writing      bool // an inline write or the writer goroutine owns the connection
	marked       bool // in a Batch that has not flushed yet
	carried      int  // bytes an inline write took of a batch the writer finishes; reported with it
	werr         error
	finished     bool          // closed and written out, or failed
	drained      chan struct{} // made by Done, closed when finished
}

// Idle queues hold no buffer: a write's buffer goes back to a pool, and
// the next item takes one from it. With many idle connections that is a
// buffer per busy connection, not one per connection.
//
// Buffers come in classes of poolBufSize and its doublings. A queue whose
// buffer is nearly full moves to a buffer of the next class before an item
// is appended (roomFor), and a written buffer goes back to its class's
// pool: at saturation, when a read's worth of items goes into one write,
// growing by append made a new, larger buffer for every write, and those
// allocations were most of what the servers allocated.
const (
	poolBufSize = 2048
	poolClasses = 10 // 2 KB to 1 MB
	// growMargin is the free room below which the buffer moves up a class
	// before an item is appended: more than most items (a chat line or a
	// Forward frame), so that append rarely grows a buffer itself.
	growMargin = 1024
)

// The pools hold the first byte of each buffer: an interface holding a
// pointer costs no allocation, one holding a slice would.
var bufPools [poolClasses]sync.Pool

func classOf(c int) int {
	for i := range poolClasses {
		if c == poolBufSize<<i {
			return i
		}
	}
	return -1
}

func getBuf(class int) []byte {
	size := poolBufSize << class
	if p, ok := bufPools[class].Get().(*byte); ok {
		return unsafe.Slice(p, size)[:0]
	}
	return make([]byte, 0, size)
}

func putBuf(b []byte) {
	if class := classOf(cap(b)); class >= 0 {
		bufPools[class].Put(unsafe.SliceData(b[:cap(b)]))
	}
}

// roomLocked gives q.buf a buffer before an item is appended: one from
// the smallest pool, or, when it has less than growMargin free, one of the
// next class with what it holds. q.mu is held and the queue has its
// connection.
func (q *Queue) roomLocked() {
	if q.buf == nil {
		q.buf = getBuf(0)
		return
	}
	if cap(q.buf)-len(q.buf) >= growMargin {
		return
	}
	class := classOf(cap(q.buf))
	if class < 0 || class+1 >= poolClasses {
		return // grown past the classes by a large item: append grows it
	}
	nb := append(getBuf(class+1), q.buf...)
	putBuf(q.buf)
	q.buf = nb
}

// finishLocked records that the queue is done; q.mu is held.
func (q *Queue) finishLocked() {
	if !q.finished {
		q.finished = true
		if q.drained != nil {
			close(q.drained)
		}
	}
}

// New returns a queue that refuses new items once more than maxBytes are
// unwritten (so it may hold maxBytes plus one item). It writes once Start
// gives it its connection; items queued before that wait for it.
// flushed, if not nil, is called after each write with its size in bytes, in
// items (calls to Append), and how long its oldest item waited; use it for
// metrics.
func New(maxBytes int, flushed func(bytes, items int, waited time.Duration)) *Queue {
	return &Queue{max: maxBytes, flushed: flushed}
}

// Append lets fn append one item to the pending buffer. It never blocks on
// the network. A queue with no write under way is written at once, from
// the calling goroutine, with one non-blocking write.
func (q *Queue) Append(fn func([]byte) []byte) error {
	return q.AppendTo(nil, fn)
}

// AppendTo is Append for a producer that is handling a batch of input: the
// write is left to b.Flush, which the producer calls before it blocks, so
// everything the batch queued here goes out in one write. A nil b behaves
// as Append.
func (q *Queue) AppendTo(b *Batch, fn func([]byte) []byte) error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return ErrClosed
	}
	if len(q.buf) > q.max {
		q.mu.Unlock()
		return ErrFull
	}
	if q.items == 0 && q.flushed != nil {
		q.oldest = time.Now()
	}
	if q.conn != nil {
		q.roomLocked()
	}
	q.buf = fn(q.buf)
	q.items++
	switch {
	case q.conn == nil || q.writing: // Start, or the write under way, takes it
		q.mu.Unlock()
	case b != nil:
		add := !q.marked
		q.marked = true
		q.mu.Unlock()
		if add {
			b.qs = append(b.qs, q)
		}
	default:
		q.writeLocked()
	}
	return nil
}

// AppendLater lets fn append one item that may wait: it goes out with the
// next write of the queue (another item's, a Batch's) or at the owner's
// next Kick, whichever comes first. For frames that need not leave at once
// but are many (acks at a low rate: each would be a write of its own, and a
// wake-up of the peer), the owner arms a short timer that Kicks.
func (q *Queue) AppendLater(fn func([]byte) []byte) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrClosed
	}
	if len(q.buf) > q.max {
		return ErrFull
	}
	if q.items == 0 && q.flushed != nil {
		q.oldest = time.Now()
	}
	if q.conn != nil {
		q.roomLocked()
	}
	q.buf = fn(q.buf)
	q.items++
	return nil
}

// Kick writes what is pending, unless a write is under way (which takes
// it). A Batch that holds the queue may be its producer's for a while (a
// reader waiting on Redis): Kick writes anyway, and that Flush finds less.
func (q *Queue) Kick() {
	q.mu.Lock()
	if q.conn == nil || q.writing || len(q.buf) == 0 {
		q.mu.Unlock()
		return
	}
	q.writeLocked()
}

// Batch is the set of queues one producer appended to with AppendTo since
// its last Flush. It belongs to that producer's goroutine.
type Batch struct{ qs []*Queue }

// Flush writes every queue of the batch that has no write under way.
func (b *Batch) Flush() {
	for i, q := range b.qs {
		q.mu.Lock()
		q.marked = false
		if q.writing || len(q.buf) == 0 {
			q.mu.Unlock()
		} else {
			q.writeLocked()
		}
		b.qs[i] = nil
	}
	b.qs = b.qs[:0]
}

// writeLocked writes what is pending, from the calling goroutine, with one
// non-blocking write; what the socket does not take goes to a writer
// goroutine. q.mu is held, nothing is being written and the buffer is not
// empty; q.mu is released.
func (q *Queue) writeLocked() {
	q.writing = true
	if q.raw == nil {
		q.mu.Unlock()
		go q.flushLoop()
		return
	}
	out, items, oldest := q.buf, q.items, q.oldest
	q.buf, q.items = nil, 0
	q.mu.Unlock()

	n, err := writeNow(q.raw, out)
	if n == len(out) && q.flushed != nil {
		q.flushed(n, items, time.Since(oldest))
	}

	q.mu.Lock()
	if err != nil {
		q.failLocked(err, len(out))
		return
	}
	if n < len(out) {
		// The socket is full, or the write deadline of an earlier blocking
		// write has passed: the rest goes first, through the writer.
		rest := append(out[:0:0], out[n:]...)
		q.buf = append(rest, q.buf...)
		q.items += items
		q.oldest = oldest
		q.carried += n
	}
	putBuf(out)
	if len(q.buf) > 0 {
		q.mu.Unlock()
		go q.flushLoop() // still writing: the goroutine owns it now
		return
	}
	q.writing = false
	if q.closed {
		q.finishLocked()
	}
	q.mu.Unlock()
}

// writeNow makes one non-blocking write. A full socket is not an error: it
// returns how much was taken. An expired deadline (left by the writer
// goroutine) reports 0 bytes, so the writer, which sets a fresh one, takes
// over.
func writeNow(rc syscall.RawConn, p []byte) (n int, err error) {
	op := writeOps.Get().(*writeOp)
	op.p = p
	cerr := rc.Write(op.fn)
	n, errno := op.n, op.errno
	*op = writeOp{fn: op.fn}
	writeOps.Put(op)
	if errno != 0 && errno != syscall.EAGAIN {
		err = errno
	}
	if cerr != nil && err == nil {
		if errors.Is(cerr, os.ErrDeadlineExceeded) {
			return 0, nil
		}
		err = cerr
	}
	return n, err
}

// writeOp is one inline write: the function RawConn.Write calls, made once
// per writeOp (a closure per write was an allocation per write), and what
// it is to write and wrote.
type writeOp struct {
	fn    func(fd uintptr) bool
	p     []byte
	n     int
	errno syscall.Errno
}

var writeOps = sync.Pool{New: func() any {
	op := &writeOp{}
	op.fn = op.write
	return op
}}

func (op *writeOp) write(fd uintptr) bool {
	op.n, op.errno = netx.RawWrite(fd, op.p) // without waking the runtime's monitor (netx.RawWrite)
	return true                              // never wait for writability here
}

// failLocked ends the queue after a failed write; q.mu is held and released.
func (q *Queue) failLocked(err error, n int) {
	q.werr = fmt.Errorf("write %d bytes: %w", n, err)
	q.closed = true
	q.buf = nil
	q.writing = false
	q.finishLocked()
	q.mu.Unlock()
	// The peer is gone or stuck: close the connection so its reader ends
	// too, instead of queueing into a dead writer.
	q.closeConn()
}

// closeConn closes the connection after a failed write: with the owner's
// closer if it set one (SetCloser), else at once (a TLS connection without
// the close_notify alert, whose write would wait on the peer that just
// failed to take ours).
func (q *Queue) closeConn() {
	if q.closer != nil {
		q.closer()
		return
	}
	_ = netx.CloseNow(q.conn)
}

// SetCloser makes fn, instead of conn.Close, what a failed write calls to
// end the connection: for owners that must do something first (a parked
// session leaves the poller before its descriptor is closed). Call it
// before the first item is queued.
func (q *Queue) SetCloser(fn func()) {
	q.mu.Lock()
	q.closer = fn
	q.mu.Unlock()
}

// NewWriter returns a queue, without a flushed callback, already writing to
// conn (New, then Start).
func NewWriter(maxBytes int, conn net.Conn, writeTimeout time.Duration) *Queue {
	q := New(maxBytes, nil)
	q.Start(conn, writeTimeout)
	return q
}

// Start makes the queue write to conn: inline from the producers, and from
// a goroutine that is started only for what the socket does not take at
// once and ends when the queue is empty, so an idle connection costs no
// goroutine. Each write the goroutine makes has the given deadline. Done is
// closed once the queue is closed and everything is written, or a write
// failed. Call Start once.
func (q *Queue) Start(conn net.Conn, writeTimeout time.Duration) {
	var raw syscall.RawConn
	if sc, ok := conn.(syscall.Conn); ok {
		raw, _ = sc.SyscallConn()
	}
	q.mu.Lock()
	q.conn, q.raw, q.writeTimeout = conn, raw, writeTimeout
	start := len(q.buf) > 0
	q.writing = start
	if !start && q.closed {
		q.finishLocked()
	}
	q.mu.Unlock()
	if start {
		go q.flushLoop()
	}
}

// Done is closed when the queue is closed and drained, or a write failed
// (see Start).
func (q *Queue) Done() <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.drained == nil { // made on demand: most connections never ask
		q.drained = make(chan struct{})
		if q.finished {
			close(q.drained)
		}
	}
	return q.drained
}

// Finished reports, without waiting, what Done tells: the queue is closed
// and written out, or a write failed.
func (q *Queue) Finished() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.finished
}

// Err is the write error that ended the queue, if any.
func (q *Queue) Err() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.werr
}

func (q *Queue) flushLoop() {
	deadline := false // this goroutine has set a write deadline
	for {
		q.mu.Lock()
		if len(q.buf) == 0 || q.werr != nil {
			if deadline && q.werr == nil {
				// An expired deadline would make every later inline write
				// fall back to a writer goroutine. It is cleared while
				// this goroutine still owns the connection's writes
				// (writing): cleared after, it could clear the deadline
				// of the next writer's blocking write.
				q.mu.Unlock()
				_ = q.conn.SetWriteDeadline(time.Time{})
				deadline = false
				continue
			}
			q.writing = false
			if q.closed {
				q.finishLocked()
			}
			q.mu.Unlock()
			return
		}
		out, items, oldest, carried := q.buf, q.items, q.oldest, q.carried
		q.buf, q.items, q.carried = nil, 0, 0
		q.mu.Unlock()

		// Mostly this goroutine has what was queued while an inline write
		// ran, and the socket takes it at once: a non-blocking write, as
		// inline. Only what the socket does not take waits, with the
		// write deadline, in a blocking write.
		var err error
		n := 0
		if q.raw != nil {
			n, err = writeNow(q.raw, out)
		}
		if err == nil && n < len(out) {
			if q.writeTimeout > 0 {
				_ = q.conn.SetWriteDeadline(time.Now().Add(q.writeTimeout))
				deadline = true
			}
			_, err = q.conn.Write(out[n:])
		}
		if err == nil && q.flushed != nil {
			q.flushed(carried+len(out), items, time.Since(oldest))
		}
		putBuf(out)
		q.mu.Lock()
		if err != nil {
			q.werr = fmt.Errorf("write %d bytes: %w", len(out), err)
			q.closed = true
			q.buf = nil
		}
		q.mu.Unlock()
		if err != nil {
			// The peer is gone or stuck: close the connection so its reader
			// ends too, instead of queueing into a dead writer.
			q.closeConn()
		}
	}
}

// Write queues a copy of p.
func (q *Queue) Write(p []byte) error {
	return q.Append(func(b []byte) []byte { return append(b, p...) })
}

// Len returns the number of bytes waiting to be written.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.buf)
}

// Close stops the queue after what is already queued is written (bounded
// by the write timeout); Done tells when. Appends after Close fail.
func (q *Queue) Close() {
	q.mu.Lock()
	q.closed = true
	if q.conn != nil && !q.writing && len(q.buf) > 0 {
		q.writeLocked() // items left for a Batch that has not flushed yet
		return
	}
	if q.conn != nil && !q.writing { // nothing pending and no writer: drained now
		q.finishLocked()
	}
	q.mu.Unlock()
}
