// Package e2e runs the built binaries as separate processes against a real
// redis-server, the way an operator runs them.
package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/testenv"
)

type system struct {
	t          *testing.T
	redis      *testenv.Redis
	relayBin   string
	serverBin  string
	secretFile string
	relayAddr  string
	relay      *testenv.Proc
}

func newSystem(t *testing.T) *system {
	s := &system{
		t:         t,
		redis:     testenv.StartRedis(t),
		relayBin:  testenv.Build(t, "relay"),
		serverBin: testenv.Build(t, "msgserver"),
	}
	s.secretFile = filepath.Join(t.TempDir(), "link.secret")
	if err := os.WriteFile(s.secretFile, []byte("e2e-secret-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// listenAddr is where the relay should listen: any free port the first
// time, the same address again after a restart (message servers dial it).
func (s *system) listenAddr() string {
	if s.relayAddr == "" {
		return "127.0.0.1:0"
	}
	return s.relayAddr
}

func (s *system) startRelay() {
	s.relay = testenv.Start(s.t, "relay", s.relayBin, "--id", "relay-e2e", "--listen", s.listenAddr(),
		"--admin", "", "--link-secret-file", s.secretFile)
	s.relayAddr = s.relay.WaitAddr("relay listening", 10*time.Second)
}

func (s *system) startServer(id string, extra ...string) (string, *testenv.Proc) {
	args := append([]string{"--id", id, "--listen", "127.0.0.1:0", "--relay", s.relayAddr, "--redis", s.redis.URL(),
		"--link-secret-file", s.secretFile, "--admin", ""}, extra...)
	p := testenv.Start(s.t, id, s.serverBin, args...)
	addr := p.WaitAddr("accepting clients", 10*time.Second)
	p.WaitOutput("relay link up", 10*time.Second)
	return addr, p
}

func TestRelayKilledAndRestartedMidStreamEveryMessageOnce(t *testing.T) {
	s := newSystem(t)
	s.startRelay()
	addr1, _ := s.startServer("msg-1")
	addr2, _ := s.startServer("msg-2")
	u1 := testenv.Dial(t, addr1)
	u1.Login("zhima201")
	u2 := testenv.Dial(t, addr2)
	u2.Login("zhima202")

	stream := testenv.StartStream(t, u1, "zhima202", 600)
	stream.WaitSent(t, stream.N/3)
	s.relay.Kill() // SIGKILL
	s.startRelay()
	stream.Wait()
	stream.ExpectEachOnce(t, u2, 20*time.Second)
}

func TestSIGTERMShutsDownGracefully(t *testing.T) {
	s := newSystem(t)
	s.startRelay()
	addr, p := s.startServer("msg-1")
	c := testenv.Dial(t, addr)
	c.Login("leaving")
	p.Signal(syscall.SIGTERM)
	got := c.ExpectClosed()
	if len(got) == 0 || got[len(got)-1].S("code") != "shutting_down" {
		t.Fatalf("client was not told of the shutdown: %v", got)
	}
	if code := p.Wait(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	if v, _ := s.redis.Command("EXISTS", "chatrelay:user:leaving", "chatrelay:server:msg-1"); v != ":0" {
		t.Fatalf("presence left behind after shutdown: EXISTS = %s", v)
	}
}

func TestKilledServersUsersExpire(t *testing.T) {
	s := newSystem(t)
	s.startRelay()
	addr, p := s.startServer("msg-1", "--presence-ttl", "1s")
	c := testenv.Dial(t, addr)
	c.Login("doomed")
	if v, _ := s.redis.Command("EXISTS", "chatrelay:user:doomed"); v != ":1" {
		t.Fatalf("no presence after login: %s", v)
	}
	p.Kill()
	testenv.Eventually(t, 5*time.Second, "presence to expire", func() bool {
		v, _ := s.redis.Command("EXISTS", "chatrelay:user:doomed")
		return v == ":0"
	})
}

func TestHelpDocumentsEveryFlag(t *testing.T) {
	for _, tc := range []struct {
		bin   string
		flags []string
	}{
		{"msgserver", []string{"--listen", "--relay", "--redis", "--id", "--advertise", "--link-secret-file", "--link-secret-next-file", "--admin", "--park-idle-after",
			"--inbox-max", "--offline-max-bytes", "--offline-rate", "--stall-after", "--connect-timeout"}},
		{"relay", []string{"--listen", "--admin", "--link-secret-file", "--link-secret-next-file", "--vip", "--id",
			"--max-pending-handshakes", "--max-pending-per-ip", "--forget-after", "--max-known-servers"}},
	} {
		p := testenv.Start(t, tc.bin, testenv.Build(t, tc.bin), "--help")
		if code := p.Wait(10 * time.Second); code != 0 {
			t.Fatalf("%s --help exit code %d", tc.bin, code)
		}
		out := p.Output()
		for _, f := range tc.flags {
			env := "CHATRELAY_" + strings.ToUpper(strings.ReplaceAll(strings.TrimPrefix(f, "--"), "-", "_"))
			if !strings.Contains(out, f+" ") || !strings.Contains(out, env) {
				t.Errorf("%s --help does not document %s (%s):\n%s", tc.bin, f, env, out)
			}
		}
	}
}

func TestBadConfigurationIsAClearError(t *testing.T) {
	serverBin := testenv.Build(t, "msgserver")
	relayBin := testenv.Build(t, "relay")
	short := filepath.Join(t.TempDir(), "short.secret")
	_ = os.WriteFile(short, []byte("tiny"), 0o600)
	good := filepath.Join(t.TempDir(), "good.secret")
	_ = os.WriteFile(good, []byte("a-good-secret-0123456789"), 0o600)
	cases := []struct {
		name, bin string
		args      []string
		want      string
	}{
		{"relay without secret", relayBin, []string{"--listen", "127.0.0.1:0"}, "link secret"},
		{"relay with short secret", relayBin, []string{"--listen", "127.0.0.1:0", "--link-secret-file", short}, "use at least 16"},
		{"relay with short next secret", relayBin, []string{"--listen", "127.0.0.1:0", "--link-secret-file", good, "--link-secret-next-file", short}, "--link-secret-next-file: link secret in"},
		{"relay with bad vip", relayBin, []string{"--link-secret-file", good, "--vip", "not-an-ip"}, "not an IP address"},
		{"server with bad redis url", serverBin, []string{"--redis", "mysql://x"}, "redis url"},
		{"server with sentinel address without port", serverBin, []string{"--redis", "redis-sentinel://h1,h2/mymaster"}, `--redis: redis url: host "h1": want host:port`},
		{"server with unknown redis option", serverBin, []string{"--redis", "redis://127.0.0.1:6379/0?dial_timout=1s"}, "unexpected option: dial_timout"},
		{"relay check with bad redis url", relayBin, []string{"check", "--redis", "redis-cluster://a:7000/3"}, "relay check: --redis: redis url"},
		{"relay render-keepalived with bad redis url", relayBin, []string{"render-keepalived", "--topology", "x.json", "--redis", "redis-sentinel://h1:26379"}, "--redis: redis url"},
		{"server with relay but no secret", serverBin, []string{"--relay", "127.0.0.1:1"}, "link secret"},
		{"server with bad id", serverBin, []string{"--id", "has space", "--listen", "127.0.0.1:0"}, "server id"},
		{"server with negative idle timeout", serverBin, []string{"--idle-timeout", "-1s", "--listen", "127.0.0.1:0"}, "idle timeout -1s must not be negative"},
		{"unknown flag", serverBin, []string{"--no-such-flag"}, "no-such-flag"},
	}
	for _, tc := range cases {
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

// go-redis's own options work in --redis: the client name reaches Redis.
func TestRedisURLTakesGoRedisOptions(t *testing.T) {
	s := newSystem(t)
	s.startRelay()
	addr, _ := s.startServer("msg-1", "--redis", s.redis.URL()+"?client_name=chatrelay-msg-1&dial_timeout=500ms&pool_size=4")
	c := testenv.Dial(t, addr)
	c.Login("named")
	if v, err := s.redis.Command("CLIENT", "LIST"); err != nil || !strings.Contains(v, "name=chatrelay-msg-1") {
		t.Fatalf("CLIENT LIST does not show the client name: %q, %v", v, err)
	}
}

// With --log-format json every line is JSON, go-redis's own included.
func TestJSONLogsIncludeGoRedis(t *testing.T) {
	port := testenv.FreePort(t) // nothing listens there: go-redis logs its failed dials
	p := testenv.Start(t, "msgserver", testenv.Build(t, "msgserver"), "--id", "msg-1", "--listen", "127.0.0.1:0",
		"--admin", "", "--log-format", "json", "--redis", fmt.Sprintf("redis://127.0.0.1:%d/0?dial_timeout=100ms", port))
	p.WaitOutput(`"component":"redis"`, 10*time.Second)
	p.Signal(syscall.SIGTERM)
	p.Wait(10 * time.Second)
	for _, line := range strings.Split(strings.TrimSpace(p.Output()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %v\n%s", err, line)
		}
	}
}

func TestDemoRunsTheArticleScenario(t *testing.T) {
	bin := testenv.Build(t, "demo")
	ports := make([]int, 4)
	for i := range ports {
		ports[i] = testenv.FreePort(t)
	}
	p := testenv.Start(t, "demo", bin, "--relay-port", fmt.Sprint(ports[0]), "--port1", fmt.Sprint(ports[1]),
		"--port2", fmt.Sprint(ports[2]), "--admin-port", "0", "--log-level", "warn")
	p.WaitOutput("telnet 127.0.0.1", 20*time.Second)
	u1 := testenv.Dial(t, fmt.Sprintf("127.0.0.1:%d", ports[1]))
	u2 := testenv.Dial(t, fmt.Sprintf("127.0.0.1:%d", ports[2]))
	u1.SendLine(`{"cmd":"login","name":"zhima201"}`)
	u1.Expect(map[string]any{"reply": "login", "ok": true})
	u2.SendLine(`{"cmd":"login","name":"zhima202"}`)
	u2.Expect(map[string]any{"reply": "login", "ok": true})
	u1.SendLine(`{"cmd":"chat","send":"zhima201","recv":"zhima202","content":"how are you"}`)
	u2.Expect(map[string]any{"event": "chat", "from": "zhima201", "content": "how are you"})
	// The health URLs it printed answer.
	urls := regexp.MustCompile(`curl (http://\S+/healthz)`).FindAllStringSubmatch(p.Output(), -1)
	if len(urls) != 3 {
		t.Fatalf("demo printed %d health URLs, want 3:\n%s", len(urls), p.Output())
	}
	for _, u := range urls {
		if code, _ := get(t, u[1]); code != 200 {
			t.Fatalf("%s answered %d", u[1], code)
		}
	}
	p.Signal(syscall.SIGINT)
	if code := p.Wait(10 * time.Second); code != 0 {
		t.Fatalf("demo exit code %d after Ctrl-C", code)
	}
}
