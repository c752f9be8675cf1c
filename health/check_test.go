package health

import (
	"strings"
	"testing"
	"time"
)

func TestEvaluateRule(t *testing.T) {
	now := time.Now()
	ago := func(d time.Duration) *time.Time { t := now.Add(-d); return &t }
	links := []Link{{Server: "msg-1"}, {Server: "msg-2"}}
	cases := []struct {
		name    string
		rep     Report
		servers int
		ok      bool
		says    string
	}{
		{"master with links", Report{Role: "master", Links: links, LinksUp: 2}, 2, true, "master, 2/2 links up"},
		{"master with some links", Report{Role: "master", Links: links, LinksUp: 1}, 2, true, "1/2"},
		{"master without links within grace", Report{Role: "master", Links: links, NoLinksSince: ago(time.Second)}, 2, true, "within grace"},
		{"master without links past grace", Report{Role: "master", Links: links, NoLinksSince: ago(5 * time.Second)}, 2, false, "holds the VIP but no message server link"},
		{"master without links and no servers anywhere", Report{Role: "master", NoLinksSince: ago(time.Hour)}, 0, true, "master"},
		{"backup without links", Report{Role: "backup", NoLinksSince: ago(time.Hour)}, 2, true, "backup, no links"},
		{"backup with links (just lost the VIP)", Report{Role: "backup", Links: links, LinksUp: 2}, 2, true, "backup, 2/2"},
		{"standalone", Report{Role: "standalone", Links: links, LinksUp: 2}, 2, true, "standalone"},
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
