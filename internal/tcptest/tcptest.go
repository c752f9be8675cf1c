// Package tcptest gives tests real loopback TCP connections: what inline
// writes and the poller need (net.Pipe has no file descriptor). It imports
// nothing of the project, so every package's tests can use it.
package tcptest

import (
	"net"
	"testing"
)

// Pairs returns n connected loopback TCP pairs: the accepted (server) side
// and the dialled (client) side of each. All are closed when the test ends.
func Pairs(t testing.TB, n int) (server, client []*net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Cleanup(func() {
		for i := range server {
			server[i].Close()
			client[i].Close()
		}
	})
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept() // the kernel completed the handshake before Accept
		if err != nil {
			c.Close()
			t.Fatal(err)
		}
		server = append(server, s.(*net.TCPConn))
		client = append(client, c.(*net.TCPConn))
	}
	return server, client
}

// Pair returns one connected pair: the server side and the client side.
func Pair(t testing.TB) (server, client *net.TCPConn) {
	t.Helper()
	s, c := Pairs(t, 1)
	return s[0], c[0]
}
