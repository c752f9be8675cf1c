package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/health"
	"github.com/chatrelay/chatrelay/testenv"
)

// observed is a system whose binaries serve their admin addresses.
type observed struct {
	*system
	relayAdmin string
	servers    map[string]*observedServer
}

type observedServer struct {
	addr, admin string
	proc        *testenv.Proc
}

func newObserved(t *testing.T, relayArgs ...string) *observed {
	o := &observed{system: newSystem(t), servers: map[string]*observedServer{}}
	o.startRelay(relayArgs...)
	return o
}

func (o *observed) startRelay(extra ...string) {
	args := append([]string{"--id", "relay-e2e", "--listen", o.listenAddr(), "--admin", "127.0.0.1:0",
		"--link-secret-file", o.secretFile}, extra...)
	o.relay = testenv.Start(o.t, "relay", o.relayBin, args...)
	o.relayAddr = o.relay.WaitAddr("relay listening", 10*time.Second)
	o.relayAdmin = o.relay.WaitAddr("admin listening", 10*time.Second)
}

func (o *observed) addServer(id string) *observedServer {
	addr, p := o.startServer(id, "--admin", "127.0.0.1:0")
	admin := p.WaitAddr("admin listening", 10*time.Second)
	s := &observedServer{addr: addr, admin: admin, proc: p}
	o.servers[id] = s
	return s
}

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func healthz(t *testing.T, admin string) (int, health.Report) {
	t.Helper()
	code, b := get(t, "http://"+admin+"/healthz")
	var rep health.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("/healthz on %s is not JSON: %v\n%s", admin, err, b)
	}
	return code, rep
}

func TestHealthzDocuments(t *testing.T) {
	o := newObserved(t, "--vip", "127.0.0.1")
	s1 := o.addServer("msg-1")
	o.addServer("msg-2")
	c := testenv.Dial(t, s1.addr)
	c.Login("hal")

	testenv.Eventually(t, 5*time.Second, "relay to report master with 2 measured links", func() bool {
		_, rep := healthz(t, o.relayAdmin)
		measured := 0
		for _, l := range rep.Links {
			if l.RTT > 0 {
				measured++
			}
		}
		return rep.Role == "master" && rep.LinksUp == 2 && measured == 2
	})
	code, rep := healthz(t, o.relayAdmin)
	if code != 200 || !rep.Serving || rep.Service != "relay" || rep.VIP != "127.0.0.1" || len(rep.Links) != 2 {
		t.Fatalf("relay /healthz %d %+v", code, rep)
	}
	for _, l := range rep.Links {
		if !l.Up || l.FramesIn == 0 || l.BytesOut == 0 || l.RTT <= 0 || l.LastHeartbeatAge.Duration() > time.Second || l.Since.IsZero() {
			t.Fatalf("link state incomplete: %+v", l)
		}
	}

	code, rep = healthz(t, s1.admin)
	if code != 200 || rep.Service != "msgserver" || rep.Redis != "ok" || rep.Sessions == nil || *rep.Sessions != 1 ||
		len(rep.Links) != 1 || !rep.Links[0].Up || rep.Links[0].Peer != "relay-e2e" {
		t.Fatalf("msgserver /healthz %d %+v", code, rep)
	}

	o.servers["msg-2"].proc.Kill()
	testenv.Eventually(t, 5*time.Second, "relay to report msg-2 down", func() bool {
		_, rep := healthz(t, o.relayAdmin)
		for _, l := range rep.Links {
			if l.Peer == "msg-2" {
				return !l.Up
			}
		}
		return false
	})

	o.redis.Kill()
	testenv.Eventually(t, 10*time.Second, "msgserver to report Redis unreachable", func() bool {
		_, rep := healthz(t, s1.admin)
		return rep.Redis == "unreachable"
	})
}

func TestMetricsPassPromtool(t *testing.T) {
	promtool := testenv.Need(t, "promtool", "prometheus")
	o := newObserved(t)
	s1 := o.addServer("msg-1")
	s2 := o.addServer("msg-2")
	a := testenv.Dial(t, s1.addr)
	a.Login("ann")
	b := testenv.Dial(t, s2.addr)
	b.Login("bob")
	a.Chat("bob", "counted")
	b.Expect(map[string]any{"event": "chat"})
	a.Chat("nobody", "stored")
	a.Expect(map[string]any{"status": "offline"})

	want := map[string][]string{
		o.relayAdmin: {"relay_link_up{server=\"msg-1\"} 1", "relay_links 2", "relay_frames_forwarded_total 1",
			"relay_bytes_total{direction=\"in\"}", "relay_no_route_total 0", "relay_forward_duration_seconds_bucket",
			"relay_link_rtt_seconds{server=\"msg-2\"}", "process_resident_memory_bytes", "go_goroutines"},
		s1.admin: {"msgserver_sessions 1", "msgserver_messages_total{path=\"relayed\"} 1", "msgserver_messages_total{path=\"offline\"} 1",
			fmt.Sprintf("msgserver_relay_link_up{addr=%q} 1", o.relayAddr), fmt.Sprintf("msgserver_relay_reconnects_total{addr=%q} 0", o.relayAddr), "msgserver_unacked_frames 0",
			"msgserver_redis_errors_total 0", "msgserver_delivery_latency_seconds_count 2", "process_resident_memory_bytes",
			"msgserver_offline_full 0", "msgserver_redis_used_memory_bytes"},
	}
	testenv.Eventually(t, 5*time.Second, "the first link round trips to be measured", func() bool {
		_, body := get(t, "http://"+o.relayAdmin+"/metrics")
		return bytes.Contains(body, []byte(`relay_link_rtt_seconds{server="msg-2"}`))
	})
	for admin, names := range want {
		code, body := get(t, "http://"+admin+"/metrics")
		if code != 200 {
			t.Fatalf("/metrics on %s: HTTP %d", admin, code)
		}
		for _, n := range names {
			if !bytes.Contains(body, []byte(n)) {
				t.Errorf("/metrics on %s lacks %q", admin, n)
			}
		}
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = bytes.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics on %s: %v\n%s", admin, err, out)
		}
	}
}

// A real Prometheus scrapes the live relay and sees a link go down.
func TestPrometheusSeesLinkGoDown(t *testing.T) {
	prom := testenv.Need(t, "prometheus", "prometheus")
	o := newObserved(t)
	s1 := o.addServer("msg-1")
	o.addServer("msg-2")

	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 500ms
  scrape_timeout: 400ms
scrape_configs:
  - job_name: relay
    static_configs: [{targets: ["%s"], labels: {host: relay-a}}]
  - job_name: msgserver
    static_configs: [{targets: ["%s"], labels: {host: msg-1}}]
`, o.relayAdmin, s1.admin)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	web := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	testenv.Start(t, "prometheus", prom, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+web)
	testenv.WaitTCP(t, web, 30*time.Second)

	query := func(q string) string {
		_, b := get(t, "http://"+web+"/api/v1/query?query="+url.QueryEscape(q))
		var r struct {
			Data struct {
				Result []struct {
					Value []any `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if err := json.Unmarshal(b, &r); err != nil || len(r.Data.Result) == 0 || len(r.Data.Result[0].Value) < 2 {
			return ""
		}
		return fmt.Sprint(r.Data.Result[0].Value[1])
	}
	testenv.Eventually(t, 30*time.Second, `Prometheus to see relay_link_up{server="msg-2"} == 1`, func() bool {
		return query(`relay_link_up{server="msg-2"}`) == "1"
	})
	testenv.Eventually(t, 30*time.Second, `Prometheus to see msgserver_relay_link_up{host="msg-1"} == 1`, func() bool {
		return query(`msgserver_relay_link_up{host="msg-1"}`) == "1"
	})
	o.servers["msg-2"].proc.Kill()
	testenv.Eventually(t, 30*time.Second, `Prometheus to see relay_link_up{server="msg-2"} == 0`, func() bool {
		return query(`relay_link_up{server="msg-2"}`) == "0"
	})
	if v := query(`relay_links`); v != "1" {
		t.Fatalf("relay_links after the kill = %q, want 1", v)
	}
}

// The keepalived check against live relays, by its documented rule.
func TestCheckCommandRule(t *testing.T) {
	check := func(t *testing.T, o *observed, extra ...string) (int, string) {
		args := append([]string{"check", "--admin", o.relayAdmin, "--link", o.relayAddr, "--timeout", "300ms", "--grace", "500ms"}, extra...)
		out, err := exec.Command(o.relayBin, args...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) != 1 {
			t.Fatalf("check printed %d lines, want one: %q", len(lines), out)
		}
		return code, strings.TrimSpace(string(out))
	}
	expect := func(t *testing.T, o *observed, wantCode int, says string, extra ...string) {
		t.Helper()
		var code int
		var out string
		testenv.Eventually(t, 10*time.Second, fmt.Sprintf("check to exit %d saying %q", wantCode, says), func() bool {
			code, out = check(t, o, extra...)
			return code == wantCode && strings.Contains(out, says)
		})
	}

	t.Run("master with links passes, fails once its links are gone past the grace", func(t *testing.T) {
		o := newObserved(t, "--vip", "127.0.0.1")
		s := o.addServer("msg-1")
		expect(t, o, 0, "ok: master, 1/1 links up")
		s.proc.Kill()
		expect(t, o, 1, "FAIL: holds the VIP but no message server link")
	})
	t.Run("with --redis, no registered servers means no failure", func(t *testing.T) {
		o := newObserved(t, "--vip", "127.0.0.1")
		s := o.addServer("msg-1")
		expect(t, o, 0, "ok: master, 1/1 links up", "--redis", o.redis.URL())
		s.proc.Signal(syscall.SIGTERM) // graceful: deregisters
		s.proc.Wait(10 * time.Second)
		expect(t, o, 0, "ok: master, 0/1 links up", "--redis", o.redis.URL())
		time.Sleep(time.Second) // let the grace pass: still passes, nobody is registered
		if code, out := check(t, o, "--redis", o.redis.URL()); code != 0 {
			t.Fatalf("check after the grace with no registered servers: %d %s", code, out)
		}
		// Without --redis the relay's own memory of msg-1 counts: it fails.
		expect(t, o, 1, "servers are seen by this relay")
	})
	t.Run("backup without links passes", func(t *testing.T) {
		o := newObserved(t, "--vip", "10.255.255.254") // on no interface of this host
		expect(t, o, 0, "ok: backup, no links")
	})
	t.Run("wedged relay fails, recovers when it resumes", func(t *testing.T) {
		o := newObserved(t)
		o.addServer("msg-1")
		expect(t, o, 0, "ok: standalone")
		o.relay.Signal(syscall.SIGSTOP)
		expect(t, o, 1, "not answering (dead or wedged)")
		o.relay.Signal(syscall.SIGCONT)
		expect(t, o, 0, "ok")
	})
	t.Run("killed relay fails", func(t *testing.T) {
		o := newObserved(t)
		expect(t, o, 0, "ok")
		o.relay.Kill()
		expect(t, o, 1, "not answering (dead or wedged)")
	})
}
