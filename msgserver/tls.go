package msgserver

import (
	"context"
	"crypto/tls"
	"net"

	"github.com/chatrelay/chatrelay/internal/netx"
)

// TLS on the client port (Config.TLS). The handshake runs before anything
// else, on a goroutine of its own bounded by HandshakeTimeout, so a
// stranger that opens a connection and never handshakes holds it for that
// long at most, and the accept loop never waits for anyone. A failed
// handshake (plaintext, a scanner, a client that does not trust the
// certificate) is logged at debug level and counted, never warned about
// once per stranger; nothing is served on it. A session over TLS runs as
// any other: it parks when idle (the poller waits on the TCP socket under
// the TLS layer, see newSession), and its writes go through the queue's
// writer goroutine, since a TLS record cannot be written without blocking.

// handshake runs a new client connection's TLS handshake and then admits
// it, on a goroutine of its own. Its source address is counted first, so
// the per-address cap also bounds the handshakes a stranger can start (each
// costs the server a few milliseconds of CPU); over the cap the connection
// is closed before the handshake, with no line (there is no TLS to send
// one in), and counted as too_many_connections.
func (s *Server) handshake(conn net.Conn) {
	ip, ok := s.ips.open(conn.RemoteAddr())
	if !ok {
		s.m.disconnect(CodeTooManyConns)
		_ = netx.CloseNow(conn)
		return
	}
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		s.ips.close(ip)
		conn.Close() // the listener is closing too: nothing to tell anyone
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		tc := tls.Server(conn, s.cfg.TLS)
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			s.m.tlsHandshakeFailed()
			s.log.Debug("client TLS handshake failed", "remote", conn.RemoteAddr().String(), "err", err)
			_ = netx.CloseNow(tc)
			s.ips.close(ip)
			return
		}
		s.admit(tc, ip)
	}()
}

// netConn is the connection under conn's TLS layer, or conn itself.
func netConn(conn net.Conn) net.Conn {
	if tc, ok := conn.(*tls.Conn); ok {
		return tc.NetConn()
	}
	return conn
}
