// Package netx holds what both servers share about connections: the accept
// loop, a lingering close, and closing a connection at once (TLS included).
package netx

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// Accept waits for the next connection on ln. Temporary failures (a timeout,
// running out of file descriptors) are logged and retried with backoff up to
// a second, so a burst of connections cannot stop a server. It returns nil,
// nil once stopping reports true (the listener was closed on purpose), and
// any other error as final.
func Accept(ln net.Listener, log *slog.Logger, stopping func() bool) (net.Conn, error) {
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err == nil {
			return conn, nil
		}
		if stopping() {
			return nil, nil
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			log.Warn("accept failed, retrying", "addr", ln.Addr().String(), "err", err, "backoff", backoff)
			time.Sleep(backoff)
			continue
		}
		return nil, fmt.Errorf("accept on %s: %w", ln.Addr(), err)
	}
}

// LingerClose closes conn so that what was last written to it reaches the
// peer. Closing a socket with unread input makes the kernel send a reset,
// and a reset can destroy what the peer has not read yet: typically the
// message saying why it was disconnected (a peer that sends junk is still
// sending). So LingerClose ends our side first, then discards input until
// the peer hangs up, for at most d and maxBytes. Over TLS our end is a
// close_notify alert (crypto/tls bounds its write), then the TCP half-close,
// and the input discarded is the raw bytes under the TLS layer. A connection
// without a half-close is simply closed.
func LingerClose(conn net.Conn, d time.Duration, maxBytes int) {
	if tc, ok := conn.(*tls.Conn); ok {
		_ = tc.CloseWrite()
		conn = tc.NetConn()
	}
	cw, ok := conn.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		conn.Close()
		return
	}
	_ = conn.SetReadDeadline(time.Now().Add(d))
	var buf [512]byte
	for n := 0; n < maxBytes; {
		m, err := conn.Read(buf[:])
		if err != nil {
			break
		}
		n += m
	}
	conn.Close()
}

// SourceKey is the source a per-address limit counts a connection under:
// its IPv4 address, or the /64 of its IPv6 address (one subscriber's block,
// from which an attacker could otherwise spray addresses). ok is false for
// a connection that is not TCP.
func SourceKey(addr net.Addr) (key netip.Addr, ok bool) {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	a := ta.AddrPort().Addr().Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr(), true
	}
	return a, true
}
