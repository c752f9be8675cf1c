package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/testenv"
)

const e2eHMACKey = "e2e-auth-key-0123456789abcdef0123456789abcdef\n"

// writeFile writes data to a new file named name and returns its path.
func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// ed25519Files writes an Ed25519 key pair as PEM files: the public key for
// the servers, the private key for whoever issues tokens.
func ed25519Files(t *testing.T) (pub, priv string) {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pder, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	sder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, "auth.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder})),
		writeFile(t, "auth.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: sder}))
}

// token runs `msgserver token` and returns the token it prints.
func token(t *testing.T, bin, keyFile, name string, extra ...string) string {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"token", "--key-file", keyFile, "--name", name}, extra...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("msgserver token: %v\n%s", err, stderr.String())
	}
	tok := strings.TrimSpace(string(out))
	if strings.Count(tok, ".") != 2 || strings.ContainsAny(tok, " \n") {
		t.Fatalf("msgserver token printed %q, not one JWT", out)
	}
	return tok
}

// expectAuthFailed sends a login and expects auth_failed.
func expectAuthFailed(t *testing.T, c *testenv.Client, name, tok string) {
	t.Helper()
	c.Send(map[string]string{"cmd": "login", "name": name, "token": tok})
	if m := c.Next(); m.S("reply") != "login" || m["ok"] != false || m.S("code") != "auth_failed" {
		t.Fatalf("login %s: %v, want auth_failed", name, m)
	}
}

// Tokens from `msgserver token` log in on servers run with
// --auth-key-file: an HS256 key on one (with audience and issuer checks),
// an Ed25519 public key on the other, whose private key signs.
func TestTokenCommandSignsWhatServersAccept(t *testing.T) {
	s := newSystem(t)
	s.startRelay()
	hs := writeFile(t, "auth.hs256", []byte(e2eHMACKey))
	pub, priv := ed25519Files(t)
	addr1, p1 := s.startServer("msg-1", "--auth-key-file", hs, "--auth-audience", "chat", "--auth-issuer", "lab")
	addr2, p2 := s.startServer("msg-2", "--auth-key-file", pub)
	for _, p := range []*testenv.Proc{p1, p2} {
		if out := p.Output(); !strings.Contains(out, "logins need a signed token") || strings.Contains(out, "not authenticated") {
			t.Fatalf("%s does not say that logins need a token:\n%s", p.Name, out)
		}
	}

	alice := testenv.Dial(t, addr1)
	alice.LoginWithToken("alice", token(t, s.serverBin, hs, "alice", "--audience", "chat", "--issuer", "lab", "--ttl", "10m"))
	bob := testenv.Dial(t, addr2)
	bob.LoginWithToken("bob", token(t, s.serverBin, priv, "bob"))

	// Tokens that are not right for where they are used, tried as alice
	// and bob on both servers, change nothing.
	for _, addr := range []string{addr1, addr2} {
		mallory := testenv.Dial(t, addr)
		expectAuthFailed(t, mallory, "alice", "")
		expectAuthFailed(t, mallory, "alice", token(t, s.serverBin, hs, "alice"))                                          // no aud, no iss on msg-1; HS256 on msg-2
		expectAuthFailed(t, mallory, "alice", token(t, s.serverBin, hs, "alice", "--audience", "chat", "--issuer", "app")) // wrong iss
		expectAuthFailed(t, mallory, "bob", token(t, s.serverBin, priv, "alice", "--audience", "chat", "--issuer", "lab")) // alice's, or EdDSA on msg-1
	}

	alice.Chat("bob", "signed and delivered")
	bob.Expect(map[string]any{"event": "chat", "from": "alice", "content": "signed and delivered"})
	bob.Chat("alice", "and back")
	alice.Expect(map[string]any{"event": "chat", "from": "bob", "content": "and back"})
}

// Without --auth-key-file the article's login works, and the server says
// once, at start, that clients are not authenticated.
func TestUnauthenticatedServerSaysSoOnce(t *testing.T) {
	s := newSystem(t)
	s.startRelay()
	addr, p := s.startServer("msg-1")
	c := testenv.Dial(t, addr)
	c.Login("zhima201")
	c2 := testenv.Dial(t, addr)
	c2.Login("zhima202")
	if n := strings.Count(p.Output(), "clients are not authenticated"); n != 1 {
		t.Fatalf("the warning appears %d times, want once:\n%s", n, p.Output())
	}
	if !strings.Contains(p.Output(), "level=WARN") {
		t.Fatalf("no warning:\n%s", p.Output())
	}
}

func TestAuthKeyProblemsAreClearErrors(t *testing.T) {
	bin := testenv.Build(t, "msgserver")
	pub, priv := ed25519Files(t)
	short := writeFile(t, "short.key", []byte("too-short\n"))
	broken := writeFile(t, "broken.pem", []byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"))
	hs := writeFile(t, "auth.hs256", []byte(e2eHMACKey))
	base := []string{"--id", "msg-1", "--listen", "127.0.0.1:0", "--admin", ""}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing key file", append(base, "--auth-key-file", "/nonexistent/auth.key"), "--auth-key-file: open /nonexistent/auth.key"},
		{"short key", append(base, "--auth-key-file", short), "use at least 32"},
		{"private key on a server", append(base, "--auth-key-file", priv), "a message server needs only the public key"},
		{"broken PEM", append(base, "--auth-key-file", broken), "PEM public key"},
		{"audience without key", append(base, "--auth-audience", "chat"), "no auth key"},
		{"negative leeway", append(base, "--auth-key-file", hs, "--auth-leeway", "-1s"), "auth leeway -1s must not be negative"},
		{"token without name", []string{"token", "--key-file", hs}, "--key-file and --name are required"},
		{"token with a public key", []string{"token", "--key-file", pub, "--name", "a"}, "needs the private key"},
		{"token with a short key", []string{"token", "--key-file", short, "--name", "a"}, "use at least 32"},
		{"token with no lifetime", []string{"token", "--key-file", hs, "--name", "a", "--ttl", "0s"}, "must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testenv.Start(t, tc.name, bin, tc.args...)
			if code := p.Wait(10 * time.Second); code != 2 {
				t.Fatalf("exit code %d, want 2; output:\n%s", code, p.Output())
			}
			if !strings.Contains(p.Output(), tc.want) {
				t.Fatalf("output does not say %q:\n%s", tc.want, p.Output())
			}
		})
	}
}

func TestAuthFlagsDocumented(t *testing.T) {
	bin := testenv.Build(t, "msgserver")
	for _, tc := range []struct {
		args  []string
		flags []string
	}{
		{[]string{"--help"}, []string{"--auth-key-file", "--auth-leeway", "--auth-audience", "--auth-issuer"}},
		{[]string{"token", "--help"}, []string{"--key-file", "--name", "--ttl", "--audience", "--issuer"}},
	} {
		p := testenv.Start(t, "msgserver", bin, tc.args...)
		if code := p.Wait(10 * time.Second); code != 0 {
			t.Fatalf("msgserver %v exit code %d", tc.args, code)
		}
		for _, f := range tc.flags {
			if !strings.Contains(p.Output(), f+" ") {
				t.Errorf("msgserver %v does not document %s:\n%s", tc.args, f, p.Output())
			}
		}
	}
}

// The demo with --auth prints a login line with a token for each example
// user; those log in, the article's name-only login does not.
func TestDemoWithAuth(t *testing.T) {
	bin := testenv.Build(t, "demo")
	ports := make([]int, 3)
	for i := range ports {
		ports[i] = testenv.FreePort(t)
	}
	p := testenv.Start(t, "demo", bin, "--auth", "--relay-port", fmt.Sprint(ports[0]), "--port1", fmt.Sprint(ports[1]),
		"--port2", fmt.Sprint(ports[2]), "--admin-port", "0", "--log-level", "warn")
	p.WaitOutput("Ctrl-C stops everything", 20*time.Second)
	logins := regexp.MustCompile(`\{"cmd":"login","name":"(zhima20[12])","token":"[^"]+"\}`).FindAllStringSubmatch(p.Output(), -1)
	keyFile := regexp.MustCompile(`--key-file (\S+)`).FindStringSubmatch(p.Output())
	if len(logins) != 2 || logins[0][1] != "zhima201" || logins[1][1] != "zhima202" || keyFile == nil {
		t.Fatalf("demo --auth did not print a token login for each user and the key file:\n%s", p.Output())
	}
	u1 := testenv.Dial(t, fmt.Sprintf("127.0.0.1:%d", ports[1]))
	u2 := testenv.Dial(t, fmt.Sprintf("127.0.0.1:%d", ports[2]))
	u1.SendLine(`{"cmd":"login","name":"zhima201"}`)
	u1.Expect(map[string]any{"reply": "login", "ok": false, "code": "auth_failed"})
	u1.SendLine(logins[0][0])
	u1.Expect(map[string]any{"reply": "login", "ok": true, "name": "zhima201"})
	u2.SendLine(logins[1][0])
	u2.Expect(map[string]any{"reply": "login", "ok": true, "name": "zhima202"})
	u1.SendLine(`{"cmd":"chat","send":"zhima201","recv":"zhima202","content":"how are you"}`)
	u2.Expect(map[string]any{"event": "chat", "from": "zhima201", "content": "how are you"})
	// The key file it printed makes tokens the demo's servers accept.
	u3 := testenv.Dial(t, fmt.Sprintf("127.0.0.1:%d", ports[1]))
	u3.LoginWithToken("zhima203", token(t, testenv.Build(t, "msgserver"), keyFile[1], "zhima203"))

	p.Signal(syscall.SIGINT)
	if code := p.Wait(10 * time.Second); code != 0 {
		t.Fatalf("demo exit code %d after Ctrl-C", code)
	}
	if _, err := os.Stat(keyFile[1]); !os.IsNotExist(err) {
		t.Fatalf("the demo left its key file behind: %v", err)
	}
}
