package netx

import (
	"crypto/tls"
	"net"
	"syscall"
)

// CloseNow closes c at once. A TLS connection's transport is closed
// without the close_notify alert: tls.Conn.Close writes that alert first,
// and when the peer is not reading the write waits up to 5 s, on whatever
// goroutine closes (maybe one that serves other peers). Use it wherever a
// connection is dropped rather than ended politely.
//
// What has arrived and not been read is discarded first (up to 8 KiB,
// without waiting): a socket closed with unread input ends with a reset
// instead of a FIN, and a reset can destroy what the peer has not read yet,
// such as the line saying why it is refused. A client port's listener
// hands over a connection only once its first line is in (Listen), so a
// connection refused at accept always has input unread.
func CloseNow(c net.Conn) error {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	discardPending(c)
	return c.Close()
}

func discardPending(c net.Conn) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	var buf [4096]byte
	_ = rc.Control(func(fd uintptr) {
		for range 2 {
			if n, errno := RawRead(fd, buf[:]); errno != 0 || n < len(buf) {
				return
			}
		}
	})
}
