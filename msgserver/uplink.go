package msgserver

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatrelay/chatrelay/health"
	"github.com/chatrelay/chatrelay/internal/sendq"
	"github.com/chatrelay/chatrelay/wire"
)

// outcome is what finally happened to a forwarded message.
type outcome int

const (
	outTaken   outcome = iota // the destination server took it (ack)
	outNotHere                // the destination says the user is not there
	outGaveUp                 // the relay could not route it for NoRouteGiveUp
	outClosed                 // the server shut down before an answer
)

var errBacklogFull = errors.New("too many messages await their ack")

// pending is a forwarded message kept until its end-to-end ack, for resending.
type pending struct {
	id        wire.ID
	dest      string // the server this copy was sent to: acks from others are stale
	frame     []byte
	due       time.Time // resend if not acked by then
	firstNack time.Time
	nacks     int
	done      func(outcome, *sendq.Batch) // b: the uplink reader's batch, or nil
	elem      *list.Element
	parked    bool // nacked: waiting in uplink.parked for its retry time
}

// uplink is the message server's link to the relay: it dials, proves the
// link secret, reconnects with jittered backoff, and owns every forwarded
// message until its ack, resending after a reconnect or a timeout.
type uplink struct {
	cfg       *Config
	log       *slog.Logger
	m         *Metrics
	onForward func(wire.Forward, *sendq.Batch) byte // returns the ack status
	onKick    func(wire.Kick)

	mu       sync.Mutex
	pend     map[wire.ID]*pending
	inflight list.List // sent and waiting, oldest first
	parked   list.List // nacked, waiting to be retried
	q        *sendq.Queue
	conn     net.Conn // the link q writes to; closed when q overflows
	state    health.Link
	stats    *wire.LinkStats

	reconnects atomic.Uint64
}

func newUplink(cfg *Config, log *slog.Logger, m *Metrics, onForward func(wire.Forward, *sendq.Batch) byte, onKick func(wire.Kick)) *uplink {
	u := &uplink{
		cfg:       cfg,
		log:       log,
		m:         m,
		onForward: onForward,
		onKick:    onKick,
		pend:      make(map[wire.ID]*pending),
		stats:     &wire.LinkStats{},
	}
	u.state = health.Link{Server: "relay", Since: time.Now(), Remote: cfg.RelayAddr}
	return u
}

// send queues a Forward and keeps it until done is called with its outcome.
func (u *uplink) send(f *wire.Forward, done func(outcome, *sendq.Batch)) error {
	frame := wire.AppendForward(nil, f)
	var batch sendq.Batch
	u.mu.Lock()
	if len(u.pend) >= u.cfg.MaxUnacked {
		u.mu.Unlock()
		return errBacklogFull
	}
	p := &pending{id: f.ID, dest: f.Dest, frame: frame, done: done, due: time.Now().Add(u.cfg.AckTimeout)}
	u.pend[f.ID] = p
	p.elem = u.inflight.PushBack(p)
	u.m.setUnacked(len(u.pend))
	if u.q != nil {
		u.writeLocked(&batch, frame)
	}
	u.mu.Unlock()
	batch.Flush() // the write, if it is ours, happens outside the lock
	return nil
}

// writeLocked queues a frame on the current link; u.mu is held. With a
// batch, the write waits for b.Flush.
func (u *uplink) writeLocked(b *sendq.Batch, frame []byte) {
	if err := u.q.AppendTo(b, func(buf []byte) []byte { return append(buf, frame...) }); errors.Is(err, sendq.ErrFull) {
		u.log.Warn("relay link queue full, dropping link", "queued_bytes", u.q.Len())
		u.q.Close()
		u.conn.Close() // the reader ends, and the link is redialled with everything resent
	}
}

// control queues a frame that is not kept for resending (acks, kicks).
func (u *uplink) control(fn func([]byte) []byte) {
	u.mu.Lock()
	q := u.q
	u.mu.Unlock()
	if q != nil {
		_ = q.Append(fn)
	}
}

func (u *uplink) ack(b *sendq.Batch, id wire.ID, from string, code byte) {
	u.mu.Lock()
	p := u.pend[id]
	if p == nil || p.dest != from { // a duplicate ack, or one for a copy sent elsewhere before a re-route
		u.mu.Unlock()
		return
	}
	u.removeLocked(p)
	u.mu.Unlock()
	if code == wire.AckNotHere {
		p.done(outNotHere, b)
	} else {
		p.done(outTaken, b)
	}
}

func (u *uplink) removeLocked(p *pending) {
	if p.parked {
		u.parked.Remove(p.elem)
	} else {
		u.inflight.Remove(p.elem)
	}
	delete(u.pend, p.id)
	u.m.setUnacked(len(u.pend))
}

// nack parks a message the relay could not route and retries it with
// backoff; the destination server may be reconnecting after a failover.
func (u *uplink) nack(id wire.ID, dest string) {
	now := time.Now()
	u.mu.Lock()
	p := u.pend[id]
	if p == nil || p.parked || p.dest != dest {
		u.mu.Unlock()
		return
	}
	if p.firstNack.IsZero() {
		p.firstNack = now
	}
	if now.Sub(p.firstNack) > u.cfg.NoRouteGiveUp {
		u.removeLocked(p)
		u.mu.Unlock()
		p.done(outGaveUp, nil)
		return
	}
	u.inflight.Remove(p.elem)
	p.parked = true
	p.due = now.Add(min(u.cfg.BackoffMin<<min(p.nacks, 6), time.Second))
	p.nacks++
	p.elem = u.parked.PushBack(p)
	u.mu.Unlock()
}

// retransmit resends messages whose ack is overdue and parked messages
// whose retry time has come. It runs on a ticker.
func (u *uplink) retransmit(now time.Time) {
	var batch sendq.Batch
	defer batch.Flush() // after the unlock: one write for all of them
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.q == nil {
		return // everything is resent when the link comes back
	}
	var again []*pending
	for e := u.inflight.Front(); e != nil; e = e.Next() {
		p := e.Value.(*pending)
		if p.due.After(now) {
			break // inflight is in due order
		}
		again = append(again, p)
	}
	for e := u.parked.Front(); e != nil; e = e.Next() {
		if p := e.Value.(*pending); !p.due.After(now) {
			again = append(again, p)
		}
	}
	for _, p := range again {
		if p.parked {
			u.parked.Remove(p.elem)
			p.parked = false
		} else {
			u.inflight.Remove(p.elem)
		}
		p.due = now.Add(u.cfg.AckTimeout)
		p.elem = u.inflight.PushBack(p)
		u.writeLocked(&batch, p.frame)
	}
	if len(again) > 0 {
		u.m.resent(len(again))
	}
}

// attach makes q the current link and queues every unacked message on it,
// in the order they were first sent.
func (u *uplink) attach(q *sendq.Queue, conn net.Conn, relayID, remote string) int {
	now := time.Now()
	var batch sendq.Batch
	defer batch.Flush() // after the unlock: the backlog goes out in big writes
	u.mu.Lock()
	defer u.mu.Unlock()
	u.q, u.conn = q, conn
	u.state = health.Link{Server: relayID, Up: true, Since: now, Remote: remote}
	for u.parked.Len() > 0 {
		p := u.parked.Remove(u.parked.Front()).(*pending)
		p.parked = false
		p.elem = u.inflight.PushBack(p)
	}
	for e := u.inflight.Front(); e != nil; e = e.Next() {
		p := e.Value.(*pending)
		p.due = now.Add(u.cfg.AckTimeout)
		u.writeLocked(&batch, p.frame)
	}
	return u.inflight.Len()
}

func (u *uplink) detach(q *sendq.Queue) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.q == q {
		u.q, u.conn = nil, nil
		u.state.Up = false
		u.state.Since = time.Now()
	}
}

// unacked returns how many forwarded messages await their ack.
func (u *uplink) unacked() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.pend)
}

// abandon ends every pending message with outClosed (at shutdown).
func (u *uplink) abandon() {
	u.mu.Lock()
	var all []*pending
	for _, p := range u.pend {
		all = append(all, p)
	}
	u.pend = make(map[wire.ID]*pending)
	u.inflight.Init()
	u.parked.Init()
	u.m.setUnacked(0)
	u.mu.Unlock()
	for _, p := range all {
		p.done(outClosed, nil)
	}
}

// Link returns the state of the relay link for the health endpoint.
func (u *uplink) Link() health.Link {
	u.mu.Lock()
	l := u.state
	if u.q != nil {
		l.QueueBytes = u.q.Len()
	}
	l.Unacked = len(u.pend)
	u.mu.Unlock()
	if last := u.stats.LastRecv.Load(); last != 0 {
		l.LastHeartbeatAge = health.Seconds(time.Since(time.Unix(0, last)))
	}
	l.RTT = health.Seconds(time.Duration(u.stats.RTT.Load()))
	l.FramesIn, l.FramesOut = u.stats.FramesIn.Load(), u.stats.FramesOut.Load()
	l.BytesIn, l.BytesOut = u.stats.BytesIn.Load(), u.stats.BytesOut.Load()
	return l
}

// run keeps a link to the relay up until ctx ends.
func (u *uplink) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(max(u.cfg.PingInterval/2, 10*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case now := <-t.C:
				u.retransmit(now)
			case <-ctx.Done():
				return
			}
		}
	}()
	defer wg.Wait()

	backoff := u.cfg.BackoffMin
	for attempt := 0; ctx.Err() == nil; attempt++ {
		conn, relayID, err := u.dial(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// Full jitter over [backoff/2, backoff]: many servers that lost
			// the same relay do not come back in step.
			d := backoff/2 + mathrand.N(backoff/2+1)
			level := slog.LevelWarn
			if attempt > 0 && !errors.Is(err, wire.ErrRejected) {
				level = slog.LevelDebug // one warning per outage, not one per retry
			}
			u.log.Log(ctx, level, "relay link dial failed", "relay", u.cfg.RelayAddr, "err", err, "retry_in", d)
			backoff = min(2*backoff, u.cfg.BackoffMax)
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return
			}
			continue
		}
		attempt = -1
		backoff = u.cfg.BackoffMin
		err = u.serve(ctx, conn, relayID)
		u.m.linkDown()
		u.reconnects.Add(1)
		if ctx.Err() == nil {
			u.log.Warn("relay link down, reconnecting", "relay", u.cfg.RelayAddr, "err", err)
		}
	}
}

// dial connects and runs the server side of the handshake.
func (u *uplink) dial(ctx context.Context) (net.Conn, string, error) {
	d := net.Dialer{Timeout: u.cfg.DialTimeout}
	conn, err := d.DialContext(ctx, "tcp", u.cfg.RelayAddr)
	if err != nil {
		return nil, "", err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	_ = conn.SetDeadline(time.Now().Add(u.cfg.DialTimeout))
	relayID, err := wire.Greet(conn, u.cfg.Secret, u.cfg.ID)
	if err != nil {
		conn.Close()
		return nil, "", err
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, relayID, nil
}

// serve runs one established link until it fails or ctx ends.
func (u *uplink) serve(ctx context.Context, conn net.Conn, relayID string) error {
	remote := conn.RemoteAddr().String()
	// Room for the whole backlog at its largest: attach queues every
	// unacked message at once, and a smaller limit would drop the link it
	// is trying to recover, again and again.
	maxFrame := wire.HeaderLen + wire.IDLen + 2*(1+wire.MaxIDLen) + 2*(1+u.cfg.MaxNameLen) + 8 + u.cfg.MaxContent
	q := sendq.New(u.cfg.MaxUnacked*maxFrame+(64<<20), func(n, items int, _ time.Duration) {
		u.stats.BytesOut.Add(uint64(n))
		u.stats.FramesOut.Add(uint64(items))
	})
	u.stats.LastRecv.Store(time.Now().UnixNano())
	q.Start(conn, u.cfg.WriteTimeout) // written inline by whoever queues to it
	resent := u.attach(q, conn, relayID, remote)
	u.m.linkUp()
	u.log.Info("relay link up", "relay", relayID, "remote", remote, "resent", resent)

	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	pings := make(chan struct{})
	defer func() {
		u.detach(q)
		q.Close()
		conn.Close()
		<-pings
		<-q.Done()
		if err := q.Err(); err != nil {
			u.log.Debug("relay link write ended", "err", err)
		}
	}()
	go func() {
		defer close(pings)
		t := time.NewTicker(u.cfg.PingInterval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				now := time.Now().UnixNano()
				if q.Append(func(b []byte) []byte { return wire.AppendPing(b, wire.TypePing, now) }) != nil {
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return u.readLoop(conn, q)
}

func (u *uplink) readLoop(conn net.Conn, q *sendq.Queue) error {
	fr := wire.NewReader(conn, 2*u.cfg.MaxLine+4096)
	var deadlineSet time.Time
	// Events, replies and acks produced by one read are written once per
	// connection, when nothing more is buffered.
	var batch sendq.Batch
	defer batch.Flush()
	for {
		if !fr.Ready() {
			batch.Flush()
		}
		if now := time.Now(); now.Sub(deadlineSet) > u.cfg.DeadAfter/4 {
			deadlineSet = now
			_ = conn.SetReadDeadline(now.Add(u.cfg.DeadAfter))
		}
		typ, body, raw, err := fr.Next()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return fmt.Errorf("relay silent for %s: link dead", u.cfg.DeadAfter)
			}
			if errors.Is(err, io.EOF) {
				return errors.New("relay closed the link")
			}
			return err
		}
		u.stats.FramesIn.Add(1)
		u.stats.BytesIn.Add(uint64(len(raw)))
		u.stats.LastRecv.Store(time.Now().UnixNano())
		switch typ {
		case wire.TypeForward:
			f, err := wire.ParseForward(body)
			if err != nil {
				return fmt.Errorf("bad forward frame: %w", err)
			}
			code := u.onForward(f, &batch)
			a := wire.Ack{ID: f.ID, Origin: u.cfg.ID, Dest: f.Origin, Code: code}
			_ = q.AppendTo(&batch, func(b []byte) []byte { return wire.AppendAck(b, wire.TypeAck, a) })
		case wire.TypeAck:
			a, err := wire.ParseAck(body)
			if err != nil {
				return fmt.Errorf("bad ack frame: %w", err)
			}
			u.ack(&batch, a.ID, a.Origin, a.Code)
		case wire.TypeNack:
			a, err := wire.ParseAck(body)
			if err != nil {
				return fmt.Errorf("bad nack frame: %w", err)
			}
			u.m.nacked()
			u.nack(a.ID, a.Dest)
		case wire.TypeKick:
			k, err := wire.ParseKick(body)
			if err != nil {
				return fmt.Errorf("bad kick frame: %w", err)
			}
			u.onKick(k)
		case wire.TypePing:
			nanos, err := wire.ParsePing(body)
			if err != nil {
				return fmt.Errorf("bad ping: %w", err)
			}
			_ = q.AppendTo(&batch, func(b []byte) []byte { return wire.AppendPing(b, wire.TypePong, nanos) })
		case wire.TypePong:
			nanos, err := wire.ParsePing(body)
			if err != nil {
				return fmt.Errorf("bad pong: %w", err)
			}
			u.stats.RTT.Store(time.Now().UnixNano() - nanos)
		default:
			return fmt.Errorf("%w: %d from relay", wire.ErrBadType, typ)
		}
	}
}
