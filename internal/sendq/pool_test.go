//go:build !race

// The race detector makes sync.Pool drop items at random, so these tests of
// what a write allocates run without it.

package sendq

import (
	"io"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/tcptest"
)

// A batch of many items, written in one write, costs no allocation once
// the pools hold buffers of its size: the buffer moves up a class before it
// fills and goes back to its pool after the write. Growing by append made
// a new buffer, and its larger successors, for every write.
func TestBatchWriteReusesBuffers(t *testing.T) {
	w, r := tcptest.Pair(t)
	go func() { _, _ = io.Copy(io.Discard, r) }()
	q := NewWriter(64<<20, w, time.Second)
	item := make([]byte, 200)
	appendItem := func(b []byte) []byte { return append(b, item...) }
	var b Batch
	round := func() {
		for range 100 { // 20 KB: a buffer of the 32 KB class
			if err := q.AppendTo(&b, appendItem); err != nil {
				t.Fatal(err)
			}
		}
		b.Flush()
	}
	round() // fills the pools
	if allocs := testing.AllocsPerRun(50, round); allocs >= 1 {
		t.Fatalf("%.1f allocations per write of 100 items, want none", allocs)
	}
}

// Only buffers of a class go back to a pool; the classes double from
// poolBufSize.
func TestBufferClasses(t *testing.T) {
	for class := range poolClasses {
		b := getBuf(class)
		if cap(b) != poolBufSize<<class || len(b) != 0 || classOf(cap(b)) != class {
			t.Fatalf("class %d: len %d cap %d", class, len(b), cap(b))
		}
		putBuf(b)
	}
	if classOf(3000) != -1 || classOf(poolBufSize<<poolClasses) != -1 {
		t.Fatal("a size that is no class has one")
	}
}
