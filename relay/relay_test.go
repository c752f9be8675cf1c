package relay_test

import (
	"io"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/chatrelay/chatrelay/health"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/testenv"
	"github.com/chatrelay/chatrelay/wire"
)

func startRelay(t *testing.T) (*testenv.InRelay, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	return testenv.StartRelay(t, "", relay.Config{Metrics: relay.NewMetrics(reg)}), reg
}

func metric(t *testing.T, reg *prometheus.Registry, name string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) > 0 {
			return mf.Metric[0]
		}
	}
	t.Fatalf("metric %s not found", name)
	return nil
}

func TestForwardAckAndNoRoute(t *testing.T) {
	r, reg := startRelay(t)
	a := testenv.ConnectPeer(t, r, "msg-a")
	b := testenv.ConnectPeer(t, r, "msg-b")

	f := &wire.Forward{ID: wire.ID{7}, Origin: "msg-a", Dest: "msg-b", Payload: []byte("opaque payload")}
	a.Write(wire.AppendForward(nil, f))
	typ, body := b.Next()
	got, err := wire.ParseForward(body)
	if typ != wire.TypeForward || err != nil || got.ID != f.ID || string(got.Payload) != "opaque payload" || got.Origin != "msg-a" {
		t.Fatalf("msg-b got type %d %+v %v", typ, got, err)
	}
	b.Write(wire.AppendAck(nil, wire.TypeAck, wire.Ack{ID: f.ID, Origin: "msg-b", Dest: "msg-a", Code: wire.AckDelivered}))
	typ, body = a.Next()
	if ack, _ := wire.ParseAck(body); typ != wire.TypeAck || ack.ID != f.ID {
		t.Fatalf("msg-a got type %d, want the ack", typ)
	}

	f.Dest = "msg-nowhere"
	a.Write(wire.AppendForward(nil, f))
	typ, body = a.Next()
	nack, err := wire.ParseAck(body)
	if typ != wire.TypeNack || err != nil || nack.ID != f.ID || nack.Code != wire.NackNoRoute {
		t.Fatalf("no-route answer: type %d %+v %v", typ, nack, err)
	}
	if v := metric(t, reg, "relay_no_route_total").Counter.GetValue(); v != 1 {
		t.Fatalf("relay_no_route_total = %v", v)
	}
	if v := metric(t, reg, "relay_frames_forwarded_total").Counter.GetValue(); v != 1 {
		t.Fatalf("relay_frames_forwarded_total = %v", v)
	}
}

func TestGarbageAndWrongSecretAreRefusedOthersUnaffected(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := testenv.StartRelay(t, "", relay.Config{Metrics: relay.NewMetrics(reg), HandshakeTimeout: time.Second})
	junk := []string{
		"{\"cmd\":\"login\",\"name\":\"192.168.0.203_router\"}\n", // the article's relay login
		"GET / HTTP/1.1\r\nHost: relay\r\n\r\n",
		"\x00\x00\x00\x00",
		"\xff\xff\xff\xff\x02",
		"\x00\x00\x00\x05\x02\x01\x05", // a truncated auth: cut by the handshake timeout
	}
	for _, j := range junk {
		c, err := net.Dial("tcp", r.Addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write([]byte(j))
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadAll(c) // the challenge, maybe a reject, then EOF
		c.Close()
		if err != nil {
			t.Fatalf("junk %q: relay did not close the connection: %v", j, err)
		}
	}
	if _, typ := testenv.DialPeer(t, r.Addr, "msg-evil", []byte("wrong secret, 16+ bytes")); typ != wire.TypeReject {
		t.Fatalf("wrong secret answered with frame type %d, want reject", typ)
	}
	// The reject reaches the peer before the relay counts it: wait for the count.
	want := float64(len(junk) + 1)
	testenv.Eventually(t, 2*time.Second, "every refused handshake counted", func() bool {
		return metric(t, reg, "relay_handshake_failures_total").Counter.GetValue() >= want
	})
	if v := metric(t, reg, "relay_handshake_failures_total").Counter.GetValue(); v != want {
		t.Fatalf("relay_handshake_failures_total = %v, want %v", v, want)
	}
	for _, l := range r.Links() {
		if strings.Contains(l.Peer, "router") || l.Peer == "msg-evil" {
			t.Fatalf("refused peer listed as a link: %+v", l)
		}
	}
	a := testenv.ConnectPeer(t, r, "msg-a")
	b := testenv.ConnectPeer(t, r, "msg-b")
	a.Write(wire.AppendForward(nil, &wire.Forward{ID: wire.ID{1}, Origin: "msg-a", Dest: "msg-b"}))
	if typ, _ := b.Next(); typ != wire.TypeForward {
		t.Fatalf("after the junk, msg-b got frame type %d", typ)
	}
}

func TestForgedOriginDropsTheLink(t *testing.T) {
	r, _ := startRelay(t)
	a := testenv.ConnectPeer(t, r, "msg-a")
	b := testenv.ConnectPeer(t, r, "msg-b")
	a.Write(wire.AppendForward(nil, &wire.Forward{ID: wire.ID{1}, Origin: "msg-c", Dest: "msg-b"}))
	if _, _, err := a.Read(5 * time.Second); err == nil {
		t.Fatal("link with a forged origin stayed open")
	}
	b.Write(wire.AppendForward(nil, &wire.Forward{ID: wire.ID{2}, Origin: "msg-b", Dest: "msg-b"}))
	if typ, _ := b.Next(); typ != wire.TypeForward {
		t.Fatal("the honest link stopped working")
	}
}

func TestSilentLinkIsDroppedWithinDeadAfter(t *testing.T) {
	r := testenv.StartRelay(t, "", relay.Config{PingInterval: 50 * time.Millisecond, DeadAfter: 300 * time.Millisecond})
	p, _ := testenv.DialPeer(t, r.Addr, "msg-mute", testenv.Secret)
	// Read raw frames without answering pings: the relay must give up.
	_ = p.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, p.Conn); err != nil {
		t.Fatalf("relay kept a silent link open: %v", err)
	}
	testenv.Eventually(t, 2*time.Second, "link reported down", func() bool {
		l := r.Links()
		return len(l) == 1 && !l[0].Up
	})
}

func TestWritesAreCoalesced(t *testing.T) {
	r, reg := startRelay(t)
	a := testenv.ConnectPeer(t, r, "msg-a")
	b := testenv.ConnectPeer(t, r, "msg-b")
	const n = 2000
	var burst []byte
	for i := 0; i < n; i++ {
		burst = wire.AppendForward(burst, &wire.Forward{ID: wire.ID{byte(i), byte(i >> 8)}, Origin: "msg-a", Dest: "msg-b", Payload: make([]byte, 100)})
	}
	a.Write(burst)
	for i := 0; i < n; i++ {
		if typ, _ := b.Next(); typ != wire.TypeForward {
			t.Fatalf("frame %d type %d", i, typ)
		}
	}
	h := metric(t, reg, "relay_write_batch_frames").Histogram
	if writes := h.GetSampleCount(); writes == 0 || float64(n)/float64(writes) < 4 {
		t.Fatalf("%d frames took %d writes; expected many frames per write", n, writes)
	}
}

func TestDropLinksOnAddress(t *testing.T) {
	r, _ := startRelay(t)
	a := testenv.ConnectPeer(t, r, "msg-a")
	if n := r.DropLinks(net.ParseIP("10.255.255.1")); n != 0 {
		t.Fatalf("dropped %d links on an address nobody dialled", n)
	}
	if n := r.DropLinks(net.ParseIP("127.0.0.1")); n != 1 {
		t.Fatalf("dropped %d links on 127.0.0.1, want 1", n)
	}
	if _, _, err := a.Read(5 * time.Second); err == nil {
		t.Fatal("link stayed open after DropLinks")
	}
}

func TestConfigValidateListsEveryProblem(t *testing.T) {
	_, err := relay.New(relay.Config{ID: "", Secret: []byte("short"), MaxFrame: 10, PingInterval: 2 * time.Second, DeadAfter: time.Second})
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{"relay id", "secret", "max frame", "ping interval"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestHealthzIs503OnceClosed(t *testing.T) {
	r, reg := startRelay(t)
	h := health.AdminHandler(r.Report, reg, false)
	code := func() int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		return rec.Code
	}
	if c := code(); c != 200 {
		t.Fatalf("serving relay answered %d", c)
	}
	r.Stop()
	if c := code(); c != 503 {
		t.Fatalf("closed relay answered %d, want 503", c)
	}
	if rep := r.Report(); rep.Serving || rep.Reason == "" {
		t.Fatalf("closed relay reports %+v", rep)
	}
}

// The keepalived check's probe of the link port is not an intruder: it is
// neither counted as a handshake failure nor logged as a refusal.
func TestLinkProbeIsNotAFailure(t *testing.T) {
	r, reg := startRelay(t)
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", r.Addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, _, err := wire.NewReader(c, 1024).Next(); err != nil {
			t.Fatalf("no challenge: %v", err)
		}
		c.Close()
	}
	if v := metric(t, reg, "relay_handshake_failures_total").Counter.GetValue(); v != 0 {
		t.Fatalf("probes counted as %v handshake failures", v)
	}
}
