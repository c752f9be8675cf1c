package testenv

import (
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// CutProxy forwards TCP to a Redis and, once, cuts the connection that
// carries a command containing trigger just as Redis's reply to it comes
// back: Redis has run the command, the client never hears of it, and
// go-redis sends it again on a new connection (unless its retries are
// off). It starts armed; Arm arms it for one more cut.
type CutProxy struct {
	ln      net.Listener
	target  string
	trigger []byte
	armed   atomic.Bool
	cuts    atomic.Int32
	wg      sync.WaitGroup
}

func StartCutProxy(t *testing.T, target, trigger string) *CutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &CutProxy{ln: ln, target: target, trigger: []byte(trigger)}
	p.armed.Store(true)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *CutProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		var triggered atomic.Bool
		p.wg.Add(2)
		go func() { // client -> Redis
			defer p.wg.Done()
			defer s.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if p.armed.Load() && bytes.Contains(buf[:n], p.trigger) {
						triggered.Store(true)
					}
					if _, werr := s.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		go func() { // Redis -> client
			defer p.wg.Done()
			defer c.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := s.Read(buf)
				if n > 0 {
					if triggered.Load() && p.armed.CompareAndSwap(true, false) {
						p.cuts.Add(1)
						s.Close()
						return // the reply is lost with the connection
					}
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					if err != io.EOF {
						return
					}
					return
				}
			}
		}()
	}
}

// Arm makes the proxy cut the next connection that carries the trigger.
func (p *CutProxy) Arm() { p.armed.Store(true) }

// Cuts is how many connections the proxy has cut.
func (p *CutProxy) Cuts() int32 { return p.cuts.Load() }

// Addr is the proxy's address, for the client under test.
func (p *CutProxy) Addr() string { return p.ln.Addr().String() }
