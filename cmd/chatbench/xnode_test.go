package main

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"testing"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/testenv"
)

// TestXnodeClosedOnDelivery runs chatbench xnode, as a built binary, in its
// default closed loop (a slot is freed when the partner receives the
// message) through a real tier (relay, two message servers, Redis) for a
// second, and checks what it reports: every message delivered once, no
// refusal, both servers' senders measured.
func TestXnodeClosedOnDelivery(t *testing.T) {
	bin := testenv.Build(t, "chatbench")
	rd := testenv.StartRedis(t)
	rl := testenv.StartRelay(t, "", relay.Config{})
	// No per-connection request rate: a few users sending flat out pass
	// the default 500 a second on a fast machine, and the test is of the
	// measurement, not of the limit.
	a := testenv.StartServer(t, rd.Addr, msgserver.Config{ID: "msg-a", RelayAddr: rl.Addr, RequestRate: -1})
	b := testenv.StartServer(t, rd.Addr, msgserver.Config{ID: "msg-b", RelayAddr: rl.Addr, RequestRate: -1})
	testenv.WaitLinked(t, a, b)

	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "xnode", "--servers", a.Addr+","+b.Addr, "--users", "20", "--window", "8",
		"--duration", "1s", "--warmup", "200ms", "--json", "--quiet")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chatbench xnode: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	var res result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("result is not JSON: %v\n%s", err, stdout.String())
	}
	t.Logf("xnode: %s", bytes.TrimSpace(stdout.Bytes()))
	if res.Closed != "delivery" || res.Window != 8 {
		t.Errorf("closed %q window %d, want delivery 8", res.Closed, res.Window)
	}
	if res.Delivered == 0 || res.Lost != 0 || res.Duplicated != 0 || res.Errors != 0 || len(res.Refused) != 0 {
		t.Errorf("delivered %d, lost %d, duplicated %d, errors %d, refused %v; want some delivered and no failure",
			res.Delivered, res.Lost, res.Duplicated, res.Errors, res.Refused)
	}
	if len(res.ServerMsgsPerSec) != 2 || res.ServerMsgsPerSec[0] == 0 || res.ServerMsgsPerSec[1] == 0 {
		t.Errorf("per-server rates %v: want both servers' senders measured", res.ServerMsgsPerSec)
	}
}
