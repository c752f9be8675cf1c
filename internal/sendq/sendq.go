// Package sendq is the outbound side of every connection in the project: a
// bounded byte queue that producers append encoded frames or lines to, and one
// writer goroutine that drains it with a single write per batch.
//
// Producers never block on the network: Append copies into the pending buffer
// and returns. When the pending bytes exceed the limit the queue reports
// ErrFull and the owner cuts the connection (a slow consumer is cut, not
// waited for). The writer swaps the pending buffer for an empty one and
// writes everything queued so far in one syscall, so under load many frames
// share a write and at low rates nothing waits for a timer.
package sendq

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// ErrFull means the peer is not reading fast enough: the queue passed its
// byte limit. ErrClosed means the queue was closed.
var (
	ErrFull   = errors.New("outbound queue full: peer too slow")
	ErrClosed = errors.New("outbound queue closed")
)

// Queue is a bounded outbound byte queue for one connection.
type Queue struct {
	max    int
	notify chan struct{}
	done   chan struct{}

	mu      sync.Mutex
	buf     []byte
	items   int
	oldest  time.Time // when the first item now pending was appended
	closed  bool
	flushed func(bytes, items int, waited time.Duration)

	// Self-writing mode (Start): a goroutine exists only while there is
	// something to write.
	conn         net.Conn
	writeTimeout time.Duration
	writing      bool
	spare        []byte
	werr         error
	drained      chan struct{}
	drainedOnce  sync.Once
}

// New returns a queue that refuses new items once more than maxBytes are
// unwritten (so it may hold maxBytes plus one item).
// flushed, if not nil, is called after each write with its size in bytes, in
// items (calls to Append), and how long its oldest item waited; use it for
// metrics.
func New(maxBytes int, flushed func(bytes, items int, waited time.Duration)) *Queue {
	return &Queue{
		max:     maxBytes,
		notify:  make(chan struct{}, 1),
		done:    make(chan struct{}),
		flushed: flushed,
	}
}

// Append lets fn append one item to the pending buffer. It never blocks on
// the network.
func (q *Queue) Append(fn func([]byte) []byte) error {
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
	q.buf = fn(q.buf)
	q.items++
	start := q.conn != nil && !q.writing
	if start {
		q.writing = true
	}
	q.mu.Unlock()
	if start {
		go q.flushLoop()
		return nil
	}
	select {
	case q.notify <- struct{}{}:
	default:
	}
	return nil
}

// NewWriter returns a queue that writes to conn by itself (see Start),
// without the channels a Run loop needs: the form for many idle
// connections, where every byte per connection counts.
func NewWriter(maxBytes int, conn net.Conn, writeTimeout time.Duration) *Queue {
	q := &Queue{max: maxBytes}
	q.Start(conn, writeTimeout)
	return q
}

// Start makes the queue write to conn by itself, instead of a Run loop:
// a goroutine is started when items arrive and ends when the queue is
// empty, so an idle connection costs no goroutine. Done is closed once the
// queue is closed and everything is written, or a write failed.
func (q *Queue) Start(conn net.Conn, writeTimeout time.Duration) {
	q.mu.Lock()
	q.conn, q.writeTimeout = conn, writeTimeout
	q.drained = make(chan struct{})
	start := len(q.buf) > 0
	q.writing = start
	closed := q.closed
	q.mu.Unlock()
	switch {
	case start:
		go q.flushLoop()
	case closed:
		q.drainedOnce.Do(func() { close(q.drained) })
	}
}

// Done is closed when a started queue is closed and drained (see Start).
func (q *Queue) Done() <-chan struct{} { return q.drained }

// Err is the write error that ended a started queue, if any.
func (q *Queue) Err() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.werr
}

func (q *Queue) flushLoop() {
	for {
		q.mu.Lock()
		if len(q.buf) == 0 || q.werr != nil {
			q.writing = false
			closed := q.closed
			q.mu.Unlock()
			if closed {
				q.drainedOnce.Do(func() { close(q.drained) })
			}
			return
		}
		out, items, oldest := q.buf, q.items, q.oldest
		q.buf, q.items = q.spare[:0], 0
		q.spare = nil
		q.mu.Unlock()

		if q.writeTimeout > 0 {
			_ = q.conn.SetWriteDeadline(time.Now().Add(q.writeTimeout))
		}
		_, err := q.conn.Write(out)
		if err == nil && q.flushed != nil {
			q.flushed(len(out), items, time.Since(oldest))
		}
		q.mu.Lock()
		if cap(out) <= 4<<10 && q.spare == nil {
			q.spare = out // small buffers are reused; big ones go back to the GC
		}
		if err != nil {
			q.werr = fmt.Errorf("write %d bytes: %w", len(out), err)
			q.closed = true
			q.buf = nil
		}
		q.mu.Unlock()
		if err != nil {
			// The peer is gone or stuck: close the connection so its reader
			// ends too, instead of queueing into a dead writer.
			q.conn.Close()
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

// Close stops the writer after it has written what is already queued
// (bounded by the write timeout). Appends after Close fail.
func (q *Queue) Close() {
	q.mu.Lock()
	if !q.closed {
		q.closed = true
		if q.done != nil {
			close(q.done)
		}
	}
	idle := q.conn != nil && !q.writing
	q.mu.Unlock()
	if idle { // nothing pending and no writer: drained now
		q.drainedOnce.Do(func() { close(q.drained) })
	}
}

// Run writes queued bytes to conn until the queue is closed or a write fails.
// Each write has the given deadline. It returns nil after a Close with
// everything flushed, or the write error.
func (q *Queue) Run(conn net.Conn, writeTimeout time.Duration) error {
	var spare []byte
	for {
		select {
		case <-q.notify:
		case <-q.done:
		}
		q.mu.Lock()
		out, items, oldest, closed := q.buf, q.items, q.oldest, q.closed
		q.buf, q.items = spare[:0], 0
		q.mu.Unlock()
		if len(out) > 0 {
			if writeTimeout > 0 {
				_ = conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			}
			if _, err := conn.Write(out); err != nil {
				q.Close()
				return fmt.Errorf("write %d bytes: %w", len(out), err)
			}
			if q.flushed != nil {
				q.flushed(len(out), items, time.Since(oldest))
			}
		}
		// Keep the buffer for the next round unless one burst made it huge.
		if cap(out) <= 1<<20 {
			spare = out
		} else {
			spare = nil
		}
		if closed {
			q.mu.Lock()
			empty := len(q.buf) == 0
			q.mu.Unlock()
			if empty {
				return nil
			}
		}
	}
}
