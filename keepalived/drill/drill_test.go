package drill_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/keepalived/drill"
	"github.com/chatrelay/chatrelay/testenv"
)

// The drill suite: every scenario on a fresh namespace lab, with real
// keepalived, Redis and binaries. Interruption times are reported, not
// asserted; losses, duplicates, the VIP's final holder and cleanup are.
func TestFailoverDrills(t *testing.T) {
	testenv.NeedRoot(t, "the drills build network namespaces and run keepalived")
	testenv.Need(t, "keepalived", "keepalived")
	testenv.Need(t, "redis-server", "redis-server")
	testenv.Need(t, "ip", "iproute2")
	root := testenv.ModuleRoot(t)
	cfg := drill.Config{
		RelayBin:     testenv.Build(t, "relay"),
		MsgserverBin: testenv.Build(t, "msgserver"),
		LoadBin:      testenv.Build(t, "drill"),
		Topology:     filepath.Join(root, "keepalived", "topology.json"),
		ScriptsDir:   filepath.Join(root, "keepalived"),
		Pairs:        30,
		AckPairs:     15, // half the clients ack every event
		Rate:         600,
		Before:       2 * time.Second,
		After:        5 * time.Second,
		Log:          testWriter{t},
	}
	// Every scenario in the default topology (two VIPs), and kill-relay
	// also with one VIP, so that the active-passive mode stays proved;
	// `drill --vips both --repeat 5` measures both modes in full.
	type run struct {
		scenario string
		oneVIP   bool
	}
	var runs []run
	for _, sc := range drill.Scenarios {
		runs = append(runs, run{sc, false})
	}
	runs = append(runs, run{"kill-relay", true})
	for _, r := range runs {
		sc, name := r.scenario, r.scenario
		if r.oneVIP {
			name += "/one-vip"
		}
		t.Run(name, func(t *testing.T) {
			cfg := cfg
			cfg.OneVIP = r.oneVIP
			rep := drill.Run(context.Background(), cfg, sc)
			t.Logf("%s: interruption %.3fs (resumed %.3fs after the fault), sent %d acked %d refused %d %v unconfirmed %d, live %d offline %d, lost %d dup %d, %d clients with acks: %d acks, %d redelivered, %d unacked; VIP on %v; notes %v",
				sc, rep.Interruption, rep.Resumed, rep.Load.Sent, rep.Load.Acked, rep.Load.Refused, rep.Load.RefusedCodes, rep.Load.Unconfirmed,
				rep.Load.DeliveredLive, rep.Load.DeliveredOffline, rep.Load.Lost, rep.Load.Duplicated,
				rep.Load.AckClients, rep.Load.ClientAcks, rep.Load.Redelivered, rep.Load.Unacked, rep.VIPHolders, rep.Notes)
			if rep.Err != "" {
				t.Fatalf("drill failed: %s", rep.Err)
			}
			if rep.Load.Acked == 0 {
				t.Fatal("no message was acknowledged: the drill proves nothing")
			}
			dup := rep.Load.Duplicated
			if sc == "kill-msgserver" && dup > 0 {
				// A documented window (docs/protocol.md, "Still not
				// guaranteed"): a message msg-2 queued for a client without
				// acks, whose answer died with msg-2, is routed again and
				// can be shown twice (same id). Reported, not failed.
				t.Logf("kill-msgserver: %d shown twice (the documented window for clients without acks)", dup)
				dup = 0
			}
			if rep.Load.Lost != 0 || dup != 0 || rep.Load.Unacked != 0 {
				t.Errorf("lost %d, duplicated %d, not acked by a client with acks %d; want 0, 0 and 0", rep.Load.Lost, rep.Load.Duplicated, rep.Load.Unacked)
			}
			if rep.Load.AckClients == 0 || rep.Load.ClientAcks == 0 {
				t.Error("no client acked: the drill proves nothing about acks")
			}
			if len(rep.VIPHolders) != 1 || rep.VIPHolders[0] != rep.ExpectHolder {
				t.Errorf("VIP on %v, want only %s", rep.VIPHolders, rep.ExpectHolder)
			}
			if rep.ExpectHolderB != "" && (len(rep.VIPBHolders) != 1 || rep.VIPBHolders[0] != rep.ExpectHolderB) {
				t.Errorf("second VIP on %v, want only %s", rep.VIPBHolders, rep.ExpectHolderB)
			}
			if !r.oneVIP && rep.VIPs != 2 {
				t.Errorf("ran with %d VIPs; the default topology has two", rep.VIPs)
			}
			if left := drill.Leftovers(drill.ProcessPrefix(os.Getpid())); len(left) != 0 {
				t.Errorf("namespaces left behind: %v", left)
			}
			for _, n := range rep.Notes {
				if len(n) > 0 && (strings.Contains(n, "did NOT") || strings.Contains(n, "cleanup")) {
					t.Errorf("note: %s", n)
				}
			}
		})
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b))
	return len(b), nil
}

// An interrupted drill removes every namespace and process it made.
func TestInterruptedDrillCleansUp(t *testing.T) {
	testenv.NeedRoot(t, "the drills build network namespaces and run keepalived")
	testenv.Need(t, "keepalived", "keepalived")
	bin := testenv.Build(t, "drill")
	testenv.Build(t, "relay")
	testenv.Build(t, "msgserver")
	p := testenv.Start(t, "drill", bin, "--scenario", "kill-relay", "--repo", testenv.ModuleRoot(t), "--before", "30s")
	p.WaitOutput("lab up", 30*time.Second)
	own := drill.ProcessPrefix(p.Pid())
	if len(drill.Leftovers(own)) == 0 {
		t.Fatal("no namespaces while the lab is up: the test proves nothing")
	}
	p.Signal(syscall.SIGINT)
	p.Wait(30 * time.Second)
	if !strings.Contains(p.Output(), "interrupted") {
		t.Fatalf("drill did not say it was interrupted:\n%s", p.Output())
	}
	if left := drill.Leftovers(own); len(left) != 0 {
		t.Fatalf("namespaces left after the interruption: %v", left)
	}
	if out, err := exec.Command("pgrep", "-f", "chatrelay-drill-").Output(); err == nil {
		t.Fatalf("processes left after the interruption: %s", out)
	}
}
