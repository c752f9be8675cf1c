package relay_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/testenv"
	"github.com/chatrelay/chatrelay/wire"
)

// dialFrom connects to addr from the loopback address src (127.0.0.x are
// all this host's), so tests can play several sources.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// greet runs a message server's handshake from src as id, and returns
// Greet's error: nil for a Welcome, wire.ErrRejected with the reason.
func greet(t *testing.T, src, addr, id string, secret []byte) error {
	t.Helper()
	c := dialFrom(t, src, addr)
	defer c.Close()
	_, err := wire.Greet(c, id, secret)
	return err
}

// stall opens a connection from src that takes the challenge and then
// stays silent, holding a place among the pending handshakes. It reports
// whether the relay sent the challenge (false: closed at once).
func stall(t *testing.T, src, addr string) (net.Conn, bool) {
	t.Helper()
	c := dialFrom(t, src, addr)
	return c, wire.ReadChallenge(c) == nil
}

// closedByRelay reports whether the relay has closed c (EOF or reset)
// within 2 s, well inside the handshake timeout of the tests using it.
func closedByRelay(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	return metric(t, reg, name).GetGauge().GetValue()
}

// A flood of connections over both caps (per source address and in total),
// some stalling and some claiming a 1 MiB first frame, leaves the links
// that are up routing to each other; a new server still gets its link, and
// nothing past the caps is kept.
func TestFloodOverTheCapsLeavesLinksRouting(t *testing.T) {
	reg := prometheus.NewRegistry()
	const total, perIP = 12, 4
	// A long handshake timeout, so only the gate can close a stalled handshake.
	r := testenv.StartRelay(t, "", relay.Config{Metrics: relay.NewMetrics(reg), MaxPendingHandshakes: total, MaxPendingPerIP: perIP, HandshakeTimeout: time.Minute})
	a := testenv.ConnectPeer(t, r, "msg-a")
	b := testenv.ConnectPeer(t, r, "msg-b")

	// One source at its cap: the next connection from it is closed at
	// once, without a challenge.
	for i := 0; i < perIP; i++ {
		if _, ok := stall(t, "127.0.0.2", r.Addr); !ok {
			t.Fatalf("connection %d from 127.0.0.2 got no challenge", i)
		}
	}
	over := dialFrom(t, "127.0.0.2", r.Addr)
	if n, err := over.Read(make([]byte, 64)); n != 0 || err == nil {
		t.Fatalf("connection over the per-address cap: read %d bytes, %v; want closed without a challenge", n, err)
	}

	// Many sources: past the total cap the oldest stalled handshakes are
	// closed to make room.
	var stalled []net.Conn
	for _, src := range []string{"127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"} {
		for i := 0; i < perIP; i++ {
			c, ok := stall(t, src, r.Addr)
			if !ok {
				t.Fatalf("connection from %s got no challenge below its cap", src)
			}
			stalled = append(stalled, c)
		}
	}
	if v := gauge(t, reg, "relay_pending_handshakes"); v > total {
		t.Fatalf("relay_pending_handshakes = %v, above the cap %d", v, total)
	}
	// The flood: first frames claiming 1 MiB. Each is refused
	// after its 4-byte header, with a reason.
	for i := 0; i < 3; i++ {
		c := dialFrom(t, "127.0.0.7", r.Addr)
		if _, err := c.Write([]byte{0x00, 0x10, 0x00, 0x00, wire.TypeAuth}); err != nil {
			t.Fatal(err)
		}
		fr := wire.NewReader(c, 4096)
		typ1, _, _, err1 := fr.Next()
		typ2, body, _, err2 := fr.Next()
		if err1 != nil || err2 != nil || typ1 != wire.TypeChallenge || typ2 != wire.TypeReject || string(body) != "expected auth frame" {
			t.Fatalf("1 MiB claim answered %d %v, %d %q %v; want a challenge, then a reject", typ1, err1, typ2, body, err2)
		}
	}

	// The links that were up route as before, both ways.
	f := &wire.Forward{ID: wire.ID{42}, Origin: "msg-a", Dest: "msg-b", Payload: []byte("through the flood")}
	a.Write(wire.AppendForward(nil, f))
	if typ, body := b.Next(); typ != wire.TypeForward || !strings.Contains(string(body), "through the flood") {
		t.Fatalf("msg-b got frame type %d", typ)
	}
	b.Write(wire.AppendAck(nil, wire.TypeAck, wire.Ack{ID: f.ID, Origin: "msg-b", Dest: "msg-a", Code: wire.AckDelivered}))
	if typ, _ := a.Next(); typ != wire.TypeAck {
		t.Fatalf("msg-a got frame type %d, want the ack", typ)
	}
	// A server that (re)dials now gets its link: its handshake takes a
	// round trip, the flood's connections wait for the timeout.
	if err := greet(t, "127.0.0.8", r.Addr, "msg-c", testenv.Secret); err != nil {
		t.Fatalf("new server refused during the flood: %v", err)
	}
	if !closedByRelay(stalled[0]) {
		t.Fatal("the oldest stalled handshake was not closed to make room")
	}
	if v := gauge(t, reg, "relay_pending_handshakes"); v > total {
		t.Fatalf("relay_pending_handshakes = %v, above the cap %d", v, total)
	}
	for _, l := range r.Links() {
		if (l.Peer == "msg-a" || l.Peer == "msg-b") && !l.Up {
			t.Errorf("link of %s went down during the flood", l.Peer)
		}
	}
	// Refused: one over the per-address cap, the three 1 MiB claims, and
	// at least the 8 stalled handshakes closed to make room.
	testenv.Eventually(t, 5*time.Second, "the refusals counted", func() bool {
		return metric(t, reg, "relay_handshake_failures_total").Counter.GetValue() >= 1+3+8
	})
}

// logBook is a slog handler that keeps each record's attributes by message.
type logBook struct {
	mu   sync.Mutex
	recs map[string][]map[string]any
}

func (b *logBook) Enabled(context.Context, slog.Level) bool { return true }
func (b *logBook) WithAttrs([]slog.Attr) slog.Handler       { return b }
func (b *logBook) WithGroup(string) slog.Handler            { return b }
func (b *logBook) Handle(_ context.Context, r slog.Record) error {
	m := map[string]any{}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.Any(); return true })
	b.mu.Lock()
	defer b.mu.Unlock()
	b.recs[r.Message] = append(b.recs[r.Message], m)
	return nil
}

func (b *logBook) get(msg string) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]map[string]any(nil), b.recs[msg]...)
}

// Refused peers are logged a few per second with a summary of the rest;
// the counter has every one.
func TestRefusedPeersLogIsRateLimited(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := &logBook{recs: map[string][]map[string]any{}}
	r := testenv.StartRelay(t, "", relay.Config{Metrics: relay.NewMetrics(reg), Logger: slog.New(h)})
	const n = 60
	start := time.Now()
	for i := 0; i < n; i++ {
		if err := greet(t, "127.0.0.1", r.Addr, "msg-evil", []byte("wrong secret, 16+ bytes")); !errors.Is(err, wire.ErrRejected) {
			t.Fatalf("wrong secret: %v", err)
		}
	}
	testenv.Eventually(t, 5*time.Second, "every refusal counted", func() bool {
		return metric(t, reg, "relay_handshake_failures_total").Counter.GetValue() == n
	})
	elapsed := time.Since(start)
	logged := len(h.get("link refused"))
	if limit := 10 + int(5*elapsed.Seconds()) + 1; logged > limit || logged == 0 {
		t.Fatalf("%d refusals in %s logged %d lines, want 1..%d", n, elapsed, logged, limit)
	}
	testenv.Eventually(t, 5*time.Second, "a summary of the lines held back", func() bool {
		sum := 0
		for _, rec := range h.get("more links refused, not logged one by one") {
			sum += int(rec["suppressed"].(int64))
		}
		return logged+sum == n
	})
}

// A link that is alive keeps its server id: a second server claiming it,
// even with the secret, is refused and the first keeps its traffic.
func TestLiveLinkKeepsItsServerID(t *testing.T) {
	r := testenv.StartRelay(t, "", relay.Config{PingInterval: 50 * time.Millisecond, DeadAfter: 5 * time.Second})
	old := testenv.ConnectPeer(t, r, "msg-a")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // msg-a's heartbeat
		defer close(done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				_, _ = old.Conn.Write(wire.AppendPing(nil, wire.TypePing, 1))
			case <-stop:
				return
			}
		}
	}()
	defer func() { close(stop); <-done }()

	err := greet(t, "127.0.0.1", r.Addr, "msg-a", testenv.Secret)
	if !errors.Is(err, wire.ErrRejected) || !strings.Contains(err.Error(), "server id already linked") {
		t.Fatalf("second link for a live id: %v, want an already-linked reject", err)
	}
	b := testenv.ConnectPeer(t, r, "msg-b")
	b.Write(wire.AppendForward(nil, &wire.Forward{ID: wire.ID{3}, Origin: "msg-b", Dest: "msg-a"}))
	if typ, _ := old.Next(); typ != wire.TypeForward {
		t.Fatalf("the live link got frame type %d, want the forward", typ)
	}
}

// A restarted server whose old link has gone silent (its host crashed, the
// relay has not noticed yet) gets its id back: the newer link replaces the
// silent one well before dead-after.
func TestSilentLinkIsReplacedByANewerOne(t *testing.T) {
	r := testenv.StartRelay(t, "", relay.Config{PingInterval: 50 * time.Millisecond, DeadAfter: time.Minute})
	old := testenv.ConnectPeer(t, r, "msg-a") // never answers: silent from now on
	var newer *testenv.Peer
	testenv.Eventually(t, 10*time.Second, "the newer link welcomed", func() bool {
		p, typ := testenv.DialPeer(t, r.Addr, "msg-a", testenv.Secret)
		if typ == wire.TypeWelcome {
			newer = p
		}
		return newer != nil
	})
	if _, _, err := old.Read(5 * time.Second); err == nil {
		t.Fatal("the silent link stayed open")
	}
	b := testenv.ConnectPeer(t, r, "msg-b")
	b.Write(wire.AppendForward(nil, &wire.Forward{ID: wire.ID{3}, Origin: "msg-b", Dest: "msg-a"}))
	if typ, _ := newer.Next(); typ != wire.TypeForward {
		t.Fatal("newer link does not get traffic")
	}
}

// A server id must be plain, whoever claims it.
func TestBadServerIDIsRejected(t *testing.T) {
	r, reg := startRelay(t)
	for _, id := range []string{"bad\nid", strings.Repeat("x", wire.MaxIDLen)} {
		err := greet(t, "127.0.0.1", r.Addr, id, testenv.Secret)
		if !errors.Is(err, wire.ErrRejected) || !strings.Contains(err.Error(), "bad server id") {
			t.Fatalf("id %q: %v, want a bad server id reject", id, err)
		}
	}
	if l := r.Links(); len(l) != 0 {
		t.Fatalf("bad ids listed as links: %+v", l)
	}
	testenv.Eventually(t, 2*time.Second, "both refusals counted", func() bool {
		return metric(t, reg, "relay_handshake_failures_total").Counter.GetValue() == 2
	})
}

// During a rotation a relay takes servers on the current and on the next
// secret; once the old one is dropped, servers still on it are refused.
func TestLinkSecretRotation(t *testing.T) {
	oldSecret, newSecret := []byte("the old link secret"), []byte("the new link secret")
	both := testenv.StartRelay(t, "", relay.Config{Secret: oldSecret, NextSecret: newSecret})
	if err := greet(t, "127.0.0.1", both.Addr, "msg-1", oldSecret); err != nil {
		t.Fatalf("relay with old+new refused a server on the old secret: %v", err)
	}
	if err := greet(t, "127.0.0.1", both.Addr, "msg-2", newSecret); err != nil {
		t.Fatalf("relay with old+new refused a server on the new secret: %v", err)
	}
	newOnly := testenv.StartRelay(t, "", relay.Config{Secret: newSecret})
	if err := greet(t, "127.0.0.1", newOnly.Addr, "msg-1", oldSecret); !errors.Is(err, wire.ErrRejected) {
		t.Fatalf("relay with only the new secret: %v, want a reject for the old one", err)
	}
	if err := greet(t, "127.0.0.1", newOnly.Addr, "msg-2", newSecret); err != nil {
		t.Fatalf("relay with only the new secret refused it: %v", err)
	}
}

// labelled returns the value of each series of a labelled metric by its
// server label.
func labelled(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			for _, lp := range m.Label {
				if lp.GetName() == "server" {
					out[lp.GetValue()] = m.GetGauge().GetValue()
				}
			}
		}
	}
	return out
}

func peers(r *testenv.InRelay) []string {
	var ids []string
	for _, l := range r.Links() {
		ids = append(ids, l.Peer)
	}
	return ids
}

// A server down longer than forget-after leaves /healthz and /metrics.
func TestServerDownLongIsForgotten(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := testenv.StartRelay(t, "", relay.Config{Metrics: relay.NewMetrics(reg), ForgetAfter: 100 * time.Millisecond})
	a := testenv.ConnectPeer(t, r, "msg-a")
	testenv.ConnectPeer(t, r, "msg-b")
	a.Conn.Close()
	testenv.Eventually(t, 5*time.Second, "msg-a forgotten", func() bool {
		ids := peers(r)
		return len(ids) == 1 && ids[0] == "msg-b"
	})
	if s := labelled(t, reg, "relay_link_up"); len(s) != 1 || s["msg-b"] != 1 {
		t.Fatalf("relay_link_up series %v, want only msg-b up", s)
	}
}

// Past max-known-servers, the server down longest is forgotten first; a
// server whose link is up never is.
func TestKnownServersAreCapped(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := testenv.StartRelay(t, "", relay.Config{Metrics: relay.NewMetrics(reg), MaxKnownServers: 2})
	down := func(id string) {
		p := testenv.ConnectPeer(t, r, id)
		p.Conn.Close()
		testenv.Eventually(t, 5*time.Second, id+" down", func() bool {
			for _, l := range r.Links() {
				if l.Peer == id {
					return !l.Up
				}
			}
			return false
		})
	}
	down("msg-1")
	down("msg-2")
	testenv.ConnectPeer(t, r, "msg-3")
	if ids := peers(r); strings.Join(ids, ",") != "msg-2,msg-3" {
		t.Fatalf("remembered %v, want msg-2 and msg-3 (msg-1 was down longest)", ids)
	}
	if s := labelled(t, reg, "relay_link_up"); len(s) != 2 || s["msg-2"] != 0 || s["msg-3"] != 1 {
		t.Fatalf("relay_link_up series %v, want msg-2 down and msg-3 up", s)
	}
	testenv.ConnectPeer(t, r, "msg-4")
	testenv.ConnectPeer(t, r, "msg-5")
	if ids := peers(r); strings.Join(ids, ",") != "msg-3,msg-4,msg-5" {
		t.Fatalf("remembered %v, want the three that are up", ids)
	}
}
