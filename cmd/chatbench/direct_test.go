package main

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"testing"

	"github.com/chatrelay/chatrelay/testenv"
)

// TestDirectBaseline runs chatbench direct as a built binary (it re-executes
// itself to start its two nodes) and checks that messages flow across the
// direct link with none lost or shown twice.
func TestDirectBaseline(t *testing.T) {
	bin := testenv.Build(t, "chatbench")
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "direct", "--users", "20", "--window", "8", "--duration", "1s", "--warmup", "200ms", "--json", "--quiet")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		t.Fatalf("chatbench direct: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	var res struct {
		Mode       string  `json:"mode"`
		Users      int     `json:"users"`
		Sent       int64   `json:"sent"`
		MsgsPerSec float64 `json:"msgs_per_sec"`
		Lost       int64   `json:"lost"`
		Duplicated int64   `json:"duplicated"`
		Errors     int64   `json:"errors"`
		NodeCPU    float64 `json:"node_cpu_ms_per_1k"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("result is not JSON: %v\n%s", err, stdout.String())
	}
	t.Logf("direct: %s", bytes.TrimSpace(stdout.Bytes()))
	if res.Mode != "direct-window" || res.Users != 20 {
		t.Errorf("mode %q users %d, want direct-window 20", res.Mode, res.Users)
	}
	if res.MsgsPerSec <= 0 || res.Sent == 0 {
		t.Errorf("msgs/s %.0f sent %d: nothing flowed", res.MsgsPerSec, res.Sent)
	}
	if res.Lost != 0 || res.Duplicated != 0 || res.Errors != 0 {
		t.Errorf("lost %d, duplicated %d, errors %d; want 0 each", res.Lost, res.Duplicated, res.Errors)
	}
	if res.NodeCPU <= 0 {
		t.Errorf("node CPU per 1k messages %.2f ms: not measured", res.NodeCPU)
	}
}

// TestDirectPayloadRoundTrip checks the node's Forward payload codec,
// including the malformed inputs a peer could send.
func TestDirectPayloadRoundTrip(t *testing.T) {
	b := appendDirectPayload(nil, "zhima201", "zhima202", 1732000000000, "how are you")
	from, to, ts, content, err := parseDirectPayload(b)
	if err != nil || from != "zhima201" || to != "zhima202" || ts != 1732000000000 || content != "how are you" {
		t.Fatalf("round trip = %q %q %d %q %v", from, to, ts, content, err)
	}
	for _, bad := range [][]byte{nil, {5, 'a'}, {1, 'a', 1, 'b', 0, 0}, b[:len(b)-len("how are you")-1]} {
		if _, _, _, _, err := parseDirectPayload(bad); err == nil {
			t.Errorf("parseDirectPayload(%q) accepted", bad)
		}
	}
}

// TestRunRejectsBadFlags checks usage errors exit 2 for the new modes.
func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"nope"},
		{"idle", "--sessions", "0", "--metrics", "http://127.0.0.1:1/metrics"},
		{"idle", "--sessions", "10"}, // neither --metrics nor --pid
		{"direct", "--users", "3"},
		{"direct-node", "--listen", "127.0.0.1:0"}, // neither --link-listen nor --peer
	} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 2 {
			t.Errorf("run(%q) = %d, want 2; stderr: %s", args, code, errb.String())
		}
	}
}
