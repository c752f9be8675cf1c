package grafana_test

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/parser"

	"github.com/chatrelay/chatrelay/health/grafana"
	"github.com/chatrelay/chatrelay/internal/certs/certstest"
	"github.com/chatrelay/chatrelay/testenv"
)

type panel struct {
	Title   string  `json:"title"`
	Type    string  `json:"type"`
	Panels  []panel `json:"panels"` // a row's
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Datasource struct {
		UID string `json:"uid"`
	} `json:"datasource"`
}

// promql parses as Prometheus does by default.
var promql = parser.NewParser(parser.Options{})

// grafanaVars are the Grafana variables the dashboard may use in PromQL,
// with what they stand for when parsed.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "$__interval", "1m", "$__range", "1h")

// dashboardMetrics parses every expression in the dashboard and returns
// the metric names they select, each with the panel that uses it.
func dashboardMetrics(t *testing.T) map[string]string {
	t.Helper()
	var d struct {
		UID    string  `json:"uid"`
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(grafana.Dashboard, &d); err != nil {
		t.Fatalf("chatrelay.json: %v", err)
	}
	if d.UID == "" {
		t.Error("the dashboard has no uid (provisioning needs a stable one)")
	}
	names := map[string]string{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			if p.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: datasource %q, want the ${datasource} variable (the dashboard must not name one installation's)", p.Title, p.Datasource.UID)
			}
			for _, tg := range p.Targets {
				expr, err := promql.ParseExpr(grafanaVars.Replace(tg.Expr))
				if err != nil {
					t.Errorf("panel %q: %q does not parse: %v", p.Title, tg.Expr, err)
					continue
				}
				parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
					if vs, ok := n.(*parser.VectorSelector); ok {
						if vs.Name == "" {
							t.Errorf("panel %q: %q selects no metric by name", p.Title, tg.Expr)
						}
						names[vs.Name] = p.Title
					}
					return nil
				})
			}
		}
	}
	walk(d.Panels)
	if len(names) == 0 {
		t.Fatal("no metrics found in the dashboard")
	}
	return names
}

// TestDashboardQueriesParse needs nothing running: a broken expression is
// found even where the binaries cannot be started.
func TestDashboardQueriesParse(t *testing.T) {
	dashboardMetrics(t)
}

// TestDashboardMetricsExist runs a relay (TLS link, --vip on a loopback
// address it holds) and two message servers as processes, makes each
// series the dashboard shows exist (logins that succeed and fail, local
// and relayed messages), and checks that every metric named by the
// dashboard is exported by one of them.
func TestDashboardMetricsExist(t *testing.T) {
	want := dashboardMetrics(t)
	redis := testenv.StartRedis(t)
	relayBin, serverBin := testenv.Build(t, "relay"), testenv.Build(t, "msgserver")
	dir := t.TempDir()
	secret := filepath.Join(dir, "link.secret")
	if err := os.WriteFile(secret, []byte("dashboard-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := certstest.NewCA(t)
	cert, key := ca.Issue(t, "relay", "127.0.0.1")

	relay := testenv.Start(t, "relay", relayBin, "--id", "relay-a", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
		"--link-secret-file", secret, "--tls-cert", cert, "--tls-key", key, "--vip", "127.0.0.1")
	relayAddr := relay.WaitAddr("relay listening", 10*time.Second)
	admins := []string{relay.WaitAddr("admin listening", 10*time.Second)}
	var addrs []string
	for _, id := range []string{"msg-1", "msg-2"} {
		p := testenv.Start(t, id, serverBin, "--id", id, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
			"--relay", relayAddr, "--link-ca", ca.File, "--redis", redis.URL(), "--link-secret-file", secret)
		addrs = append(addrs, p.WaitAddr("accepting clients", 10*time.Second))
		admins = append(admins, p.WaitAddr("admin listening", 10*time.Second))
		p.WaitOutput("relay link up", 10*time.Second)
	}

	a := testenv.Dial(t, addrs[0])
	a.Login("dash-a")
	b := testenv.Dial(t, addrs[0])
	b.Login("dash-b")
	c := testenv.Dial(t, addrs[1])
	c.Login("dash-c")
	bad := testenv.Dial(t, addrs[1])
	bad.Send(map[string]any{"cmd": "login", "name": ""})
	bad.Expect(map[string]any{"reply": "login", "ok": false})
	a.Chat("dash-b", "local")
	b.Expect(map[string]any{"event": "chat", "content": "local"})
	a.Chat("dash-c", "relayed")
	c.Expect(map[string]any{"event": "chat", "content": "relayed"})

	var missing []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		exported := map[string]bool{}
		for _, admin := range admins {
			for _, n := range scrape(t, admin) {
				exported[n] = true
			}
		}
		missing = missing[:0]
		for name := range want {
			if !exported[name] {
				missing = append(missing, name)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // metrics are polled: nothing to await
	}
	slices.Sort(missing)
	for _, name := range missing {
		t.Errorf("panel %q uses %s, which neither the relay nor a message server exports", want[name], name)
	}
}

// scrape returns the names of the samples admin's /metrics serves.
func scrape(t *testing.T, admin string) []string {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", admin, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: HTTP %d, %v", admin, resp.StatusCode, err)
	}
	var names []string
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, _, _ := strings.Cut(line, " ")
		name, _, _ = strings.Cut(name, "{")
		names = append(names, name)
	}
	if len(names) == 0 {
		t.Fatalf("scrape %s: no samples", admin)
	}
	return names
}
