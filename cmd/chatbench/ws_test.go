package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/testenv"
)

// chatbench ws against a real tier (two message servers with web ports, a
// relay, redis-server): a row per transport, every message delivered once
// over each, and this process's CPU per 1k messages reported for both.
func TestTransportsAgainstRealTier(t *testing.T) {
	rds := testenv.StartRedis(t)
	rl := testenv.StartRelay(t, "", relay.Config{})
	// No per-connection request rate: a few users sending flat out pass
	// the default 500 a second on a fast machine, and the test is of the
	// measurement, not of the limit.
	a := testenv.StartServer(t, rds.Addr, msgserver.Config{ID: "msg-a", RelayAddr: rl.Addr, RequestRate: -1})
	b := testenv.StartServer(t, rds.Addr, msgserver.Config{ID: "msg-b", RelayAddr: rl.Addr, RequestRate: -1})
	testenv.WaitLinked(t, a, b)
	wa, wb := a.ServeWeb(t), b.ServeWeb(t)

	var out, errs bytes.Buffer
	code := run([]string{"ws", "--servers", a.Addr + "," + b.Addr, "--web", wa + "," + wb,
		"--users", "8", "--window", "4", "--duration", "500ms", "--warmup", "100ms", "--rounds", "1",
		"--json", "--quiet", "--pids", "self=" + strconv.Itoa(os.Getpid())}, &out, &errs)
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, out.String(), errs.String())
	}
	var res transportsResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if len(res.Rows) != 2 || res.Rows[0].Transport != "tcp" || res.Rows[1].Transport != "ws" {
		t.Fatalf("rows %+v", res.Rows)
	}
	for _, r := range res.Rows {
		if r.MsgsPerSec <= 0 || r.Lost != 0 || r.Errors != 0 || r.CPUMsPer1k["self"] <= 0 {
			t.Errorf("%s: %+v", r.Transport, r)
		}
	}
	// The table form names both and their ratio.
	var table bytes.Buffer
	res.table(&table)
	for _, want := range []string{"tcp", "ws", "ws/tcp"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	testenv.Eventually(t, 5*time.Second, "sessions to end", func() bool { return a.Sessions()+b.Sessions() == 0 })
}

// chatbench idle --ws opens idle WebSocket sessions on a web port.
func TestIdleOverWebSocket(t *testing.T) {
	rds := testenv.StartRedis(t)
	srv := testenv.StartServer(t, rds.Addr, msgserver.Config{ID: "msg-idle"})
	web := srv.ServeWeb(t)
	res, err := runIdle(idleConfig{
		Server: web, WS: true, Sessions: 40, PID: os.Getpid(), Concurrency: 8,
		Hold: 100 * time.Millisecond, PingEvery: 30 * time.Millisecond, OpenTimeout: 30 * time.Second,
		Prefix: "idle-ws", SourceIPs: "none",
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.LoggedIn != 40 || res.Failed != 0 || res.Dropped != 0 {
		t.Fatalf("logged in %d, failed %d (%s), dropped %d; want 40, 0, 0", res.LoggedIn, res.Failed, res.FirstError, res.Dropped)
	}
	testenv.Eventually(t, 5*time.Second, "sessions to end", func() bool { return srv.Sessions() == 0 })
}
