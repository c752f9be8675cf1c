package e2e

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/certs/certstest"
	"github.com/chatrelay/chatrelay/testenv"
)

// tlsSystem is the tier as real processes with TLS on all three
// connections: client ports, the relay link (mutual TLS) and Redis
// (rediss://), every certificate from one test CA.
type tlsSystem struct {
	*system
	ca                  *certstest.CA
	relayCert, relayKey string
	relayAdmin          string
}

func newTLSSystem(t *testing.T) *tlsSystem {
	ca := certstest.NewCA(t)
	s := &tlsSystem{system: newSystem(t), ca: ca}
	s.redis = testenv.StartRedisTLS(t, ca) // the plaintext one newSystem started stays unused
	s.relayCert, s.relayKey = ca.Issue(t, "relay-e2e", "127.0.0.1")
	s.relay = testenv.Start(t, "relay", s.relayBin, "--id", "relay-e2e", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
		"--link-secret-file", s.secretFile, "--tls-cert", s.relayCert, "--tls-key", s.relayKey, "--link-client-ca", ca.File)
	s.relayAddr = s.relay.WaitAddr("relay listening", 10*time.Second)
	s.relayAdmin = s.relay.WaitAddr("admin listening", 10*time.Second)
	return s
}

// startTLSServer starts message server id with a certificate for certName
// (normally id itself) on its client port and its link.
func (s *tlsSystem) startTLSServer(id, certName string) *testenv.Proc {
	cert, key := s.ca.Issue(s.t, certName, "127.0.0.1")
	return testenv.Start(s.t, id, s.serverBin, "--id", id, "--listen", "127.0.0.1:0", "--admin", "",
		"--tls-cert", cert, "--tls-key", key,
		"--relay", s.relayAddr, "--link-secret-file", s.secretFile,
		"--link-ca", s.ca.File, "--link-cert", cert, "--link-key", key,
		"--redis", s.redis.URL(), "--redis-ca-file", s.ca.File)
}

func (s *tlsSystem) clientTLS() *tls.Config { return testenv.ClientTLS(s.t, s.ca, "127.0.0.1") }

// relayCheck runs `relay check` against the relay and returns its exit
// code and line.
func (s *tlsSystem) relayCheck(extra ...string) (int, string) {
	args := append([]string{"check", "--admin", s.relayAdmin, "--link", s.relayAddr, "--timeout", "500ms"}, extra...)
	out, err := exec.Command(s.relayBin, args...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		s.t.Fatal(err)
	}
	return 0, string(out)
}

// Chat across two servers with TLS on every connection; the link is
// mutual TLS, so a holder of the link secret with msg-2's certificate
// cannot take msg-1's id; plaintext gets nothing on any TLS port; and the
// keepalived check probes the TLS link port and reads Redis over TLS.
func TestTLSOnAllThreeConnections(t *testing.T) {
	s := newTLSSystem(t)
	p1 := s.startTLSServer("msg-1", "msg-1")
	p2 := s.startTLSServer("msg-2", "msg-2")
	addr1 := p1.WaitAddr("accepting clients", 10*time.Second)
	addr2 := p2.WaitAddr("accepting clients", 10*time.Second)
	p1.WaitOutput("relay link up", 10*time.Second)
	p2.WaitOutput("relay link up", 10*time.Second)

	u1 := testenv.DialTLS(t, addr1, s.clientTLS())
	u1.Login("zhima201")
	u2 := testenv.DialTLS(t, addr2, s.clientTLS())
	u2.Login("zhima202")
	u1.Chat("zhima202", "how are you")
	u2.Expect(map[string]any{"event": "chat", "from": "zhima201", "content": "how are you"})
	u1.Expect(map[string]any{"reply": "chat", "ok": true, "status": "relayed"})
	if v, err := s.redis.Command("GET", "chatrelay:user:zhima202"); err != nil || !strings.HasPrefix(v, "msg-2 ") {
		t.Fatalf("presence over TLS Redis: %q, %v", v, err)
	}

	// An impostor with the link secret and a certificate of the CA, but
	// msg-2's, claims msg-1: refused, and msg-1's link is untouched.
	imp := s.startTLSServer("msg-1", "msg-2")
	imp.WaitOutput("server id does not match its certificate", 10*time.Second)
	u2.Chat("zhima201", "still msg-1's link")
	u1.Expect(map[string]any{"event": "chat", "from": "zhima202", "content": "still msg-1's link"})
	imp.Kill()

	// Plaintext on each TLS port: no line, no challenge, no Redis reply.
	for name, addr := range map[string]string{"client port": addr1, "link port": s.relayAddr, "redis": s.redis.Addr} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write([]byte("{\"cmd\":\"ping\"}\r\nPING\r\n"))
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		got, _ := io.ReadAll(c)
		c.Close()
		if strings.Contains(string(got), "ping") || strings.Contains(string(got), "PONG") || len(got) > 7 {
			t.Errorf("%s answered plaintext with %q", name, got)
		}
	}

	// The keepalived check: over TLS with a client certificate it passes
	// (and counts servers registered in Redis, over TLS); probing the TLS
	// port in plaintext fails.
	code, out := s.relayCheck("--link-tls", "--link-cert", s.relayCert, "--link-key", s.relayKey,
		"--redis", s.redis.URL(), "--redis-ca-file", s.ca.File)
	if code != 0 || !strings.HasPrefix(out, "ok:") {
		t.Fatalf("check over TLS: exit %d: %s", code, out)
	}
	if code, out := s.relayCheck(); code != 1 || !strings.Contains(out, "link port") {
		t.Fatalf("plaintext check of the TLS link port: exit %d: %s, want a failing link probe", code, out)
	}
}

// A server that does not trust the relay's certificate, or Redis's, says
// so in its log and never links or logs in anyone.
func TestWrongCAIsRefused(t *testing.T) {
	s := newTLSSystem(t)
	other := certstest.NewCA(t)
	cert, key := s.ca.Issue(t, "msg-1", "127.0.0.1")
	p := testenv.Start(t, "msg-1", s.serverBin, "--id", "msg-1", "--listen", "127.0.0.1:0", "--admin", "",
		"--relay", s.relayAddr, "--link-secret-file", s.secretFile,
		"--link-ca", other.File, "--link-cert", cert, "--link-key", key,
		"--redis", s.redis.URL(), "--redis-ca-file", other.File)
	addr := p.WaitAddr("accepting clients", 10*time.Second)
	p.WaitOutput("TLS handshake with the relay: tls: failed to verify certificate", 10*time.Second)
	c := testenv.Dial(t, addr)
	c.Send(map[string]string{"cmd": "login", "name": "alice"})
	if m := c.Next(); m["ok"] != false {
		t.Fatalf("login with an untrusted Redis: %v", m)
	}
	if !strings.Contains(p.Output(), "certificate signed by unknown authority") {
		t.Fatalf("the server does not say Redis's certificate is untrusted:\n%s", p.Output())
	}
	if strings.Contains(p.Output(), "relay link up") {
		t.Fatal("the link came up with an untrusted relay certificate")
	}
}

// A renewed client-port certificate is served after SIGHUP, without a
// restart; a session opened before keeps working.
func TestRenewedCertificateServedWithoutRestart(t *testing.T) {
	s := newSystem(t)
	ca := certstest.NewCA(t)
	cert, key := ca.Issue(t, "msg-1", "127.0.0.1")
	p := testenv.Start(t, "msg-1", s.serverBin, "--id", "msg-1", "--listen", "127.0.0.1:0", "--admin", "",
		"--redis", s.redis.URL(), "--tls-cert", cert, "--tls-key", key)
	addr := p.WaitAddr("accepting clients", 10*time.Second)
	tc := testenv.ClientTLS(t, ca, "127.0.0.1")
	old := testenv.DialTLS(t, addr, tc)
	old.Login("alice")
	serial := old.Conn().(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber

	ca.Reissue(t, "msg-1", cert, key, "127.0.0.1")
	p.Signal(syscall.SIGHUP)
	p.WaitOutput("TLS certificate reloaded", 10*time.Second)
	fresh := testenv.DialTLS(t, addr, tc)
	if fresh.Conn().(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber.Cmp(serial) == 0 {
		t.Fatal("the old certificate is still served after SIGHUP")
	}
	fresh.Login("bob")
	fresh.Chat("alice", "after the renewal")
	old.Expect(map[string]any{"event": "chat", "from": "bob", "content": "after the renewal"})
}

// TLS flags given wrong are configuration errors: exit 2 and a message.
func TestTLSFlagMistakesAreClearErrors(t *testing.T) {
	ca := certstest.NewCA(t)
	cert, key := ca.Issue(t, "x", "127.0.0.1")
	serverBin := testenv.Build(t, "msgserver")
	relayBin := testenv.Build(t, "relay")
	secret := filepath.Join(t.TempDir(), "link.secret")
	if err := os.WriteFile(secret, []byte("e2e-secret-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, bin string
		args      []string
		want      string
	}{
		{"server cert without key", serverBin, []string{"--listen", "127.0.0.1:0", "--tls-cert", cert}, "--tls-cert: a TLS certificate needs both"},
		{"server key that is not the cert's", serverBin, []string{"--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", ca.File}, "--tls-cert: load TLS certificate"},
		{"server link cert without link CA", serverBin, []string{"--listen", "127.0.0.1:0", "--relay", "127.0.0.1:1", "--link-secret-file", secret, "--link-cert", cert, "--link-key", key}, "need --link-ca"},
		{"server link CA without relay", serverBin, []string{"--listen", "127.0.0.1:0", "--link-ca", ca.File}, "--link-ca needs --relay"},
		{"server link CA that is no CA file", serverBin, []string{"--listen", "127.0.0.1:0", "--relay", "127.0.0.1:1", "--link-secret-file", secret, "--link-ca", key}, "holds no PEM certificate"},
		{"server redis CA with a plaintext URL", serverBin, []string{"--listen", "127.0.0.1:0", "--redis", "redis://127.0.0.1:1/0", "--redis-ca-file", ca.File}, "--redis-ca-file: a CA file needs a TLS URL"},
		{"relay client CA without a certificate", relayBin, []string{"--listen", "127.0.0.1:0", "--link-secret-file", secret, "--link-client-ca", ca.File}, "--link-client-ca needs --tls-cert"},
		{"relay check with a bad client certificate", relayBin, []string{"check", "--link-cert", cert, "--link-key", ca.File}, "relay check: --link-cert"},
		{"relay check redis CA without redis", relayBin, []string{"check", "--redis-ca-file", ca.File}, "--redis-ca-file needs --redis"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testenv.Start(t, tc.name, tc.bin, tc.args...)
			if code := p.Wait(10 * time.Second); code != 2 {
				t.Fatalf("exit code %d, want 2; output:\n%s", code, p.Output())
			}
			if !strings.Contains(p.Output(), tc.want) {
				t.Fatalf("output does not say %q:\n%s", tc.want, p.Output())
			}
		})
	}
}
