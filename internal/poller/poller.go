// Package poller lets many idle connections wait for input without a
// goroutine each. A goroutine blocked in a read costs its stack (4 KB at
// least) for as long as the client is silent; a chat server's clients are
// silent almost all the time. The owner of an idle connection calls Wait
// and lets its goroutine end; when the peer sends something (or closes),
// the poller starts a new goroutine with the function it was given, which
// reads as usual.
//
// On Linux one epoll set and one goroutine serve every waiting connection;
// elsewhere New reports ErrUnsupported and callers keep their goroutines.
package poller

import "errors"

// ErrUnsupported is returned by New where the platform has no poller.
var ErrUnsupported = errors.New("no connection poller on this platform")

// ErrClosed is returned by Wait after Close.
var ErrClosed = errors.New("poller closed")

// Waiter is what a waiting connection's owner gives Wait: Wake runs on a
// new goroutine when the connection has input. An interface rather than a
// function, so that an owner can wait without a closure made per wait.
type Waiter interface{ Wake() }

// Func makes a function a Waiter.
type Func func()

// Wake calls f.
func (f Func) Wake() { f() }

// Token names one wait, for Cancel; never 0.
type Token uint64
