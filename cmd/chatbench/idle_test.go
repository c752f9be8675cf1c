package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/testenv"
)

// TestIdleAgainstRealServer opens idle sessions on a real message server
// (in this process, so --pid is our own) backed by a real redis-server.
func TestIdleAgainstRealServer(t *testing.T) {
	rds := testenv.StartRedis(t)
	srv := testenv.StartServer(t, rds.Addr, msgserver.Config{ID: "msg-idle"})
	res, err := runIdle(idleConfig{
		Server:      srv.Addr,
		Sessions:    60,
		PID:         os.Getpid(),
		Concurrency: 8,
		Hold:        100 * time.Millisecond,
		PingEvery:   30 * time.Millisecond, // a few pings while held
		OpenTimeout: 30 * time.Second,
		Prefix:      "idle-test",
		SourceIPs:   "auto",
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.LoggedIn != 60 || res.Failed != 0 || res.Dropped != 0 {
		t.Fatalf("logged in %d, failed %d (%s), dropped %d; want 60, 0, 0", res.LoggedIn, res.Failed, res.FirstError, res.Dropped)
	}
	if res.LoginsPerSec <= 0 || res.RSSBeforeBytes <= 0 || res.RSSAfterBytes <= 0 {
		t.Errorf("logins/s %.0f, RSS %d -> %d: not measured", res.LoginsPerSec, res.RSSBeforeBytes, res.RSSAfterBytes)
	}
	// runIdle closes everything before it returns; the server notices at once.
	testenv.Eventually(t, 5*time.Second, "sessions to end", func() bool { return srv.Sessions() == 0 })
}

// With --key-file every login carries a token the server checks, and the
// server's CPU per login is reported.
func TestIdleWithTokens(t *testing.T) {
	key := []byte("idle-test-hmac-key-0123456789abcdef0123456789")
	authKey, err := msgserver.ParseAuthKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "auth.key")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	rds := testenv.StartRedis(t)
	srv := testenv.StartServer(t, rds.Addr, msgserver.Config{ID: "msg-idle", AuthKey: authKey})
	res, err := runIdle(idleConfig{
		Server:      srv.Addr,
		Sessions:    40,
		PID:         os.Getpid(),
		Concurrency: 8,
		PingEvery:   time.Second,
		OpenTimeout: 30 * time.Second,
		Prefix:      "idle-token",
		SourceIPs:   "none",
		KeyFile:     keyFile,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.LoggedIn != 40 || res.Failed != 0 || res.Tokens != "HS256" {
		t.Fatalf("logged in %d, failed %d (%s), tokens %q; want 40, 0, HS256", res.LoggedIn, res.Failed, res.FirstError, res.Tokens)
	}
	for _, n := range res.Notes {
		if strings.Contains(n, "CPU") { // the figure itself may round to 0 over 40 logins
			t.Errorf("server CPU per 1k logins not measured: %s", n)
		}
	}
	testenv.Eventually(t, 5*time.Second, "sessions to end", func() bool { return srv.Sessions() == 0 })
}

func TestScrapeMetric(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"+
			"# TYPE process_resident_memory_bytes gauge\n"+
			"process_resident_memory_bytes_other 1\n"+
			"process_resident_memory_bytes 1.2345678e+07\n"+
			"msgserver_sessions 42\n")
	}))
	defer ts.Close()
	v, ok, err := scrapeMetric(ts.URL, "process_resident_memory_bytes")
	if err != nil || !ok || v != 12345678 {
		t.Errorf("RSS = %v %v %v, want 12345678", v, ok, err)
	}
	v, ok, err = scrapeMetric(ts.URL, "msgserver_sessions")
	if err != nil || !ok || v != 42 {
		t.Errorf("sessions = %v %v %v, want 42", v, ok, err)
	}
	if _, ok, err := scrapeMetric(ts.URL, "absent"); ok || err != nil {
		t.Errorf("absent metric: ok %v err %v", ok, err)
	}
}

func TestProcRSSAndCPU(t *testing.T) {
	rss, err := procRSS(os.Getpid())
	if err != nil || rss <= 0 {
		t.Errorf("procRSS = %d, %v", rss, err)
	}
	if _, err := procCPU(os.Getpid()); err != nil {
		t.Errorf("procCPU: %v", err)
	}
}

func TestSourceIPs(t *testing.T) {
	ips, err := sourceIPs("auto", "127.0.0.1:7001", 60000)
	if err != nil || len(ips) != 3 || !ips[0].Equal(net.IPv4(127, 0, 0, 2)) || !ips[2].Equal(net.IPv4(127, 0, 0, 4)) {
		t.Errorf("auto for 60000 = %v, %v; want 127.0.0.2..4", ips, err)
	}
	for _, c := range []struct {
		setting, server string
		n               int
	}{{"auto", "127.0.0.1:7001", 20000}, {"auto", "10.0.0.1:7001", 60000}, {"none", "127.0.0.1:7001", 60000}} {
		if ips, err := sourceIPs(c.setting, c.server, c.n); err != nil || ips != nil {
			t.Errorf("sourceIPs(%q, %q, %d) = %v, %v; want none", c.setting, c.server, c.n, ips, err)
		}
	}
	if _, err := sourceIPs("127.0.0.2,junk", "127.0.0.1:7001", 1); err == nil {
		t.Error("a bad address was accepted")
	}
}

// TestDialFromOtherLoopbackAddress checks the dialer idle uses past 25000
// sessions: bound to 127.0.0.3 with IP_BIND_ADDRESS_NO_PORT, to a listener
// on 127.0.0.1.
func TestDialFromOtherLoopbackAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c.RemoteAddr()
		c.Close()
	}()
	d := &net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 3)}, Control: noPortControl}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if a, ok := (<-accepted).(*net.TCPAddr); !ok || !a.IP.Equal(net.IPv4(127, 0, 0, 3)) {
		t.Errorf("server saw the client at %v, want 127.0.0.3", a)
	}
}

// chatbench idle --floor measures the login baseline: it starts the
// login-floor process (the binary re-executes itself), logs every session
// in there and reports that process's CPU per login and RSS.
func TestIdleFloor(t *testing.T) {
	bin := testenv.Build(t, "chatbench")
	var stdout, stderr strings.Builder
	cmd := exec.Command(bin, "idle", "--floor", "--sessions", "1000", "--settle", "100ms", "--hold", "0s", "--json", "--quiet")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chatbench idle --floor: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	var res idleResult
	if err := json.Unmarshal([]byte(stdout.String()), &res); err != nil {
		t.Fatalf("result is not JSON: %v\n%s", err, stdout.String())
	}
	if res.Mode != "floor" || res.LoggedIn != 1000 || res.Failed != 0 {
		t.Fatalf("mode %q, logged in %d, failed %d (%s); want floor, 1000, 0", res.Mode, res.LoggedIn, res.Failed, res.FirstError)
	}
	if res.ServerCPUMsPer1k <= 0 || res.RSSAfterBytes <= 0 || res.TailSeconds != 0.1 {
		t.Errorf("CPU %.1f µs per login, RSS %d, tail %.2f s: not measured (the tail is the settle, 0.1 s, at most)", res.ServerCPUMsPer1k, res.RSSAfterBytes, res.TailSeconds)
	}
}
