package main

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// dQueue is the direct node's outbound side of one connection: a bounded
// byte queue that producers append to without blocking, drained by one
// writer goroutine per connection (run) that takes everything queued so far
// in one write. It is the plain design the relay tier is measured against:
// the tier writes inline from the producer instead (internal/sendq).
type dQueue struct {
	max    int
	notify chan struct{} // a producer appended: run has work
	done   chan struct{} // closed by close: run drains and returns

	mu     sync.Mutex
	buf    []byte
	closed bool
}

// errDQueueFull means the peer does not read fast enough: the queue passed
// its byte limit, and the owner cuts the connection, as msgserver does.
// errDQueueClosed means the queue was closed.
var (
	errDQueueFull   = errors.New("outbound queue full: peer too slow")
	errDQueueClosed = errors.New("outbound queue closed")
)

// newDQueue returns a queue that refuses new items once more than maxBytes
// are unwritten (so it may hold maxBytes plus one item).
func newDQueue(maxBytes int) *dQueue {
	return &dQueue{max: maxBytes, notify: make(chan struct{}, 1), done: make(chan struct{})}
}

// append lets fn append one item to the pending buffer and wakes run. It
// never blocks on the network.
func (q *dQueue) append(fn func([]byte) []byte) error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return errDQueueClosed
	}
	if len(q.buf) > q.max {
		q.mu.Unlock()
		return errDQueueFull
	}
	q.buf = fn(q.buf)
	q.mu.Unlock()
	select {
	case q.notify <- struct{}{}:
	default:
	}
	return nil
}

// write queues a copy of p.
func (q *dQueue) write(p []byte) error {
	return q.append(func(b []byte) []byte { return append(b, p...) })
}

// close makes run return once it has written what is already queued
// (bounded by the write timeout). Appends after close fail.
func (q *dQueue) close() {
	q.mu.Lock()
	if !q.closed {
		q.closed = true
		close(q.done)
	}
	q.mu.Unlock()
}

// run writes queued bytes to conn until the queue is closed or a write
// fails; each write has the given deadline. It returns nil after a close
// with everything written, or the write error.
func (q *dQueue) run(conn net.Conn, writeTimeout time.Duration) error {
	var spare []byte
	for {
		select {
		case <-q.notify:
		case <-q.done:
		}
		q.mu.Lock()
		out, closed := q.buf, q.closed
		q.buf = spare[:0]
		q.mu.Unlock()
		if len(out) > 0 {
			if writeTimeout > 0 {
				_ = conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			}
			if _, err := conn.Write(out); err != nil {
				q.close()
				return fmt.Errorf("write %d bytes: %w", len(out), err)
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
