package netx

import (
	"context"
	"net"
	"time"
)

// Client listeners. A server that takes a connection per login pays for
// every system call made on each accepted socket. The standard library
// turns TCP keep-alive on for each accepted connection, four setsockopt
// calls each; Listen sets it once on the listening socket instead, where
// Linux has every accepted socket inherit it (the same 15 s probes). On
// Linux it also sets TCP_DEFER_ACCEPT: a connection is handed to accept
// only once its first bytes have arrived, so the server's first read finds
// the login instead of waiting for it in the poller (a wasted read and a
// wake-up per connection), and a peer that connects and says nothing
// costs the server neither a descriptor nor a goroutine.

// keepAlive is the TCP keep-alive of client connections: the standard
// library's defaults (idle 15 s, then a probe every 15 s, 9 probes).
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 9}

// deferAccept is how long a connection may wait for its first bytes before
// the kernel hands it to accept anyway. Linux rounds it up to its SYN-ACK
// retransmissions (1+2+4+8 s): about 15 s.
const deferAccept = 10 * time.Second

// Listen listens for clients on the TCP address addr, as described above.
// Protocols where the client speaks first only: chat lines, HTTP and TLS.
func Listen(addr string) (net.Listener, error) {
	lc := listenConfig()
	return lc.Listen(context.Background(), "tcp", addr)
}
