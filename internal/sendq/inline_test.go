package sendq

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/tcptest"
)

// smallBufferPair is tcptest.Pair with 16 KiB socket buffers, so that a write of
// a few MiB to a peer that does not read is only partly taken.
func smallBufferPair(t *testing.T) (local, peer *net.TCPConn) {
	t.Helper()
	w, r := tcptest.Pair(t)
	if err := w.SetWriteBuffer(16 << 10); err != nil {
		t.Fatal(err)
	}
	if err := r.SetReadBuffer(16 << 10); err != nil {
		t.Fatal(err)
	}
	return w, r
}

// flushCounter counts the queue's writes and the items and bytes they
// carried.
type flushCounter struct{ writes, items, bytes atomic.Int64 }

func (f *flushCounter) flushed(bytes, items int, _ time.Duration) {
	f.writes.Add(1)
	f.items.Add(int64(items))
	f.bytes.Add(int64(bytes))
}

// An idle started queue is written by the producer itself, before Append
// returns: no goroutine, no wake-up.
func TestAppendWritesInline(t *testing.T) {
	w, r := tcptest.Pair(t)
	var fc flushCounter
	q := New(1<<20, fc.flushed)
	q.Start(w, time.Second)
	for i := range 3 {
		if err := q.Write([]byte("ping\n")); err != nil {
			t.Fatal(err)
		}
		if got := fc.writes.Load(); got != int64(i+1) {
			t.Fatalf("after Append %d: %d writes made before it returned, want %d", i+1, got, i+1)
		}
		if n := q.Len(); n != 0 {
			t.Fatalf("after Append %d: %d bytes still queued", i+1, n)
		}
	}
	if got := readN(t, r, 15); string(got) != "ping\nping\nping\n" {
		t.Fatalf("peer got %q", got)
	}
}

// What one reader queues to several connections while handling a read goes
// out as one write per connection, at Flush, in order.
func TestBatchOneWritePerQueue(t *testing.T) {
	type conn struct {
		q  *Queue
		r  net.Conn
		fc *flushCounter
	}
	var conns []conn
	for range 3 {
		w, r := tcptest.Pair(t)
		fc := &flushCounter{}
		q := New(1<<20, fc.flushed)
		q.Start(w, time.Second)
		conns = append(conns, conn{q, r, fc})
	}
	var b Batch
	all, each := items(20)
	for _, it := range each {
		for _, c := range conns {
			if err := c.q.AppendTo(&b, func(buf []byte) []byte { return append(buf, it...) }); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i, c := range conns {
		if n := c.q.Len(); n != len(all) {
			t.Fatalf("queue %d: %d bytes queued before Flush, want all %d", i, n, len(all))
		}
	}
	b.Flush()
	for i, c := range conns {
		if got := readN(t, c.r, len(all)); !bytes.Equal(got, all) {
			t.Fatalf("queue %d: peer got %q, want %q", i, got, all)
		}
		if w, n := c.fc.writes.Load(), c.fc.items.Load(); w != 1 || n != 20 {
			t.Fatalf("queue %d: %d writes carrying %d items, want 1 write of 20", i, w, n)
		}
	}
	if len(b.qs) != 0 {
		t.Fatalf("batch holds %d queues after Flush", len(b.qs))
	}
}

// Close writes what a batch queued but has not flushed.
func TestCloseWritesUnflushedBatch(t *testing.T) {
	w, r := tcptest.Pair(t)
	q := New(1<<20, nil)
	q.Start(w, time.Second)
	var b Batch
	_ = q.AppendTo(&b, func(buf []byte) []byte { return append(buf, "last words\n"...) })
	q.Close()
	waitDone(t, q)
	if got := readN(t, r, 11); string(got) != "last words\n" {
		t.Fatalf("peer got %q", got)
	}
	b.Flush() // a late flush of a closed queue is harmless
}

// When the socket does not take everything at once, Append still returns
// at once; a writer goroutine sends the rest, and items queued meanwhile
// follow in order.
func TestPartialInlineWriteHandsOff(t *testing.T) {
	w, r := smallBufferPair(t)
	var fc flushCounter
	q := New(64<<20, fc.flushed)
	q.Start(w, 10*time.Second)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB: more than the socket buffers hold
	if err := q.Write(big); err != nil {
		t.Fatal(err)
	}
	if fc.writes.Load() != 0 {
		t.Fatal("8 MiB written inline to a peer that is not reading")
	}
	var want []byte
	want = append(want, big...)
	for i := range 100 {
		item := fmt.Appendf(nil, "after %03d\n", i)
		want = append(want, item...)
		if err := q.Write(item); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, len(want))
	_ = r.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatalf("reading: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes arrived out of order or changed")
	}
	q.Close()
	waitDone(t, q)
	if err := q.Err(); err != nil {
		t.Fatalf("Err = %v", err)
	}
	if got := fc.bytes.Load(); got != int64(len(want)) {
		t.Fatalf("flushed reported %d bytes, %d were written", got, len(want))
	}
}

// Once the writer goroutine has finished, writes are inline again, also
// after its write deadline has passed.
func TestInlineAgainAfterWriterDeadline(t *testing.T) {
	w, r := smallBufferPair(t)
	var fc flushCounter
	const writeTimeout = 300 * time.Millisecond
	q := New(64<<20, fc.flushed)
	q.Start(w, writeTimeout)
	big := bytes.Repeat([]byte("x"), 1<<20) // more than the socket takes at once: the writer goroutine takes the rest
	if err := q.Write(big); err != nil {
		t.Fatal(err)
	}
	if fc.writes.Load() != 0 {
		t.Fatal("1 MiB written inline: the writer goroutine was not needed")
	}
	got := make([]byte, len(big))
	_ = r.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitTimeout)
	for {
		q.mu.Lock()
		idle := !q.writing
		q.mu.Unlock()
		if idle {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("writer goroutine still running")
		}
		time.Sleep(time.Millisecond)
	}
	// The scenario is the time passing: past the writer's deadline.
	time.Sleep(3 * writeTimeout)
	before := fc.writes.Load()
	if err := q.Write([]byte("later\n")); err != nil {
		t.Fatal(err)
	}
	if fc.writes.Load() != before+1 {
		t.Fatal("a write after the writer's deadline was not made inline")
	}
	if got := readN(t, r, 6); string(got) != "later\n" {
		t.Fatalf("peer got %q", got)
	}
}

// An expired write deadline (left by the writer goroutine's last write) does
// not fail the queue: the writer takes over with a fresh deadline.
func TestExpiredDeadlineFallsBackToWriter(t *testing.T) {
	w, r := tcptest.Pair(t)
	q := New(1<<20, nil)
	q.Start(w, time.Second)
	if err := w.SetWriteDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := q.Write([]byte("still here\n")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, r, 11); string(got) != "still here\n" {
		t.Fatalf("peer got %q", got)
	}
	if err := q.Err(); err != nil {
		t.Fatalf("queue failed: %v", err)
	}
}

// A peer that is gone fails the queue, closes the connection and ends it.
func TestInlineWriteErrorEndsQueue(t *testing.T) {
	w, r := tcptest.Pair(t)
	q := New(1<<20, nil)
	q.Start(w, time.Second)
	if err := r.SetLinger(0); err != nil { // close with RST: the next write fails
		t.Fatal(err)
	}
	r.Close()
	// Keep writing until the reset is seen; bounded in count.
	for i := 0; i < 1000 && q.Err() == nil; i++ {
		if err := q.Write([]byte("into a reset connection\n")); err != nil {
			break
		}
		_ = w.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		_, _ = w.Read(make([]byte, 1)) // waits for the RST to arrive, at most 10 ms
	}
	waitDone(t, q)
	if q.Err() == nil {
		t.Fatal("no error after writing to a reset connection")
	}
	if err := q.Write([]byte("x")); err == nil {
		t.Fatal("Write accepted after the queue failed")
	}
}

// Many producers, some batching, some not, over real TCP: every item
// arrives once, each producer's in its order.
func TestMixedProducersTCP(t *testing.T) {
	w, r := tcptest.Pair(t)
	q := New(8<<20, nil)
	q.Start(w, 5*time.Second)
	const producers, perProducer = 6, 300
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b Batch
			for i := range perProducer {
				line := fmt.Appendf(nil, "p%d-%04d\n", p, i)
				var err error
				if p%2 == 0 {
					err = q.AppendTo(&b, func(buf []byte) []byte { return append(buf, line...) })
					if i%7 == 0 {
						b.Flush()
					}
				} else {
					err = q.Write(line)
				}
				if err != nil {
					t.Errorf("producer %d item %d: %v", p, i, err)
					return
				}
			}
			b.Flush()
		}()
	}
	wg.Wait()
	q.Close()
	waitDone(t, q)
	checkProducerLines(t, closeAndReadAll(t, w, r), producers, perProducer)
}

// An item appended with AppendLater is not written on its own: it goes out
// with the next item written, ahead of it, in the same write; or at Kick.
func TestAppendLaterRidesWithNextWriteOrKick(t *testing.T) {
	w, r := tcptest.Pair(t)
	var fc flushCounter
	q := New(1<<20, fc.flushed)
	q.Start(w, time.Second)
	if err := q.AppendLater(func(b []byte) []byte { return append(b, "ack1\n"...) }); err != nil {
		t.Fatal(err)
	}
	if got := fc.writes.Load(); got != 0 || q.Len() != 5 {
		t.Fatalf("after AppendLater: %d writes, %d bytes queued; want none written, 5 queued", got, q.Len())
	}
	if err := q.Write([]byte("data\n")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, r, 10); string(got) != "ack1\ndata\n" {
		t.Fatalf("peer got %q", got)
	}
	if w, n := fc.writes.Load(), fc.items.Load(); w != 1 || n != 2 {
		t.Fatalf("%d writes carrying %d items, want 1 write of 2", w, n)
	}
	_ = q.AppendLater(func(b []byte) []byte { return append(b, "ack2\n"...) })
	q.Kick()
	if got := readN(t, r, 5); string(got) != "ack2\n" {
		t.Fatalf("after Kick, peer got %q", got)
	}
	q.Kick() // nothing pending: no write
	if w := fc.writes.Load(); w != 2 {
		t.Fatalf("%d writes, want 2", w)
	}
}

// Kick writes an AppendLater item even while a Batch holds the queue: the
// batch's producer may not flush for a while.
func TestKickWritesWhileBatchHoldsQueue(t *testing.T) {
	w, r := tcptest.Pair(t)
	q := New(1<<20, nil)
	q.Start(w, time.Second)
	var b Batch
	_ = q.AppendTo(&b, func(buf []byte) []byte { return append(buf, "fwd\n"...) })
	_ = q.AppendLater(func(buf []byte) []byte { return append(buf, "ack\n"...) })
	q.Kick()
	if got := readN(t, r, 8); string(got) != "fwd\nack\n" {
		t.Fatalf("peer got %q", got)
	}
	b.Flush() // nothing left: harmless
}
