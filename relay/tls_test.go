package relay_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatrelay/chatrelay/health"
	"github.com/chatrelay/chatrelay/internal/certs/certstest"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/testenv"
	"github.com/chatrelay/chatrelay/wire"
)

// startTLSRelay starts a relay whose link port serves TLS with a
// certificate for 127.0.0.1 from ca; mutual asks every server for a
// certificate ca signed.
func startTLSRelay(t *testing.T, ca *certstest.CA, mutual bool) (*testenv.InRelay, *prometheus.Registry) {
	t.Helper()
	cert, key := ca.Issue(t, "relay", "127.0.0.1")
	tc, _ := testenv.ServerTLS(t, cert, key)
	if mutual {
		tc.ClientCAs = testenv.ClientTLS(t, ca, "").RootCAs
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	reg := prometheus.NewRegistry()
	return testenv.StartRelay(t, "", relay.Config{TLS: tc, Metrics: relay.NewMetrics(reg)}), reg
}

// peerTLS is a server's TLS config for the link: it trusts ca and shows
// the certificate of name, if any.
func peerTLS(t *testing.T, ca *certstest.CA, name string) *tls.Config {
	t.Helper()
	tc := testenv.ClientTLS(t, ca, "127.0.0.1")
	if name != "" {
		c, err := tls.LoadX509KeyPair(ca.Issue(t, name))
		if err != nil {
			t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return tc
}

// With mutual TLS a server's id is its certificate's: the link secret
// alone does not let msg-2's certificate claim msg-1, and msg-1 with its
// own certificate links as before. Without mutual TLS the secret alone
// decides, as on a plaintext port.
func TestLinkIDBoundToCertificate(t *testing.T) {
	ca := certstest.NewCA(t)
	r, _ := startTLSRelay(t, ca, true)

	_, typ, reason := testenv.DialPeerTLS(t, r.Addr, "msg-1", testenv.Secret, peerTLS(t, ca, "msg-2"))
	if typ != wire.TypeReject || reason != "server id does not match its certificate" {
		t.Fatalf("msg-2's certificate claiming msg-1: frame %d %q, want a Reject saying the id does not match", typ, reason)
	}
	if n := len(r.Links()); n != 0 {
		t.Fatalf("relay registered %d links after the mismatch", n)
	}
	p, typ, _ := testenv.DialPeerTLS(t, r.Addr, "msg-1", testenv.Secret, peerTLS(t, ca, "msg-1"))
	if typ != wire.TypeWelcome {
		t.Fatalf("msg-1 with its own certificate: frame %d, want Welcome", typ)
	}
	q, typ, _ := testenv.DialPeerTLS(t, r.Addr, "msg-2", testenv.Secret, peerTLS(t, ca, "msg-2"))
	if typ != wire.TypeWelcome {
		t.Fatalf("msg-2 with its own certificate: frame %d, want Welcome", typ)
	}
	testenv.Eventually(t, 2*time.Second, "both links registered", func() bool { return r.Report().LinksUp == 2 })
	// The links carry frames, over TLS both ways.
	f := &wire.Forward{ID: wire.ID{1}, Origin: "msg-1", Dest: "msg-2", Payload: []byte("over TLS")}
	p.Write(wire.AppendForward(nil, f))
	if typ, body := q.Next(); typ != wire.TypeForward || !strings.Contains(string(body), "over TLS") {
		t.Fatalf("msg-2 got frame %d %q", typ, body)
	}

	// The right secret does not help a server without a certificate, nor
	// one whose certificate another CA signed: the TLS handshake fails,
	// before any challenge.
	for _, tc := range []*tls.Config{peerTLS(t, ca, ""), peerTLS(t, certstest.NewCA(t), "msg-1")} {
		tc.RootCAs = testenv.ClientTLS(t, ca, "").RootCAs // they trust the relay
		if err := challengeOver(t, r.Addr, tc); err == nil {
			t.Fatal("a server without a certificate the relay trusts got a challenge")
		}
	}

	// One-way TLS: no client certificate, the secret vouches for the id.
	oneWay, _ := startTLSRelay(t, ca, false)
	if _, typ, _ := testenv.DialPeerTLS(t, oneWay.Addr, "msg-1", testenv.Secret, peerTLS(t, ca, "")); typ != wire.TypeWelcome {
		t.Fatalf("one-way TLS: frame %d, want Welcome", typ)
	}
}

// challengeOver connects over TLS with tc and reads the first frame.
func challengeOver(t *testing.T, addr string, tc *tls.Config) error {
	t.Helper()
	c, err := tls.Dial("tcp", addr, tc)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	return wire.ReadChallenge(c)
}

// Plaintext to a TLS link port, or a server that does not trust the
// relay's certificate, gets no challenge; each failed handshake is counted,
// and the port goes on serving the others.
func TestTLSLinkPortRefusesPlaintextAndUntrusted(t *testing.T) {
	ca := certstest.NewCA(t)
	r, reg := startTLSRelay(t, ca, false)

	c, err := net.Dial("tcp", r.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	// A plaintext server waits for the challenge first; the relay waits for
	// a ClientHello until the handshake timeout... so say something.
	_, _ = c.Write([]byte("hello relay\n"))
	if err := wire.ReadChallenge(c); err == nil {
		t.Fatal("a plaintext peer read a challenge from the TLS link port")
	}
	if err := challengeOver(t, r.Addr, testenv.ClientTLS(t, certstest.NewCA(t), "127.0.0.1")); err == nil {
		t.Fatal("a peer trusting another CA read a challenge")
	}
	if err := challengeOver(t, r.Addr, testenv.ClientTLS(t, ca, "relay.example")); err == nil {
		t.Fatal("a peer expecting another name read a challenge")
	}
	testenv.Eventually(t, 5*time.Second, "three TLS handshake failures counted", func() bool {
		return metric(t, reg, "relay_tls_handshake_failures_total").Counter.GetValue() == 3
	})
	if v := metric(t, reg, "relay_handshake_failures_total").Counter.GetValue(); v != 0 {
		t.Fatalf("TLS failures also counted as %v link handshake failures", v)
	}
	if _, typ, _ := testenv.DialPeerTLS(t, r.Addr, "msg-1", testenv.Secret, peerTLS(t, ca, "")); typ != wire.TypeWelcome {
		t.Fatalf("a good server after the strangers: frame %d, want Welcome", typ)
	}
}

// The keepalived check probes a TLS link port over TLS, with a client
// certificate when the relay requires one; the probe is not counted as a
// failure. A plaintext probe of a TLS port fails the check.
func TestCheckProbesTLSLinkPort(t *testing.T) {
	ca := certstest.NewCA(t)
	r, reg := startTLSRelay(t, ca, true)
	admin := httptest.NewServer(health.AdminHandler(r.Report, reg, false))
	defer admin.Close()
	addr := strings.TrimPrefix(admin.URL, "http://")

	probe, err := relay.ProbeTLS(ca.Issue(t, "relay-a check"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := relay.CheckConfig{Admin: addr, Link: r.Addr, LinkTLS: probe, Timeout: 2 * time.Second, Grace: time.Second}
	if res := relay.Check(context.Background(), cfg); !res.OK {
		t.Fatalf("check over TLS: %+v", res)
	}
	testenv.Eventually(t, 5*time.Second, "the probe's connection to end", func() bool { return len(r.Links()) == 0 })

	noCert, err := relay.ProbeTLS("", "")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Timeout = 300 * time.Millisecond // a plaintext probe waits for a challenge that never comes
	for name, tc := range map[string]*tls.Config{"plaintext": nil, "without a client certificate": noCert} {
		cfg.LinkTLS = tc
		if res := relay.Check(context.Background(), cfg); res.OK || !strings.Contains(res.Reason, "link port") {
			t.Errorf("check %s against a mutual-TLS port: %+v, want a failure of the link probe", name, res)
		}
	}
	if v := metric(t, reg, "relay_handshake_failures_total").Counter.GetValue(); v != 0 {
		t.Fatalf("probes counted as %v link handshake failures", v)
	}
}
