package netx

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// Reads and writes of a non-blocking socket with a raw system call.
//
// The standard library's reads and writes go through syscall.Syscall,
// which tells the scheduler a goroutine is entering a system call that may
// block. A process that is idle between messages (every processor idle,
// which at a few thousand messages a second is most of the time) has its
// monitor thread asleep, and that notice wakes it: a futex wake, then the
// monitor's own 20 µs sleeps and its futex sleep when it finds nothing to
// do. Profiled at 5 000 msgs/s, that was all of the relay's nanosleep
// calls and two thirds of its futex calls, as many as its reads and
// writes together. A read or write of a non-blocking socket never blocks
// (it returns EAGAIN instead), so it needs no such notice: RawRead and
// RawWrite make it without one. Waiting for readiness still goes through
// the runtime's poller (syscall.RawConn), deadlines included.

// RawRead reads from the non-blocking descriptor fd into p.
func RawRead(fd uintptr, p []byte) (int, syscall.Errno) { return rawIO(syscall.SYS_READ, fd, p) }

// RawWrite writes p to the non-blocking descriptor fd; it returns how
// much the socket took (EAGAIN: nothing).
func RawWrite(fd uintptr, p []byte) (int, syscall.Errno) { return rawIO(syscall.SYS_WRITE, fd, p) }

// rawIO makes the read or write system call trap on fd and p, again when
// a signal interrupted it; an empty p makes none.
func rawIO(trap, fd uintptr, p []byte) (int, syscall.Errno) {
	if len(p) == 0 {
		return 0, 0
	}
	for {
		n, _, errno := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch errno {
		case 0:
			return int(n), 0
		case syscall.EINTR:
		default:
			return 0, errno
		}
	}
}

// NewReader returns a reader of conn that reads with RawRead and waits in
// the runtime's poller, honouring conn's read deadline; conn itself when
// it has no descriptor of its own to read (TLS, WebSocket, a pipe).
func NewReader(conn net.Conn) io.Reader {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return conn
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return conn
	}
	r := &rawReader{rc: rc}
	r.fn = r.read
	return r
}

// rawReader is not safe for concurrent reads: a connection has one reader.
type rawReader struct {
	rc syscall.RawConn
	fn func(fd uintptr) bool // r.read, made once: a closure per Read would be an allocation per read

	p     []byte // the read under way
	n     int
	errno syscall.Errno
}

func (r *rawReader) read(fd uintptr) bool {
	r.n, r.errno = RawRead(fd, r.p)
	return r.errno != syscall.EAGAIN
}

func (r *rawReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.p = p
	err := r.rc.Read(r.fn)
	r.p = nil
	n, errno := r.n, r.errno
	switch {
	case err != nil: // closed, or the deadline passed (a net.Error that says Timeout)
		return 0, err
	case errno != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", errno)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}
