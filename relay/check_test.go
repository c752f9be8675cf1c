package relay

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/health"
)

func TestEvaluateRule(t *testing.T) {
	now := time.Now()
	ago := func(d time.Duration) *time.Time { t := now.Add(-d); return &t }
	links := []health.Link{{Peer: "msg-1"}, {Peer: "msg-2"}}
	cases := []struct {
		name    string
		rep     health.Report
		servers int
		ok      bool
		says    string
	}{
		{"master with links", health.Report{Role: "master", Links: links, LinksUp: 2}, 2, true, "master, 2/2 links up"},
		{"master with some links", health.Report{Role: "master", Links: links, LinksUp: 1}, 2, true, "1/2"},
		{"master without links within grace", health.Report{Role: "master", Links: links, NoLinksSince: ago(time.Second)}, 2, true, "within grace"},
		{"master without links past grace", health.Report{Role: "master", Links: links, NoLinksSince: ago(5 * time.Second)}, 2, false, "holds the VIP but no message server link"},
		{"master without links and no servers anywhere", health.Report{Role: "master", NoLinksSince: ago(time.Hour)}, 0, true, "master"},
		{"backup without links", health.Report{Role: "backup", NoLinksSince: ago(time.Hour)}, 2, true, "backup, no links"},
		{"backup with links (just lost the VIP)", health.Report{Role: "backup", Links: links, LinksUp: 2}, 2, true, "backup, 2/2"},
		{"standalone", health.Report{Role: "standalone", Links: links, LinksUp: 2}, 2, true, "standalone"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := Evaluate(tc.rep, tc.servers, "registered in Redis", 3*time.Second, now)
			if res.OK != tc.ok || !strings.Contains(res.Reason, tc.says) {
				t.Fatalf("got %+v, want ok=%v saying %q", res, tc.ok, tc.says)
			}
		})
	}
}

// A --redis URL the check cannot use is a configuration error (exit 2, as
// for any bad flag), not a failing relay (exit 1) that would move the VIP.
func TestCheckRejectsBadRedisURL(t *testing.T) {
	for _, u := range []string{
		"mysql://x",
		"redis-sentinel://h1,h2:26379/mymaster", // a Sentinel without its port
		"redis-sentinel://h1:26379,h2:26379",    // no master name
		"redis://h:6379/0?dial_timeout=soon",
	} {
		var stdout, stderr bytes.Buffer
		if code := CheckMain([]string{"--admin", "127.0.0.1:1", "--redis", u}, &stdout, &stderr); code != 2 {
			t.Errorf("check --redis %s: exit %d, want 2; stdout %q, stderr %q", u, code, stdout.String(), stderr.String())
		}
		if !strings.Contains(stderr.String(), "relay check: --redis: redis url") {
			t.Errorf("check --redis %s: stderr %q does not say what is wrong", u, stderr.String())
		}
	}
}
