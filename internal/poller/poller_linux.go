//go:build linux

package poller

import (
	"errors"
	"fmt"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Poller watches connections for readability, one notification per Wait.
//
// The invariant that keeps file descriptors safe: a connection is in the
// epoll set only while it has a waiter in the map, and it is removed (under
// the lock) by whoever takes the waiter out: the loop, to run it, or the
// cancel function. Owners close a waiting connection only after cancel, so
// the poller never touches a descriptor number that was closed and reused.
type Poller struct {
	epfd, wakefd int
	done         chan struct{}

	mu      sync.Mutex
	waiters map[uint64]waiter
	next    uint64
	closed  bool
}

type waiter struct {
	fd int
	w  Waiter
}

// wakeToken is the eventfd's token: Close writes to it to stop the loop.
const wakeToken = 0

// New creates the epoll set and starts the loop goroutine; Close stops it.
func New() (*Poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setToken(&ev, wakeToken)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("epoll_ctl add eventfd: %w", err)
	}
	p := &Poller{epfd: epfd, wakefd: wakefd, done: make(chan struct{}), waiters: make(map[uint64]waiter)}
	go p.loop()
	return p, nil
}

func setToken(ev *unix.EpollEvent, tok uint64) {
	ev.Fd, ev.Pad = int32(uint32(tok)), int32(uint32(tok>>32))
}

func token(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// Wait arranges for w.Wake to run on a new goroutine once rc's connection
// has input or is closed by the peer (input that is already there counts).
// Cancel with the returned token removes the wait.
func (p *Poller) Wait(rc syscall.RawConn, w Waiter) (tok Token, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0, ErrClosed
	}
	p.next++
	tok = Token(p.next)
	var cerr error
	fd := -1
	err = rc.Control(func(sysfd uintptr) {
		fd = int(sysfd)
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT}
		setToken(&ev, uint64(tok))
		cerr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("epoll_ctl add: %w", err)
	}
	p.waiters[uint64(tok)] = waiter{fd: fd, w: w}
	return tok, nil
}

// Cancel removes the wait tok and reports whether it did; false means its
// Wake has been or is being started (or tok was cancelled already).
func (p *Poller) Cancel(tok Token) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	w, ok := p.waiters[uint64(tok)]
	if ok {
		delete(p.waiters, uint64(tok))
		_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, w.fd, nil)
	}
	return ok
}

// Waiting returns how many connections are waiting.
func (p *Poller) Waiting() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.waiters)
}

func (p *Poller) loop() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return // the set was closed under us: nothing left to serve
		}
		for i := range events[:n] {
			tok := token(&events[i])
			p.mu.Lock()
			if tok == wakeToken && p.closed {
				p.mu.Unlock()
				return
			}
			w, ok := p.waiters[tok]
			if ok {
				delete(p.waiters, tok)
				_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, w.fd, nil)
			}
			p.mu.Unlock()
			if ok {
				go w.w.Wake()
			}
		}
	}
}

// Close stops the loop and releases the epoll set. Waits not cancelled
// are dropped: their functions never run.
func (p *Poller) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	clear(p.waiters)
	p.mu.Unlock()
	var one [8]byte
	one[0] = 1 // eventfd counters are host-endian; any non-zero value wakes it
	if _, err := unix.Write(p.wakefd, one[:]); err != nil {
		return fmt.Errorf("wake poller: %w", err)
	}
	<-p.done
	unix.Close(p.wakefd)
	return unix.Close(p.epfd)
}
