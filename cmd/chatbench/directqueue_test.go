package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// writeCounter counts a connection's writes and signals (non-blocking) when
// one begins.
type writeCounter struct {
	net.Conn
	writes  atomic.Int32
	started chan struct{}
}

func (c *writeCounter) Write(p []byte) (int, error) {
	c.writes.Add(1)
	select {
	case c.started <- struct{}{}:
	default:
	}
	return c.Conn.Write(p)
}

// startDQueue runs q.run on one end of a pipe and returns that end, the
// peer's end and run's result. Everything is ended when the test ends.
func startDQueue(t *testing.T, q *dQueue, writeTimeout time.Duration) (*writeCounter, net.Conn, <-chan error) {
	t.Helper()
	a, b := net.Pipe()
	w := &writeCounter{Conn: a, started: make(chan struct{}, 1)}
	done, ended := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(ended)
		done <- q.run(w, writeTimeout)
	}()
	t.Cleanup(func() {
		q.close()
		a.Close()
		b.Close()
		<-ended
	})
	return w, b, done
}

// waitStarted waits for run to begin a write.
func waitStarted(t *testing.T, w *writeCounter) {
	t.Helper()
	select {
	case <-w.started:
	case <-time.After(5 * time.Second):
		t.Fatal("run did not start writing")
	}
}

// waitErr waits for run's result.
func waitErr(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return")
		return nil
	}
}

// What is queued while run is busy goes out in one write, in order, and
// close lets run return only once everything is written.
func TestDQueueCoalescesAndDrainsOnClose(t *testing.T) {
	q := newDQueue(1 << 20)
	w, peer, done := startDQueue(t, q, time.Second)
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))

	want := []byte("first\n")
	if err := q.write(want); err != nil {
		t.Fatal(err)
	}
	waitStarted(t, w) // run holds "first" in a write nobody reads yet
	for i := range 20 {
		item := fmt.Appendf(nil, "item %02d\n", i)
		want = append(want, item...)
		if err := q.append(func(b []byte) []byte { return append(b, item...) }); err != nil {
			t.Fatal(err)
		}
	}
	q.close()
	if err := q.write([]byte("late")); !errors.Is(err, errDQueueClosed) {
		t.Fatalf("write after close: %v, want errDQueueClosed", err)
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(peer, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("peer read %q, %v; want %q", got, err, want)
	}
	if err := waitErr(t, done); err != nil {
		t.Fatalf("run: %v, want nil", err)
	}
	if n := w.writes.Load(); n != 2 {
		t.Errorf("%d writes, want 2 (the first item, then the rest together)", n)
	}
}

// A peer that stops reading fills the queue: appends are refused, not
// blocked, and cutting the connection ends run with its write error.
func TestDQueueFullWhilePeerNotReading(t *testing.T) {
	const max = 100
	q := newDQueue(max)
	w, _, done := startDQueue(t, q, 0)
	if err := q.write([]byte("first\n")); err != nil {
		t.Fatal(err)
	}
	waitStarted(t, w)
	item := []byte("0123456789")
	var err error
	for n := 0; n < 1000 && err == nil; n++ {
		err = q.write(item)
	}
	if !errors.Is(err, errDQueueFull) {
		t.Fatalf("appends to a stuck peer: %v, want errDQueueFull", err)
	}
	w.Close() // the owner cuts the slow consumer
	if err := waitErr(t, done); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("run: %v, want an error wrapping io.ErrClosedPipe", err)
	}
	if err := q.write(item); !errors.Is(err, errDQueueClosed) {
		t.Errorf("write after a failed write: %v, want errDQueueClosed", err)
	}
}
