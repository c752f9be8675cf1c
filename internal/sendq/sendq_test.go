package sendq

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// waitTimeout bounds every wait for an event, so a broken queue fails the
// test instead of hanging it.
const waitTimeout = 5 * time.Second

// countConn counts calls to Write, can fail them, and reports when a write
// starts.
type countConn struct {
	net.Conn
	failWith error         // if set, Write returns it without writing
	started  chan struct{} // if set, receives (non-blocking) when a Write begins

	mu     sync.Mutex
	writes [][]byte // a copy of each write's bytes
}

func (c *countConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, append([]byte(nil), p...))
	c.mu.Unlock()
	if c.started != nil {
		select {
		case c.started <- struct{}{}:
		default:
		}
	}
	if c.failWith != nil {
		return 0, c.failWith
	}
	return c.Conn.Write(p)
}

func (c *countConn) writeLog() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.writes...)
}

// pipe returns a queue writer's end wrapped in a countConn and the peer's
// end; both are closed when the test ends.
func pipe(t *testing.T) (*countConn, net.Conn) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() {
		a.Close()
		b.Close()
	})
	return &countConn{Conn: a}, b
}

// waitDone waits for the queue's Done.
func waitDone(t *testing.T, q *Queue) {
	t.Helper()
	select {
	case <-q.Done():
	case <-time.After(waitTimeout):
		t.Fatalf("Done not closed within %v", waitTimeout)
	}
}

// waitStarted waits for a write on conn to begin.
func waitStarted(t *testing.T, conn *countConn) {
	t.Helper()
	select {
	case <-conn.started:
	case <-time.After(waitTimeout):
		t.Fatal("the queue did not start writing")
	}
}

// readN reads exactly n bytes from c with a deadline.
func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reading %d bytes: %v (got %q)", n, err, b)
	}
	return b
}

// closeAndReadAll closes w and reads from c, its peer, until EOF with a
// deadline. (net.Pipe refuses deadlines once the other end is closed, so the
// deadline is set first.)
func closeAndReadAll(t *testing.T, w, c net.Conn) []byte {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	w.Close()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading to EOF: %v (got %q)", err, b)
	}
	return b
}

func items(n int) (all []byte, each [][]byte) {
	for i := range n {
		item := fmt.Appendf(nil, "item %03d\n", i)
		each = append(each, item)
		all = append(all, item...)
	}
	return all, each
}

// Items queued before Start, and a Close, are written by Start in one
// write; nothing is accepted after Close.
func TestQueuedBeforeStartOneWrite(t *testing.T) {
	type flush struct{ bytes, items int }
	flushes := make(chan flush, 10)
	q := New(1<<20, func(bytes, items int, waited time.Duration) {
		if waited < 0 {
			t.Errorf("flushed: negative wait %v", waited)
		}
		flushes <- flush{bytes, items}
	})
	conn, peer := pipe(t)

	want, each := items(50)
	for i, item := range each {
		if i%2 == 0 {
			if err := q.Write(item); err != nil {
				t.Fatalf("Write %d: %v", i, err)
			}
			continue
		}
		if err := q.Append(func(b []byte) []byte { return append(b, item...) }); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
	}
	if got := q.Len(); got != len(want) {
		t.Fatalf("Len = %d, want %d", got, len(want))
	}
	q.Close()
	q.Close() // idempotent
	if err := q.Write([]byte("late")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Close: %v, want ErrClosed", err)
	}

	q.Start(conn, time.Second)
	if got := readN(t, peer, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("read %q, want %q", got, want)
	}
	select {
	case f := <-flushes:
		if f != (flush{len(want), len(each)}) {
			t.Errorf("flushed %+v, want %d bytes in %d items", f, len(want), len(each))
		}
	case <-time.After(waitTimeout):
		t.Fatal("flushed was not called")
	}
	waitDone(t, q)
	if err := q.Err(); err != nil {
		t.Fatalf("Err = %v", err)
	}
	if w := conn.writeLog(); len(w) != 1 {
		t.Errorf("%d writes for items queued together, want 1: %q", len(w), w)
	}
	if got := q.Len(); got != 0 {
		t.Errorf("Len after flush = %d, want 0", got)
	}
	// Nothing follows what was queued before Close.
	if rest := closeAndReadAll(t, conn, peer); len(rest) != 0 {
		t.Errorf("read %q after the queued items", rest)
	}
}

// Items appended while the queue is writing arrive in order.
func TestOrderWhileRunning(t *testing.T) {
	q := New(1<<20, nil)
	conn, peer := pipe(t)
	q.Start(conn, time.Second)

	var want []byte
	for round := range 20 {
		batch, _ := items(round + 1)
		batch = fmt.Appendf(batch, "end of round %d\n", round)
		if err := q.Write(batch); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		want = append(want, batch...)
		// Wait for this round to arrive before queuing the next.
		if got := readN(t, peer, len(batch)); !bytes.Equal(got, batch) {
			t.Fatalf("round %d: read %q, want %q", round, got, batch)
		}
	}
	q.Close()
	waitDone(t, q)
	if got := bytes.Join(conn.writeLog(), nil); !bytes.Equal(got, want) {
		t.Errorf("bytes written = %q, want %q", got, want)
	}
}

func TestFullWhilePeerNotReading(t *testing.T) {
	const max = 100
	q := New(max, nil)
	conn, _ := pipe(t) // the peer never reads
	conn.started = make(chan struct{}, 1)
	q.Start(conn, 0)

	if err := q.Write([]byte("first\n")); err != nil {
		t.Fatal(err)
	}
	// The writer took the first item and is now blocked writing it.
	waitStarted(t, conn)

	item := []byte("0123456789")
	var err error
	n := 0
	for ; n < 1000; n++ {
		if err = q.Write(item); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrFull) {
		t.Fatalf("after %d appends of %d bytes: err = %v, want ErrFull", n, len(item), err)
	}
	// The queue holds at least max bytes before it refuses, and at most one
	// item more than max.
	if got := q.Len(); got <= max-len(item) || got > max+len(item) {
		t.Errorf("Len when full = %d, want within one item of %d", got, max)
	}
	if got := q.Len(); got != n*len(item) {
		t.Errorf("Len = %d, want the %d accepted items (%d bytes)", got, n, n*len(item))
	}
	// Refusal is sticky while nobody reads.
	if err := q.Append(func(b []byte) []byte { return b }); !errors.Is(err, ErrFull) {
		t.Errorf("empty Append on a full queue: %v, want ErrFull", err)
	}

	select {
	case <-q.Done():
		t.Fatalf("Done while a write was blocked (Err %v)", q.Err())
	default:
	}
	// The owner cuts the slow consumer: the blocked write fails and ends
	// the queue.
	conn.Close()
	waitDone(t, q)
	if q.Err() == nil {
		t.Error("no error after the connection was closed mid-write")
	}
	if err := q.Write(item); !errors.Is(err, ErrClosed) {
		t.Errorf("Write after a failed write: %v, want ErrClosed", err)
	}
}

// Close while a write is blocked: what was queued behind it is still
// written before Done.
func TestCloseWhileWritingFlushes(t *testing.T) {
	q := New(1<<20, nil)
	conn, peer := pipe(t)
	conn.started = make(chan struct{}, 1)
	q.Start(conn, 0)

	first := []byte("first\n")
	if err := q.Write(first); err != nil {
		t.Fatal(err)
	}
	waitStarted(t, conn)
	rest, each := items(5)
	for _, item := range each {
		if err := q.Write(item); err != nil {
			t.Fatal(err)
		}
	}
	q.Close()
	if err := q.Write([]byte("late")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Close: %v, want ErrClosed", err)
	}
	select {
	case <-q.Done():
		t.Fatal("Done before the queued items were written")
	default:
	}

	want := append(append([]byte(nil), first...), rest...)
	if got := readN(t, peer, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("read %q, want %q", got, want)
	}
	waitDone(t, q)
	if err := q.Err(); err != nil {
		t.Fatalf("Err = %v", err)
	}
	if w := conn.writeLog(); len(w) != 2 {
		t.Errorf("%d writes, want 2 (the blocked one and the rest together): %q", len(w), w)
	}
}

func TestCloseIdle(t *testing.T) {
	q := New(1<<20, nil)
	conn, _ := pipe(t)
	q.Start(conn, time.Second)
	q.Close()
	waitDone(t, q)
	if err := q.Err(); err != nil {
		t.Fatalf("Err = %v", err)
	}
	if w := conn.writeLog(); len(w) != 0 {
		t.Errorf("idle queue wrote %q", w)
	}
}

// A failed write ends the queue, reports its error and closes the
// connection, so that the owner's reader ends too.
func TestWriteErrorEndsQueue(t *testing.T) {
	boom := errors.New("boom")
	q := New(1<<20, func(int, int, time.Duration) {
		t.Error("flushed called for a failed write")
	})
	conn, peer := pipe(t)
	conn.failWith = boom
	// Before the queue closes conn: net.Pipe refuses deadlines after that.
	if err := peer.SetReadDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	q.Start(conn, time.Second)
	if err := q.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	waitDone(t, q)
	if err := q.Err(); !errors.Is(err, boom) {
		t.Fatalf("Err = %v, want an error wrapping %v", err, boom)
	}
	if err := q.Write([]byte("more")); !errors.Is(err, ErrClosed) {
		t.Errorf("Write after a failed write: %v, want ErrClosed", err)
	}
	if got, err := io.ReadAll(peer); err != nil || len(got) != 0 {
		t.Errorf("peer read %q, %v; want EOF (the queue closes the connection)", got, err)
	}
}

// SetCloser replaces conn.Close after a failed write (a message server
// session's queue: NewWriter, then SetCloser).
func TestSetCloserOnWriteError(t *testing.T) {
	conn, peer := pipe(t)
	conn.failWith = errors.New("boom")
	q := NewWriter(1<<20, conn, time.Second)
	closed := make(chan struct{})
	q.SetCloser(func() { close(closed) })
	if err := q.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(waitTimeout):
		t.Fatal("the closer was not called after a failed write")
	}
	waitDone(t, q)
	// The queue left the connection to the closer: it is still open.
	go func() { _, _ = conn.Conn.Write([]byte("x")) }()
	if got := readN(t, peer, 1); string(got) != "x" {
		t.Fatalf("peer read %q", got)
	}
}

// A peer that stops reading is cut by the write deadline.
func TestWriteTimeoutEndsQueue(t *testing.T) {
	q := New(1<<20, nil)
	conn, _ := pipe(t) // the peer never reads
	q.Start(conn, 20*time.Millisecond)
	if err := q.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	waitDone(t, q)
	if err := q.Err(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Err = %v, want an error wrapping os.ErrDeadlineExceeded", err)
	}
}

// checkProducerLines checks that got holds every "p<producer>-<item>" line
// once, each producer's in its order.
func checkProducerLines(t *testing.T, got []byte, producers, perProducer int) {
	t.Helper()
	next := make([]int, producers)
	lines := bytes.Split(bytes.TrimSuffix(got, []byte("\n")), []byte("\n"))
	if len(lines) != producers*perProducer {
		t.Fatalf("got %d lines, want %d", len(lines), producers*perProducer)
	}
	for _, l := range lines {
		var p, i int
		if _, err := fmt.Sscanf(string(l), "p%d-%04d", &p, &i); err != nil || p < 0 || p >= producers {
			t.Fatalf("garbled line %q", l)
		}
		if i != next[p] {
			t.Fatalf("producer %d: line %d arrived when %d was expected", p, i, next[p])
		}
		next[p]++
	}
}

// Self-writing mode: items are written in order without a Run loop, Done
// closes after Close once everything is written, and a failed write ends it.
func TestStartWritesAndDrains(t *testing.T) {
	w, r := pipe(t)
	q := New(1<<20, nil)
	q.Start(w, time.Second)
	all, each := items(50)
	for _, it := range each {
		if err := q.Write(it); err != nil {
			t.Fatal(err)
		}
	}
	if got := readN(t, r, len(all)); !bytes.Equal(got, all) {
		t.Fatalf("got %q, want %q", got, all)
	}
	select {
	case <-q.Done():
		t.Fatal("Done before Close")
	default:
	}
	_ = q.Write([]byte("last"))
	q.Close()
	if got := readN(t, r, 4); string(got) != "last" {
		t.Fatalf("after Close got %q", got)
	}
	select {
	case <-q.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after Close and flush")
	}
	if q.Err() != nil {
		t.Fatalf("Err = %v", q.Err())
	}
}

func TestStartWriteErrorEndsIt(t *testing.T) {
	w, r := pipe(t)
	r.Close()
	q := New(1<<20, nil)
	q.Start(w, time.Second)
	_ = q.Write([]byte("into a closed pipe"))
	select {
	case <-q.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after a write error")
	}
	if q.Err() == nil {
		t.Fatal("no error after writing to a closed peer")
	}
	if err := q.Write([]byte("x")); err == nil {
		t.Fatal("Write accepted after the queue failed")
	}
}
