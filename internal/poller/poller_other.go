//go:build !linux

package poller

import "syscall"

// Poller is not available on this platform.
type Poller struct{}

// New reports ErrUnsupported.
func New() (*Poller, error) { return nil, ErrUnsupported }

// Wait reports ErrUnsupported.
func (p *Poller) Wait(rc syscall.RawConn, w Waiter) (Token, error) {
	return 0, ErrUnsupported
}

// Cancel reports false.
func (p *Poller) Cancel(tok Token) bool { return false }

// Waiting returns 0.
func (p *Poller) Waiting() int { return 0 }

// Close does nothing.
func (p *Poller) Close() error { return nil }
