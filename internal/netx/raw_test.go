package netx_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/netx"
	"github.com/chatrelay/chatrelay/internal/tcptest"
)

// The raw reader reads what the peer wrote, waits for more in the poller,
// reports the peer's close as io.EOF, a passed read deadline as a timeout,
// and a closed connection as net.ErrClosed: what the servers' read loops
// act on.
func TestRawReader(t *testing.T) {
	srv, cli := tcptest.Pairs(t, 1)
	r := netx.NewReader(srv[0])
	if r == net.Conn(srv[0]) {
		t.Fatal("a TCP connection got no raw reader")
	}
	br := bufio.NewReader(r)

	if _, err := cli[0].Write([]byte("one\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := br.ReadString('\n'); err != nil || line != "one\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	// Nothing there yet: the read waits until the peer writes.
	go func() {
		time.Sleep(20 * time.Millisecond)
		_, _ = cli[0].Write([]byte("two\n"))
	}()
	if line, err := br.ReadString('\n'); err != nil || line != "two\n" {
		t.Fatalf("second line %q, %v", line, err)
	}

	_ = srv[0].SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	_, err := br.ReadString('\n')
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
	_ = srv[0].SetReadDeadline(time.Time{})

	if _, err := cli[0].Write([]byte("last")); err != nil {
		t.Fatal(err)
	}
	cli[0].Close()
	if rest, err := io.ReadAll(br); err != nil || string(rest) != "last" {
		t.Fatalf("after the peer closed: %q, %v; want \"last\" and EOF", rest, err)
	}

	srv[0].Close()
	if _, err := r.Read(make([]byte, 8)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read of a closed connection: %v, want net.ErrClosed", err)
	}
}

// A connection without a descriptor of its own is read as it is.
func TestRawReaderFallsBack(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if r := netx.NewReader(a); r != a {
		t.Fatalf("net.Pipe got %T, want the conn itself", r)
	}
}

// A raw write to a socket the peer does not read stops with EAGAIN
// instead of blocking.
func TestRawWriteFullSocket(t *testing.T) {
	srv, _ := tcptest.Pairs(t, 1)
	rc, err := srv[0].SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	total := 0
	for range 4096 { // bounded: a socket takes a few MB at most
		var n int
		var errno syscall.Errno
		_ = rc.Write(func(fd uintptr) bool {
			n, errno = netx.RawWrite(fd, chunk)
			return true
		})
		switch {
		case errno == syscall.EAGAIN && total > 0:
			return
		case errno != 0:
			t.Fatalf("write after %d bytes: %v", total, errno)
		}
		total += n
	}
	t.Fatalf("wrote %d bytes to a socket nobody reads without EAGAIN", total)
}

// An empty read or write is no system call and no panic, as with the
// standard library.
func TestRawEmpty(t *testing.T) {
	if n, errno := netx.RawWrite(^uintptr(0), nil); n != 0 || errno != 0 {
		t.Fatalf("empty write: %d, %v", n, errno)
	}
	if n, errno := netx.RawRead(^uintptr(0), []byte{}); n != 0 || errno != 0 {
		t.Fatalf("empty read: %d, %v", n, errno)
	}
}
