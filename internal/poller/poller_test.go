//go:build linux

package poller

import (
	"errors"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/chatrelay/chatrelay/internal/tcptest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitTimeout = 5 * time.Second

func newPoller(t *testing.T) *Poller {
	t.Helper()
	p, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func rawConn(t *testing.T, c syscall.Conn) syscall.RawConn {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

func expect(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitTimeout):
		t.Fatalf("%s: not within %v", what, waitTimeout)
	}
}

// Input, input that was already there, and the peer closing each start
// the waiter's function, once.
func TestWaitFiresOnInputAndClose(t *testing.T) {
	p := newPoller(t)
	conns, peers := tcptest.Pairs(t, 3)

	fired := make(chan struct{}, 3)
	var runs atomic.Int32
	fn := func() { runs.Add(1); fired <- struct{}{} }

	if _, err := p.Wait(rawConn(t, conns[0]), Func(fn)); err != nil {
		t.Fatal(err)
	}
	if _, err := peers[0].Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	expect(t, fired, "input")

	if _, err := peers[1].Write([]byte("early\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1) // make sure it has arrived before Wait
	_ = conns[1].SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := conns[1].Read(buf); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(rawConn(t, conns[1]), Func(fn)); err != nil {
		t.Fatal(err)
	}
	expect(t, fired, "input already buffered")

	if _, err := p.Wait(rawConn(t, conns[2]), Func(fn)); err != nil {
		t.Fatal(err)
	}
	peers[2].Close()
	expect(t, fired, "peer close")

	if got := runs.Load(); got != 3 {
		t.Fatalf("%d runs, want 3", got)
	}
	if n := p.Waiting(); n != 0 {
		t.Fatalf("%d still waiting after all fired", n)
	}
}

// A connection can wait again after each notification (a session parks
// many times in its life).
func TestWaitAgainAfterEachInput(t *testing.T) {
	p := newPoller(t)
	conns, peers := tcptest.Pairs(t, 1)
	rc := rawConn(t, conns[0])
	fired := make(chan struct{}, 1)
	buf := make([]byte, 64)
	for i := range 100 {
		if _, err := p.Wait(rc, Func(func() { fired <- struct{}{} })); err != nil {
			t.Fatalf("wait %d: %v", i, err)
		}
		if _, err := peers[0].Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		expect(t, fired, "input")
		_ = conns[0].SetReadDeadline(time.Now().Add(waitTimeout))
		if _, err := conns[0].Read(buf); err != nil { // consume it, as the owner does
			t.Fatal(err)
		}
	}
}

// Cancel takes the wait back: the function does not run, and the
// connection can wait again.
func TestCancel(t *testing.T) {
	p := newPoller(t)
	conns, peers := tcptest.Pairs(t, 1)
	rc := rawConn(t, conns[0])
	var cancelledRuns atomic.Int32
	tok, err := p.Wait(rc, Func(func() { cancelledRuns.Add(1) }))
	if err != nil {
		t.Fatal(err)
	}
	if !p.Cancel(tok) {
		t.Fatal("cancel of a pending wait reported false")
	}
	if p.Cancel(tok) {
		t.Fatal("second cancel reported true")
	}
	if n := p.Waiting(); n != 0 {
		t.Fatalf("%d waiting after cancel", n)
	}
	fired := make(chan struct{}, 1)
	if _, err := p.Wait(rc, Func(func() { fired <- struct{}{} })); err != nil {
		t.Fatalf("wait after cancel: %v", err)
	}
	if _, err := peers[0].Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	expect(t, fired, "input after re-wait")
	if n := cancelledRuns.Load(); n != 0 {
		t.Fatalf("cancelled function ran %d times", n)
	}
}

// A cancel that loses to the notification says so: the function runs.
func TestCancelAfterFire(t *testing.T) {
	p := newPoller(t)
	conns, peers := tcptest.Pairs(t, 1)
	fired := make(chan struct{}, 1)
	tok, err := p.Wait(rawConn(t, conns[0]), Func(func() { fired <- struct{}{} }))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := peers[0].Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	expect(t, fired, "input")
	if p.Cancel(tok) {
		t.Fatal("cancel after the function started reported true")
	}
}

// Many waiting connections, one loop: each is started exactly once.
func TestManyConnections(t *testing.T) {
	p := newPoller(t)
	const n = 500
	conns, peers := tcptest.Pairs(t, n)
	var runs [n]atomic.Int32
	fired := make(chan struct{}, n)
	for i := range n {
		if _, err := p.Wait(rawConn(t, conns[i]), Func(func() { runs[i].Add(1); fired <- struct{}{} })); err != nil {
			t.Fatal(err)
		}
	}
	if got := p.Waiting(); got != n {
		t.Fatalf("Waiting = %d, want %d", got, n)
	}
	for i := range n {
		if _, err := peers[i].Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for range n {
		expect(t, fired, "input")
	}
	for i := range n {
		if got := runs[i].Load(); got != 1 {
			t.Fatalf("connection %d started %d times", i, got)
		}
	}
}

func TestWaitAfterClose(t *testing.T) {
	p, err := New()
	if err != nil {
		t.Fatal(err)
	}
	conns, _ := tcptest.Pairs(t, 1)
	if _, err := p.Wait(rawConn(t, conns[0]), Func(func() {})); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(rawConn(t, conns[0]), Func(func() {})); !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait after Close: %v, want ErrClosed", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
