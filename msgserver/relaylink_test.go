package msgserver

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/sendq"
	"github.com/chatrelay/chatrelay/wire"
)

var linkTestSecret = []byte("a link secret for tests")

// fakeRelay accepts links on loopback and runs the relay's half of the
// handshake; each accepted connection is passed to the test, which closes
// it (those it does not take are closed at the end).
func fakeRelay(t *testing.T) (addr string, conns <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan net.Conn, 4)
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
		close(ch)
		for conn := range ch {
			conn.Close()
		}
	})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			if _, err := wire.Accept(conn, "relay-test", nil, linkTestSecret); err != nil {
				conn.Close()
				continue
			}
			ch <- conn
		}
	}()
	return ln.Addr().String(), ch
}

func testLink(addr string, tweak func(*Config)) *relayLink {
	cfg := Config{ID: "msg-a", Secret: linkTestSecret, Logger: slog.New(slog.DiscardHandler)}
	if tweak != nil {
		tweak(&cfg)
	}
	cfg.setDefaults()
	return newRelayLink(&cfg, 0, addr, cfg.Logger)
}

// nextEvent calls next and checks the kind of what it yields.
func nextEvent(t *testing.T, ctx context.Context, l *relayLink, b *sendq.Batch, want linkEventKind) linkEvent {
	t.Helper()
	ev, err := l.next(ctx, b)
	if err != nil || ev.kind != want {
		t.Fatalf("next: kind %d, err %v, event error %v; want kind %d", ev.kind, err, ev.err, want)
	}
	return ev
}

// stopLink ends the link's context and drains next, as the server does.
func stopLink(t *testing.T, cancel context.CancelFunc, ctx context.Context, l *relayLink, b *sendq.Batch) {
	t.Helper()
	cancel()
	for {
		ev, err := l.next(ctx, b)
		if err != nil {
			return
		}
		if ev.kind == linkUp {
			t.Fatal("link came up after its context ended")
		}
	}
}

// The link yields each routed frame as its typed event, answers pings by
// itself, and after the relay hangs up reports the connection down and
// dials again.
func TestRelayLinkYieldsTypedFramesAndRedials(t *testing.T) {
	addr, conns := fakeRelay(t)
	l := testLink(addr, nil)
	ctx, cancel := context.WithCancel(context.Background())
	var b sendq.Batch
	defer stopLink(t, cancel, ctx, l, &b)

	up := nextEvent(t, ctx, l, &b, linkUp)
	if up.conn.relayID != "relay-test" || !l.status().Up {
		t.Fatalf("up on %q, status %+v", up.conn.relayID, l.status())
	}
	relay := <-conns
	defer relay.Close()
	f := wire.Forward{ID: wire.ID{1}, Origin: "msg-b", Dest: "msg-a", Payload: []byte("payload")}
	ack := wire.Ack{ID: wire.ID{2}, Origin: "msg-b", Dest: "msg-a", Code: wire.AckDelivered}
	nack := wire.Ack{ID: wire.ID{3}, Origin: "msg-a", Dest: "msg-c", Code: wire.NackNoRoute}
	kick := wire.Kick{Origin: "msg-b", Dest: "msg-a", User: "u", Session: "s"}
	var out []byte
	out = wire.AppendForward(out, &f)
	out = wire.AppendPing(out, wire.TypePing, 42)
	out = wire.AppendAck(out, wire.TypeAck, ack)
	out = wire.AppendAck(out, wire.TypeNack, nack)
	out = wire.AppendKick(out, kick)
	if _, err := relay.Write(out); err != nil {
		t.Fatal(err)
	}

	ev := nextEvent(t, ctx, l, &b, gotForward)
	if ev.conn != up.conn || ev.fwd.ID != f.ID || ev.fwd.Origin != f.Origin || string(ev.fwd.Payload) != "payload" {
		t.Fatalf("forward event %+v", ev.fwd)
	}
	if ev := nextEvent(t, ctx, l, &b, gotAck); ev.ack != ack {
		t.Fatalf("ack event %+v, want %+v", ev.ack, ack)
	}
	if ev := nextEvent(t, ctx, l, &b, gotNack); ev.ack != nack {
		t.Fatalf("nack event %+v, want %+v", ev.ack, nack)
	}
	if ev := nextEvent(t, ctx, l, &b, gotKick); ev.kick != kick {
		t.Fatalf("kick event %+v, want %+v", ev.kick, kick)
	}

	// The pong is in the batch next flushes before it waits: read it, then
	// hang up, which next reports.
	pong := make(chan error, 1)
	go func() {
		fr := wire.NewReader(relay, 4096)
		_ = relay.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			typ, body, _, err := fr.Next()
			if err != nil {
				pong <- err
				return
			}
			if n, _ := wire.ParsePing(body); typ == wire.TypePong && n == 42 {
				relay.Close()
				pong <- nil
				return
			}
		}
	}()
	down := nextEvent(t, ctx, l, &b, linkDown)
	if err := <-pong; err != nil {
		t.Fatalf("no pong: %v", err)
	}
	if down.conn != up.conn || !strings.Contains(down.err.Error(), "relay closed the link") || l.status().Up {
		t.Fatalf("down on %p (up was %p): %v; status %+v", down.conn, up.conn, down.err, l.status())
	}

	again := nextEvent(t, ctx, l, &b, linkUp)
	if again.conn == up.conn {
		t.Fatal("the new connection is the old one")
	}
	(<-conns).Close()
}

// A relay that says nothing is dead after DeadAfter, though the server
// keeps pinging it.
func TestRelayLinkSilentRelayIsDead(t *testing.T) {
	addr, conns := fakeRelay(t)
	l := testLink(addr, func(c *Config) { c.PingInterval, c.DeadAfter = 50*time.Millisecond, 300*time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	var b sendq.Batch
	defer stopLink(t, cancel, ctx, l, &b)

	nextEvent(t, ctx, l, &b, linkUp)
	relay := <-conns
	defer relay.Close()
	pings := make(chan int, 1)
	go func() {
		fr := wire.NewReader(relay, 4096)
		n := 0
		for {
			typ, _, _, err := fr.Next()
			if err != nil {
				pings <- n
				return
			}
			if typ == wire.TypePing {
				n++
			}
		}
	}()
	start := time.Now()
	down := nextEvent(t, ctx, l, &b, linkDown)
	if took := time.Since(start); took < 250*time.Millisecond || !strings.Contains(down.err.Error(), "link dead") {
		t.Fatalf("down after %s: %v; want the link dead after 300ms of silence", took, down.err)
	}
	if n := <-pings; n < 2 {
		t.Fatalf("%d pings in 300ms at one per 50ms", n)
	}
}
