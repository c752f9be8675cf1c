// Package prometheus_test checks the lab's Prometheus configuration (rendered
// from the topology, see package vagrant) and the alerting rules in this
// folder with promtool (Debian package "prometheus").
package prometheus_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

const missingPromtool = "promtool missing: install the Debian package prometheus"

// promtool returns the path of the promtool binary, skipping the test when it
// is not installed, or failing it when running in CI (env CI set).
func promtool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(missingPromtool)
		}
		t.Skip(missingPromtool)
	}
	return path
}

// runPromtool runs promtool with args in this package's directory (go test
// runs tests there, so the relative file names resolve) and fails the test
// with promtool's output if it exits non-zero.
func runPromtool(t *testing.T, args ...string) {
	t.Helper()
	bin := promtool(t)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	cmd := exec.CommandContext(ctx, bin, args...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("promtool %v: timed out: %v\n%s", args, ctx.Err(), out)
	}
	if err != nil {
		t.Fatalf("promtool %v: %v\n%s", args, err, out)
	}
	t.Logf("promtool %v:\n%s", args, out)
}

func TestCheckConfig(t *testing.T) {
	// Also checks the rule files the config loads (alerts.yml).
	runPromtool(t, "check", "config", "prometheus.yml")
}

func TestCheckRules(t *testing.T) {
	runPromtool(t, "check", "rules", "alerts.yml")
}

func TestAlertRuleUnitTests(t *testing.T) {
	runPromtool(t, "test", "rules", "alerts_test.yml")
}

// TestEveryAlertIsTested guards against gaps promtool does not report: an
// alert without unit tests, or an "exp_alerts: []" case whose alertname is
// misspelled (which passes without checking anything). Every alert in
// alerts.yml needs at least one case where it fires and one where it must
// not. It reads the YAML line by line (standard library only), so it relies on
// the layout used in these files: "- alert: Name" in alerts.yml, and
// "alertname: Name" followed by its "exp_alerts:" line in alerts_test.yml.
func TestEveryAlertIsTested(t *testing.T) {
	alertRe := regexp.MustCompile(`^\s*-\s*alert:\s*(\S+)\s*$`)
	nameRe := regexp.MustCompile(`^\s*(?:-\s*)?alertname:\s*(\S+)\s*$`)
	expRe := regexp.MustCompile(`^\s*exp_alerts:\s*(.*?)\s*$`)

	defined := map[string]bool{}
	for _, line := range readLines(t, "alerts.yml") {
		if m := alertRe.FindStringSubmatch(line); m != nil {
			defined[m[1]] = true
		}
	}
	if len(defined) == 0 {
		t.Fatal("no alerts found in alerts.yml")
	}

	fires, silent := map[string]bool{}, map[string]bool{}
	current := ""
	for i, line := range readLines(t, "alerts_test.yml") {
		if m := nameRe.FindStringSubmatch(line); m != nil {
			current = m[1]
			if !defined[current] {
				t.Errorf("alerts_test.yml:%d: alertname %q is not defined in alerts.yml", i+1, current)
			}
			continue
		}
		if m := expRe.FindStringSubmatch(line); m != nil && current != "" {
			if strings.HasPrefix(m[1], "[]") {
				silent[current] = true
			} else {
				fires[current] = true
			}
			current = ""
		}
	}
	for name := range defined {
		if !fires[name] {
			t.Errorf("alert %s has no test case where it fires", name)
		}
		if !silent[name] {
			t.Errorf("alert %s has no test case where it must not fire", name)
		}
	}
}

func readLines(t *testing.T, name string) []string {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// TestEveryAlertHasARunbook: each alert's runbook_url points at a section
// of this folder's README (a heading whose GitHub anchor it names).
func TestEveryAlertHasARunbook(t *testing.T) {
	const base = "https://github.com/chatrelay/chatrelay/blob/main/health/prometheus/README.md#"
	anchors := map[string]bool{}
	for _, line := range readLines(t, "README.md") {
		if h, ok := strings.CutPrefix(line, "### "); ok {
			anchors[strings.ToLower(strings.ReplaceAll(strings.TrimSpace(h), " ", "-"))] = true
		}
	}
	alertRe := regexp.MustCompile(`^\s*-\s*alert:\s*(\S+)\s*$`)
	runbookRe := regexp.MustCompile(`^\s*runbook_url:\s*"([^"]*)"\s*$`)
	current, n := "", 0
	check := func() {
		if current != "" {
			t.Errorf("alert %s has no runbook_url annotation", current)
		}
	}
	for _, line := range readLines(t, "alerts.yml") {
		if m := alertRe.FindStringSubmatch(line); m != nil {
			check()
			current = m[1]
			n++
			continue
		}
		if m := runbookRe.FindStringSubmatch(line); m != nil && current != "" {
			anchor, ok := strings.CutPrefix(m[1], base)
			if !ok || !anchors[anchor] || anchor != strings.ToLower(current) {
				t.Errorf("alert %s: runbook_url %q is not %s%s, or README.md has no section ### %s", current, m[1], base, strings.ToLower(current), current)
			}
			current = ""
		}
	}
	check()
	if n == 0 {
		t.Fatal("no alerts found in alerts.yml")
	}
}
