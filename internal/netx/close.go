package netx

import (
	"crypto/tls"
	"net"
)

// CloseNow closes c at once. A TLS connection's transport is closed
// without the close_notify alert: tls.Conn.Close writes that alert first,
// and when the peer is not reading the write waits up to 5 s, on whatever
// goroutine closes (maybe one that serves other peers). Use it wherever a
// connection is dropped rather than ended politely.
func CloseNow(c net.Conn) error {
	if tc, ok := c.(*tls.Conn); ok {
		return tc.NetConn().Close()
	}
	return c.Close()
}
