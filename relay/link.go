package relay

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/chatrelay/chatrelay/internal/netx"
	"github.com/chatrelay/chatrelay/internal/sendq"
	"github.com/chatrelay/chatrelay/wire"
)

// link is one authenticated uplink from a message server.
type link struct {
	r      *Relay
	conn   net.Conn
	server string
	remote string
	local  string // the address it was accepted on: the VIP its server dialled
	q      *sendq.Queue
	stats  *wire.LinkStats

	closeOnce sync.Once
}

func (l *link) close() {
	l.closeOnce.Do(func() {
		l.q.Close()
		_ = netx.CloseNow(l.conn)
	})
}

// serveConn runs one accepted connection, admitted by the handshake gate p:
// handshake (guard.go), then the link loops.
func (r *Relay) serveConn(conn net.Conn, p *pendingConn) {
	remote := conn.RemoteAddr().String()
	_ = conn.SetDeadline(time.Now().Add(r.cfg.HandshakeTimeout))
	conn, ok := r.startTLS(conn, remote) // tls.go
	if !ok {
		r.gate.leave(p)
		return
	}
	server, err := r.handshake(conn, p)
	if err != nil {
		if errors.Is(err, wire.ErrProbe) {
			r.log.Debug("link port probed", "remote", remote)
			return
		}
		r.refused(remote, server, err)
		return
	}

	fr := wire.NewReader(netx.NewReader(conn), r.cfg.MaxFrame) // the full frame size only now
	l := &link{r: r, conn: conn, server: server, remote: remote, local: conn.LocalAddr().String(), stats: &wire.LinkStats{}}
	l.stats.LastRecv.Store(time.Now().UnixNano())
	l.q = sendq.New(r.cfg.MaxQueueBytes, func(n, items int, waited time.Duration) {
		l.stats.BytesOut.Add(uint64(n))
		l.stats.FramesOut.Add(uint64(items))
		r.m.flushed(n, items, waited)
	})
	l.q.Start(conn, r.cfg.WriteTimeout) // written inline by the readers that route to it (over TLS, by its writer goroutine)
	r.register(l)
	r.log.Info("link up", "server", server, "remote", remote)

	pings := make(chan struct{})
	go func() {
		defer close(pings)
		l.pingLoop()
	}()
	err = l.readLoop(fr)
	r.unregister(l)
	l.close()
	<-pings
	<-l.q.Done()
	if werr := l.q.Err(); werr != nil {
		r.log.Debug("link write ended", "server", server, "err", werr)
	}
	reason := "closed"
	if err != nil {
		reason = err.Error()
	}
	r.log.Info("link down", "server", server, "remote", remote, "reason", reason)
}

// readLoop reads frames until the link fails and routes each one.
func (l *link) readLoop(fr *wire.Reader) error {
	self := []byte(l.server)
	deadAfter := l.r.cfg.DeadAfter
	var deadlineSet time.Time
	// Frames routed while handling one read are written once per
	// destination link, when nothing more is buffered. The counters, the
	// clock and the read deadline are also touched once per read, not per
	// frame: at saturation they were a fifth of the relay's CPU.
	var batch sendq.Batch
	var c readCounts
	defer func() {
		batch.Flush()
		l.publish(&c)
	}()
	for {
		if !fr.Ready() {
			batch.Flush()
			now := l.publish(&c)
			// Moving the deadline costs a timer update; do it a few times
			// per dead-after period, not per read.
			if now.Sub(deadlineSet) > deadAfter/4 {
				deadlineSet = now
				_ = l.conn.SetReadDeadline(now.Add(deadAfter))
			}
		}
		typ, body, raw, err := fr.Next()
		if err != nil {
			if errors.Is(err, io.EOF) || l.r.ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return fmt.Errorf("no frame for %s: peer dead", deadAfter)
			}
			return err
		}
		c.frames++
		c.bytes += len(raw)

		switch typ {
		case wire.TypeForward, wire.TypeAck, wire.TypeKick:
			origin, dest, err := wire.RouteOf(typ, body)
			if err != nil {
				return fmt.Errorf("bad frame type %d: %w", typ, err)
			}
			if !bytes.Equal(origin, self) {
				return fmt.Errorf("frame claims origin %q on the link of %q", origin, l.server)
			}
			if l.forward(&batch, typ, body, raw, dest) {
				c.forwarded++
			}
		case wire.TypePing:
			nanos, err := wire.ParsePing(body)
			if err != nil {
				return fmt.Errorf("bad ping: %w", err)
			}
			l.send(&batch, func(b []byte) []byte { return wire.AppendPing(b, wire.TypePong, nanos) })
		case wire.TypePong:
			nanos, err := wire.ParsePing(body)
			if err != nil {
				return fmt.Errorf("bad pong: %w", err)
			}
			rtt := time.Duration(time.Now().UnixNano() - nanos)
			l.stats.RTT.Store(int64(rtt))
			l.r.m.rtt(l.server, rtt)
		default:
			return fmt.Errorf("%w: %d on an established link", wire.ErrBadType, typ)
		}
	}
}

// readCounts is what a link's reader has taken in since it last published.
type readCounts struct{ frames, bytes, forwarded int }

// publish adds c to the link's stats and the metrics, notes now as the
// time of the last frame if there was one, and returns now.
func (l *link) publish(c *readCounts) time.Time {
	now := time.Now()
	if c.frames == 0 {
		return now
	}
	l.stats.FramesIn.Add(uint64(c.frames))
	l.stats.BytesIn.Add(uint64(c.bytes))
	l.stats.LastRecv.Store(now.UnixNano())
	l.r.m.received(c.bytes)
	l.r.m.forwardedN(c.forwarded)
	*c = readCounts{}
	return now
}

// forward passes a routable frame to the destination's link unchanged. A
// Forward that cannot be passed on is answered with a Nack so the origin
// retries; a lost Ack or Kick is recovered by the origin's own timers.
//
// It reports whether it passed on a Forward (for the forwarded count).
func (l *link) forward(batch *sendq.Batch, typ byte, body, raw, dest []byte) bool {
	dst := l.r.route(dest)
	if dst != nil {
		err := dst.q.AppendTo(batch, func(b []byte) []byte { return append(b, raw...) })
		if err == nil {
			return typ == wire.TypeForward
		}
		if errors.Is(err, sendq.ErrFull) {
			l.r.log.Warn("cutting slow link", "server", dst.server, "queued_bytes", dst.q.Len())
			l.r.m.slowLink()
			dst.close()
		}
	}
	if typ != wire.TypeForward {
		l.r.m.dropped()
		return false
	}
	l.r.m.noRoute()
	f, err := wire.ParseForward(body)
	if err != nil {
		return false
	}
	l.send(batch, func(b []byte) []byte {
		return wire.AppendAck(b, wire.TypeNack, wire.Ack{ID: f.ID, Origin: f.Origin, Dest: f.Dest, Code: wire.NackNoRoute})
	})
	return false
}

// send queues a frame the relay itself originates on this link.
func (l *link) send(batch *sendq.Batch, fn func([]byte) []byte) {
	if err := l.q.AppendTo(batch, fn); errors.Is(err, sendq.ErrFull) {
		l.r.log.Warn("cutting slow link", "server", l.server)
		l.r.m.slowLink()
		l.close()
	}
}

// pingLoop pings the link every PingInterval until it closes, so a dead
// server is noticed (by its silence) even when no traffic flows.
func (l *link) pingLoop() {
	t := time.NewTicker(l.r.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			now := time.Now().UnixNano()
			err := l.q.Append(func(b []byte) []byte { return wire.AppendPing(b, wire.TypePing, now) })
			if errors.Is(err, sendq.ErrFull) {
				continue // the writer is behind; the next tick pings again
			}
			if err != nil {
				return // closed
			}
		case <-l.r.ctx.Done():
			return
		}
	}
}
