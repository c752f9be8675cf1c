package msgserver_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatrelay/chatrelay/internal/certs"
	"github.com/chatrelay/chatrelay/internal/certs/certstest"
	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/testenv"
)

// tlsTier is startTier with TLS on all three connections: the client
// ports, the relay link (mutual: each server shows its certificate) and
// Redis (rediss://, verified against the test CA).
type tlsTier struct {
	ca    *certstest.CA
	redis *testenv.Redis
	relay *testenv.InRelay
	a, b  *testenv.InServer
}

func startTLSTier(t *testing.T, tweak func(*msgserver.Config)) *tlsTier {
	t.Helper()
	tr := &tlsTier{ca: certstest.NewCA(t)}
	tr.redis = testenv.StartRedisTLS(t, tr.ca)
	relayCert, relayKey := tr.ca.Issue(t, "relay", "127.0.0.1")
	relayTLS, _ := testenv.ServerTLS(t, relayCert, relayKey)
	relayTLS.ClientCAs = testenv.ClientTLS(t, tr.ca, "").RootCAs
	relayTLS.ClientAuth = tls.RequireAndVerifyClientCert
	tr.relay = testenv.StartRelay(t, "", relay.Config{TLS: relayTLS})
	tr.a = tr.server(t, "msg-a", tweak)
	tr.b = tr.server(t, "msg-b", tweak)
	testenv.WaitLinked(t, tr.a, tr.b)
	return tr
}

// server starts a message server whose certificate, for the client port
// and the link alike, names id and 127.0.0.1.
func (tr *tlsTier) server(t *testing.T, id string, tweak func(*msgserver.Config)) *testenv.InServer {
	t.Helper()
	cert, key := tr.ca.Issue(t, id, "127.0.0.1")
	serverTLS, r := testenv.ServerTLS(t, cert, key)
	link := testenv.ClientTLS(t, tr.ca, "") // ServerName: the relay address's host
	link.GetClientCertificate = r.GetClientCertificate
	opts, err := store.ParseURL(tr.redis.URL())
	if err != nil {
		t.Fatal(err)
	}
	if err := opts.UseCA(tr.ca.File); err != nil {
		t.Fatal(err)
	}
	rdb := opts.NewClient()
	t.Cleanup(func() { rdb.Close() })
	cfg := msgserver.Config{ID: id, RelayAddr: tr.relay.Addr, TLS: serverTLS, LinkTLS: link, Redis: rdb}
	if tweak != nil {
		tweak(&cfg)
	}
	return testenv.StartServer(t, tr.redis.Addr, cfg)
}

func (tr *tlsTier) dial(t *testing.T, s *testenv.InServer) *testenv.Client {
	return testenv.DialTLS(t, s.Addr, testenv.ClientTLS(t, tr.ca, "127.0.0.1"))
}

func (tr *tlsTier) login(t *testing.T, s *testenv.InServer, name string) *testenv.Client {
	t.Helper()
	c := tr.dial(t, s)
	c.Login(name)
	return c
}

// Chat across servers over TLS on every connection, with sessions parked
// in the poller (over TLS too) while they wait: messages reach parked
// sessions, which wake when their client speaks and park again, and an
// offline message is stored in and read back from Redis over TLS.
func TestChatOverTLSEverywhere(t *testing.T) {
	tr := startTLSTier(t, parkFast)
	alice := tr.login(t, tr.a, "alice")
	bob := tr.login(t, tr.b, "bob")
	waitParked(t, tr.a, 1)
	waitParked(t, tr.b, 1)

	bob.Chat("alice", "to a parked TLS session, through the TLS link")
	alice.Expect(map[string]any{"event": "chat", "from": "bob", "content": "to a parked TLS session, through the TLS link"})
	bob.Expect(map[string]any{"reply": "chat", "ok": true, "status": msgserver.StatusRelayed})
	alice.Chat("bob", "and back")
	bob.Expect(map[string]any{"event": "chat", "from": "alice", "content": "and back"})
	waitParked(t, tr.a, 1)

	alice.Chat("carol", "kept for later")
	alice.Expect(map[string]any{"reply": "chat", "ok": true, "status": msgserver.StatusOffline})
	carol := tr.login(t, tr.b, "carol")
	carol.Expect(map[string]any{"event": "chat", "from": "alice", "content": "kept for later"})
}

// A session that is not parked (parking off) works over TLS as well: the
// plain goroutine-per-session path.
func TestChatOverTLSWithoutParking(t *testing.T) {
	tr := startTLSTier(t, func(c *msgserver.Config) { c.ParkIdleAfter = -1 })
	alice := tr.login(t, tr.a, "alice")
	bob := tr.login(t, tr.b, "bob")
	alice.Chat("bob", "hello")
	bob.Expect(map[string]any{"event": "chat", "from": "alice", "content": "hello"})
	if n := tr.a.Parked(); n != 0 {
		t.Fatalf("%d parked with parking off", n)
	}
}

// warnings is a logger that keeps what is logged at warn level or above.
type warnings struct {
	mu    sync.Mutex
	lines []string
}

func (w *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lines = append(w.lines, r.Message)
	return nil
}
func (w *warnings) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnings) WithGroup(string) slog.Handler      { return w }
func (w *warnings) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.lines...)
}

func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.Metric {
				sum += m.GetCounter().GetValue()
			}
			return sum
		}
	}
	return 0
}

// tlsServer is a message server running alone, with TLS on its client
// port: its certificate's files and reloader, and its metrics.
type tlsServer struct {
	*testenv.InServer
	certFile, keyFile string
	reloader          *certs.Reloader
	reg               *prometheus.Registry
}

func startTLSServer(t *testing.T, ca *certstest.CA, cfg msgserver.Config) *tlsServer {
	t.Helper()
	s := &tlsServer{reg: prometheus.NewRegistry()}
	s.certFile, s.keyFile = ca.Issue(t, "msg-1", "127.0.0.1")
	cfg.TLS, s.reloader = testenv.ServerTLS(t, s.certFile, s.keyFile)
	cfg.ID, cfg.Metrics = "msg-1", msgserver.NewMetrics(s.reg)
	s.InServer = testenv.StartServer(t, testenv.StartRedis(t).Addr, cfg)
	return s
}

// A plaintext client on the TLS port gets nothing: no line is served, the
// connection ends, and the server counts it and logs nothing at warn level.
func TestPlaintextToTLSClientPortIsRefused(t *testing.T) {
	ca := certstest.NewCA(t)
	w := &warnings{}
	s := startTLSServer(t, ca, msgserver.Config{Logger: slog.New(w)})
	atStart := len(w.all()) // e.g. that clients are not authenticated

	for i := 0; i < 3; i++ {
		conn, err := net.Dial("tcp", s.Addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write([]byte(`{"cmd":"login","name":"alice"}` + "\n"))
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(conn)
		conn.Close()
		if isTimeout(err) {
			t.Fatal("the server kept a plaintext connection open")
		}
		if strings.Contains(string(got), "{") {
			t.Fatalf("a plaintext client was served: %q", got)
		}
	}
	testenv.Eventually(t, 5*time.Second, "three failed handshakes counted", func() bool {
		return counter(t, s.reg, "msgserver_tls_handshake_failures_total") == 3
	})
	if v, _ := s.Redis.Get(context.Background(), "chatrelay:user:alice").Result(); v != "" {
		t.Fatalf("a plaintext login reached Redis: %q", v)
	}
	if l := w.all()[atStart:]; len(l) != 0 {
		t.Fatalf("warnings logged for plaintext strangers: %q", l)
	}
	// A client that does not trust the certificate fails too, and so
	// does one that expects another name.
	other := certstest.NewCA(t)
	for _, tc := range []*tls.Config{testenv.ClientTLS(t, other, "127.0.0.1"), testenv.ClientTLS(t, ca, "msg-2")} {
		if c, err := tls.Dial("tcp", s.Addr, tc); err == nil {
			c.Close()
			t.Fatal("a client with the wrong CA or name completed the handshake")
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// A stranger that opens a connection and never handshakes is cut at the
// handshake timeout: it holds no goroutine beyond that.
func TestTLSHandshakeHasADeadline(t *testing.T) {
	ca := certstest.NewCA(t)
	s := startTLSServer(t, ca, msgserver.Config{HandshakeTimeout: 200 * time.Millisecond})
	conn, err := net.Dial("tcp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); isTimeout(err) {
		t.Fatal("a connection that never handshakes is still open after 5s")
	}
	testenv.Eventually(t, 5*time.Second, "the failed handshake counted", func() bool {
		return counter(t, s.reg, "msgserver_tls_handshake_failures_total") == 1
	})
	// The port still serves everyone else.
	c := testenv.DialTLS(t, s.Addr, testenv.ClientTLS(t, ca, "127.0.0.1"))
	c.Login("alice")
}

// A renewed certificate is served to new connections without a restart;
// sessions opened before keep going.
func TestRenewedClientCertificateServedWithoutRestart(t *testing.T) {
	ca := certstest.NewCA(t)
	s := startTLSServer(t, ca, msgserver.Config{})
	tc := testenv.ClientTLS(t, ca, "127.0.0.1")
	old := testenv.DialTLS(t, s.Addr, tc)
	old.Login("alice")
	before := old.Conn().(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber

	ctx, cancel := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		s.reloader.Watch(ctx, 10*time.Millisecond)
	}()
	t.Cleanup(func() {
		cancel()
		<-watched
	})
	ca.Reissue(t, "msg-1", s.certFile, s.keyFile, "127.0.0.1")
	testenv.Eventually(t, 5*time.Second, "the renewed certificate to be served", func() bool {
		c, err := tls.Dial("tcp", s.Addr, tc)
		if err != nil {
			return false
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Cmp(before) != 0
	})
	bob := testenv.DialTLS(t, s.Addr, tc)
	bob.Login("bob")
	bob.Chat("alice", "after the renewal")
	old.Expect(map[string]any{"event": "chat", "from": "bob", "content": "after the renewal"})
}

// A connection over MaxSessions on a TLS port is told why, over TLS.
func TestServerFullOverTLS(t *testing.T) {
	ca := certstest.NewCA(t)
	s := startTLSServer(t, ca, msgserver.Config{MaxSessions: 1})
	tc := testenv.ClientTLS(t, ca, "127.0.0.1")
	first := testenv.DialTLS(t, s.Addr, tc)
	first.Login("alice")
	second := testenv.DialTLS(t, s.Addr, tc)
	got := second.ExpectClosed()
	if len(got) != 1 || got[0].S("code") != "server_full" {
		t.Fatalf("second client got %v, want one server_full line", got)
	}
}

// A server that does not trust the relay's certificate never links: the
// relay's TLS handshake fails (it counts it) and no link comes up.
func TestLinkRefusesRelayWithUntrustedCertificate(t *testing.T) {
	ca := certstest.NewCA(t)
	relayCert, relayKey := ca.Issue(t, "relay", "127.0.0.1")
	relayTLS, _ := testenv.ServerTLS(t, relayCert, relayKey)
	reg := prometheus.NewRegistry()
	r := testenv.StartRelay(t, "", relay.Config{TLS: relayTLS, Metrics: relay.NewMetrics(reg)})
	redis := testenv.StartRedis(t)

	other := certstest.NewCA(t)
	s := testenv.StartServer(t, redis.Addr, msgserver.Config{ID: "msg-1", RelayAddr: r.Addr, LinkTLS: testenv.ClientTLS(t, other, "")})
	testenv.Eventually(t, 5*time.Second, "the relay to count a failed TLS handshake", func() bool {
		return counter(t, reg, "relay_tls_handshake_failures_total") >= 1
	})
	if l := s.Links(); len(l) != 1 || l[0].Up {
		t.Fatalf("link %v: want one, down", l)
	}
	if n := len(r.Links()); n != 0 {
		t.Fatalf("relay has %d links", n)
	}
	// A plaintext server gets nothing either: no challenge, no link.
	conn, err := net.Dial("tcp", r.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = conn.Write([]byte("hello\n"))
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := bufio.NewReader(conn).Peek(1)
	if len(b) > 0 && b[0] != 0x15 { // a TLS alert record is all it may get
		t.Fatalf("a plaintext peer got %q from the TLS link port", b)
	}
}

// On a TLS port the per-address cap is applied before the TLS handshake:
// a stranger cannot keep more handshakes pending than it may have
// connections, and one over the cap is closed at once, not after the
// handshake timeout. Others are unaffected.
func TestPerAddressCapBoundsPendingTLSHandshakes(t *testing.T) {
	ca := certstest.NewCA(t)
	s := startTLSServer(t, ca, msgserver.Config{
		HandshakeTimeout: time.Minute,
		MaxConnsPerIP:    2,
		PerIPExempt:      []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
	})
	for range 2 { // pending handshakes, within the cap: kept open
		c := dialFrom(t, s.Addr, "127.0.0.2")
		_ = c.conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := c.conn.Read(make([]byte, 1)); !isTimeout(err) {
			t.Fatalf("a pending handshake within the cap was closed: %v", err)
		}
	}
	extra := dialFrom(t, s.Addr, "127.0.0.2")
	_ = extra.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := extra.conn.Read(make([]byte, 1)); isTimeout(err) {
		t.Fatal("a handshake over the per-address cap was kept open")
	}
	c := testenv.DialTLS(t, s.Addr, testenv.ClientTLS(t, ca, "127.0.0.1"))
	c.Login("alice")
}
