package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/testenv"
)

// runBin runs bin with args to completion (10s at most) and returns its
// exit code, stdout and stderr apart.
func runBin(t *testing.T, bin string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	// A binary built with -race sleeps 1 s at exit by default: the time a
	// test measures would include it.
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", filepath.Base(bin), args, err)
	}
	return code, stdout.String(), stderr.String()
}

// Every binary answers --version with one line on stdout.
func TestVersionOnEveryBinary(t *testing.T) {
	re := regexp.MustCompile(`^(\S+) (\S+) \(revision \S+, go\S+\)\n$`)
	for _, name := range []string{"relay", "msgserver", "demo", "chatbench", "drill"} {
		code, stdout, stderr := runBin(t, testenv.Build(t, name), "--version")
		if m := re.FindStringSubmatch(stdout); code != 0 || m == nil || m[1] != name || stderr != "" {
			t.Errorf("%s --version: exit %d, stdout %q, stderr %q", name, code, stdout, stderr)
		}
	}
}

// A release build sets the version and revision with -ldflags -X; they
// show in --version, /healthz and chatrelay_build_info.
func TestReleaseVersionShows(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "relay")
	cmd := exec.Command("go", "build", "-o", bin, "-ldflags",
		"-X github.com/chatrelay/chatrelay/internal/version.version=v9.8.7 -X github.com/chatrelay/chatrelay/internal/version.revision=0123abc",
		"./cmd/relay")
	cmd.Dir = testenv.ModuleRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if code, stdout, _ := runBin(t, bin, "--version"); code != 0 || !strings.HasPrefix(stdout, "relay v9.8.7 (revision 0123abc, go") {
		t.Fatalf("--version: exit %d: %q", code, stdout)
	}
	secret := filepath.Join(t.TempDir(), "link.secret")
	if err := os.WriteFile(secret, []byte("version-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := testenv.Start(t, "relay", bin, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--link-secret-file", secret)
	admin := p.WaitAddr("admin listening", 10*time.Second)
	if _, rep := healthz(t, admin); rep.Version != "v9.8.7" {
		t.Errorf("/healthz version %q, want v9.8.7", rep.Version)
	}
	_, metrics := get(t, "http://"+admin+"/metrics")
	if !regexp.MustCompile(`(?m)^chatrelay_build_info\{goversion="go[^"]+",revision="0123abc",version="v9.8.7"\} 1$`).Match(metrics) {
		t.Errorf("no chatrelay_build_info with the release's labels:\n%s", metrics)
	}
}

// A mistyped flag or a bad value is one line on stderr naming the mistake
// and the help; --help is the help on stdout. The same for the
// subcommands as for the main commands.
func TestFlagMistakesAreOneLine(t *testing.T) {
	relay, server := testenv.Build(t, "relay"), testenv.Build(t, "msgserver")
	for _, c := range []struct {
		bin  string
		args []string
		want string
	}{
		{relay, []string{"--lisen", ":7000"}, "relay: unknown flag --lisen (did you mean --listen?); relay --help lists the flags"},
		{relay, []string{"--ping", "often"}, `relay: invalid value "often" for flag --ping: parse error; relay --help lists the flags`},
		{relay, []string{"--listen"}, "relay: flag needs an argument: --listen; relay --help lists the flags"},
		{relay, []string{"check", "--admn", "x"}, "relay check: unknown flag --admn (did you mean --admin?); relay check --help lists the flags"},
		{relay, []string{"render-keepalived", "--topolgy", "x"}, "relay render-keepalived: unknown flag --topolgy (did you mean --topology?)"},
		{relay, []string{"render-lab", "--nope"}, "relay render-lab: unknown flag --nope; relay render-lab --help lists the flags"},
		{relay, []string{"gen-certs", "--out"}, "relay gen-certs: flag needs an argument: --out"},
		{server, []string{"--redis-pasword-file", "x"}, "msgserver: unknown flag --redis-pasword-file (did you mean --redis-password-file?)"},
		{server, []string{"token", "--nme", "x"}, "msgserver token: unknown flag --nme (did you mean --name?)"},
		{server, []string{"stray"}, `msgserver: unexpected arguments ["stray"]`},
	} {
		code, stdout, stderr := runBin(t, c.bin, c.args...)
		if code != 2 || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, c.want) {
			t.Errorf("%s %q: exit %d, stdout %q, stderr %q; want exit 2 and one line starting %q", filepath.Base(c.bin), c.args, code, stdout, stderr, c.want)
		}
	}
	for _, c := range []struct {
		bin  string
		args []string
		head string
	}{
		{relay, []string{"--help"}, "relay: "},
		{relay, []string{"check", "-h"}, "relay check: "},
		{relay, []string{"render-keepalived", "--help"}, "relay render-keepalived: "},
		{relay, []string{"render-lab", "--help"}, "relay render-lab: "},
		{relay, []string{"gen-certs", "--help"}, "relay gen-certs: "},
		{server, []string{"--help"}, "msgserver: "},
		{server, []string{"token", "--help"}, "msgserver token: "},
	} {
		code, stdout, stderr := runBin(t, c.bin, c.args...)
		if code != 0 || stderr != "" || !strings.HasPrefix(stdout, c.head) || !strings.Contains(stdout, "\nFlags") ||
			!regexp.MustCompile(`(?m)^  --[a-z-]+( [a-z]+)?( \(CHATRELAY_[A-Z_]+\))?\n    \t\S`).MatchString(stdout) {
			t.Errorf("%s %q: exit %d, stderr %q, help:\n%s", filepath.Base(c.bin), c.args, code, stderr, stdout)
		}
	}
}

// Draining a message server process through its admin API (with a token
// from --admin-token-file): its client is told to reconnect, moves to the
// other server, and the drained process exits 0 by itself.
func TestDrainedServerExits(t *testing.T) {
	o := newObserved(t)
	dir := t.TempDir()
	short := filepath.Join(dir, "short.token")
	token := "drain-token-0123456789abcdef"
	tokenFile := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(short, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runBin(t, o.serverBin, "--id", "msg-x", "--admin-token-file", short, "--redis", o.redis.URL())
	if code != 2 || !strings.Contains(stderr, "--admin-token-file: the token in "+short+" is 5 bytes; use at least 16") {
		t.Errorf("a short token: exit %d, %q", code, stderr)
	}

	a := o.addServerArgs("msg-1", "--admin-token-file", tokenFile)
	b := o.addServer("msg-2")
	u := testenv.Dial(t, a.addr)
	u.Login("drained-user")
	peer := testenv.Dial(t, b.addr)
	peer.Login("peer-user")

	if code, _ := testenv.AdminCall(t, http.MethodPost, "http://"+a.admin+"/admin/drain?timeout=1m", ""); code != http.StatusUnauthorized {
		t.Fatalf("drain without the token: HTTP %d", code)
	}
	if code, got := testenv.AdminCall(t, http.MethodPost, "http://"+a.admin+"/admin/drain?timeout=1m", token); code != http.StatusAccepted {
		t.Fatalf("drain: HTTP %d %v", code, got)
	}
	u.Expect(map[string]any{"event": "reconnect", "code": "draining"})
	peer.Chat("drained-user", "still here")
	peer.Expect(map[string]any{"reply": "chat", "status": "relayed"})
	moved := testenv.Dial(t, b.addr)
	moved.Login("drained-user")
	if code := a.proc.Wait(15 * time.Second); code != 0 {
		t.Fatalf("drained msg-1 exit code %d", code)
	}
	if out := a.proc.Output(); !strings.Contains(out, "drain over, shutting down") {
		t.Errorf("msg-1's log does not say the drain ended it:\n%s", out)
	}
	peer.Chat("drained-user", "moved")
	peer.Expect(map[string]any{"reply": "chat", "status": "delivered"})
	moved.Expect(map[string]any{"event": "chat", "content": "moved"})
}

// --redis-password-file: a message server logs users in on a Redis that
// requires a password; relay check refuses a password file it cannot read.
func TestRedisPasswordFile(t *testing.T) {
	o := newObserved(t)
	if out, err := o.redis.Command("CONFIG", "SET", "requirepass", "e2e-redis-password"); err != nil || !strings.Contains(out, "OK") {
		t.Fatalf("CONFIG SET requirepass: %q %v", out, err)
	}
	pass := filepath.Join(t.TempDir(), "redis.password")
	if err := os.WriteFile(pass, []byte("e2e-redis-password\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	s := o.addServerArgs("msg-1", "--redis-password-file", pass)
	c := testenv.Dial(t, s.addr)
	c.Login("with-password")
	if strings.Contains(s.proc.Output(), "Redis failing") {
		t.Errorf("the server logged Redis failures:\n%s", s.proc.Output())
	}
	code, _, stderr := runBin(t, o.relayBin, "check", "--admin", o.relayAdmin, "--redis", o.redis.URL(), "--redis-password-file", pass+".missing")
	if code != 2 || !strings.Contains(stderr, "relay check: --redis-password-file: read Redis password") {
		t.Errorf("relay check with a missing password file: exit %d, %q", code, stderr)
	}
	code, stdout, _ := runBin(t, o.relayBin, "check", "--admin", o.relayAdmin, "--link", "", "--redis", o.redis.URL(), "--redis-password-file", pass)
	if code != 0 {
		t.Errorf("relay check with the password file: exit %d, %q", code, stdout)
	}
}

// addServerArgs is addServer with more flags.
func (o *observed) addServerArgs(id string, extra ...string) *observedServer {
	addr, p := o.startServer(id, append([]string{"--admin", "127.0.0.1:0"}, extra...)...)
	admin := p.WaitAddr("admin listening", 10*time.Second)
	s := &observedServer{addr: addr, admin: admin, proc: p}
	o.servers[id] = s
	return s
}

// keepalived's check runs are seen by the relay: relay_vrrp_check_age_seconds
// grows while nothing checks, and falls back when `relay check` runs. A
// relay without --vip, which no keepalived checks, does not export it.
func TestRelayCountsKeepalivedChecks(t *testing.T) {
	o := newObserved(t, "--vip", "127.0.0.1")
	age := func() float64 {
		_, b := get(t, "http://"+o.relayAdmin+"/metrics")
		m := regexp.MustCompile(`(?m)^relay_vrrp_check_age_seconds (\S+)$`).FindSubmatch(b)
		if m == nil {
			t.Fatalf("no relay_vrrp_check_age_seconds:\n%s", b)
		}
		var v float64
		if _, err := fmt.Sscan(string(m[1]), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	var before float64
	testenv.Eventually(t, 10*time.Second, "the check age to pass 1s with no check", func() bool {
		before = age()
		return before > 1
	})
	if code, stdout, stderr := runBin(t, o.relayBin, "check", "--admin", o.relayAdmin, "--link", ""); code != 0 {
		t.Fatalf("relay check: exit %d %q %q", code, stdout, stderr)
	}
	if after := age(); after >= before || after > 1 {
		t.Errorf("check age %gs before relay check, %gs after: the relay did not see the check", before, after)
	}

	plain := newObserved(t)
	if _, b := get(t, "http://"+plain.relayAdmin+"/metrics"); bytes.Contains(b, []byte("relay_vrrp_check_age_seconds")) {
		t.Error("a relay without --vip exports relay_vrrp_check_age_seconds (KeepalivedDown would fire for it)")
	}
}
