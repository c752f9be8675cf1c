// Package netx holds what both servers share about connections: the accept
// loop, and closing a connection at once (TLS included).
package netx

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
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
