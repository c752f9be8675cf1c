package e2e

import (
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/testenv"
)

// twoRelays is a tier whose message servers each hold a link to two relays
// (--relay A,B), as with two VIPs.
type twoRelays struct {
	*system
	relays [2]*testenv.Proc
	addrs  [2]string
}

func startTwoRelays(t *testing.T) *twoRelays {
	tr := &twoRelays{system: newSystem(t)}
	for i, id := range []string{"relay-a", "relay-b"} {
		tr.relays[i] = testenv.Start(t, id, tr.relayBin, "--id", id, "--listen", "127.0.0.1:0",
			"--admin", "", "--link-secret-file", tr.secretFile)
		tr.addrs[i] = tr.relays[i].WaitAddr("relay listening", 10*time.Second)
	}
	tr.relayAddr = tr.addrs[0] + "," + tr.addrs[1]
	return tr
}

// startServer starts a message server linked to both relays and waits for
// both links.
func (tr *twoRelays) startServer(id string) string {
	addr, p := tr.system.startServer(id)
	testenv.Eventually(tr.t, 10*time.Second, id+" linked to both relays", func() bool {
		return strings.Count(p.Output(), "relay link up") >= 2
	})
	return addr
}

// recipients returns n user names, half of whose messages go over each of
// a server's two relay links: the link is picked by a hash of the
// recipient (FNV-1a, msgserver's spreadKey), so the names are chosen for it.
func recipients(n int) []string {
	var names []string
	var per [2]int
	for i := 0; len(names) < n; i++ {
		name := fmt.Sprintf("zhima%03d", 300+i)
		h := fnv.New32a()
		h.Write([]byte(name))
		slot := h.Sum32() % 2
		if per[slot] < n/2 {
			per[slot]++
			names = append(names, name)
		}
	}
	return names
}

// arrival is one chat event and when it arrived.
type arrival struct {
	content string
	at      time.Time
}

// collect reads a receiver's chat events until n distinct ones arrived (or
// the wait runs out), then flushes with a ping.
func collect(c *testenv.Client, n int, within time.Duration) ([]arrival, error) {
	var got []arrival
	distinct := map[string]bool{}
	for len(distinct) < n {
		m, err := c.Read(within)
		if err != nil {
			return got, fmt.Errorf("%d of %d distinct messages: %w", len(distinct), n, err)
		}
		if m.S("event") == "chat" {
			got = append(got, arrival{m.S("content"), time.Now()})
			distinct[m.S("content")] = true
		}
	}
	c.SendLine(`{"cmd":"ping"}`)
	for {
		m, err := c.Read(within)
		if err != nil {
			return got, err
		}
		if m.S("reply") == "ping" {
			return got, nil
		}
		if m.S("event") == "chat" {
			got = append(got, arrival{m.S("content"), time.Now()})
		}
	}
}

// With two relay links up and messages on both, one relay is killed (or
// frozen for 3 s) mid-stream: every message reaches its recipient exactly
// once, and no recipient waits anywhere near the link's dead-after, since
// what was unacknowledged on the lost link goes over the other at once,
// with no relay failover to wait for. The frozen relay's copies, delivered
// when it thaws, are dropped by id.
func TestOneOfTwoRelaysFailsMidStreamEveryMessageOnce(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault func(p *testenv.Proc)
		// maxGap bounds the longest pause a recipient sees: well under
		// msgserver's dead-after. A killed relay's links end at once (the
		// kernel closes them); a frozen one's messages move to the other
		// link once it has been silent for stall-after.
		maxGap time.Duration
	}{
		{"kill", func(p *testenv.Proc) { p.Kill() }, msgserver.DefaultDeadAfter / 3},
		{"sigstop", func(p *testenv.Proc) {
			p.Signal(syscall.SIGSTOP)
			time.AfterFunc(3*time.Second, func() { p.Signal(syscall.SIGCONT) })
		}, msgserver.DefaultDeadAfter / 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := startTwoRelays(t)
			addr1 := tr.startServer("msg-1")
			addr2 := tr.startServer("msg-2")
			const perUser = 400
			names := recipients(4)
			var streams []*testenv.Stream
			var recv []*testenv.Client
			for i, name := range names {
				r := testenv.Dial(t, addr2)
				r.Login(name)
				recv = append(recv, r)
				s := testenv.Dial(t, addr1)
				s.Login(fmt.Sprintf("zhima%03d", 200+i))
				streams = append(streams, testenv.StartStream(t, s, name, perUser))
			}
			results := make([][]arrival, len(names))
			errs := make([]error, len(names))
			var wg sync.WaitGroup
			for i := range names {
				wg.Add(1)
				go func() {
					defer wg.Done()
					results[i], errs[i] = collect(recv[i], perUser, 20*time.Second)
				}()
			}
			streams[0].WaitSent(t, perUser/3)
			faultAt := time.Now()
			tc.fault(tr.relays[0])
			wg.Wait()
			for i, name := range names {
				if errs[i] != nil {
					t.Errorf("%s: %v", name, errs[i])
				}
				count := map[string]int{}
				var gap time.Duration
				var gapAt time.Time
				for j, a := range results[i] {
					count[a.content]++
					if j > 0 {
						if d := a.at.Sub(results[i][j-1].at); d > gap {
							gap, gapAt = d, a.at
						}
					}
				}
				for k := 0; k < perUser; k++ {
					if c := count[fmt.Sprint(k)]; c != 1 {
						t.Errorf("%s: message %d shown %d times", name, k, c)
					}
				}
				t.Logf("%s: longest pause %s, ending %s after the fault", name, gap.Round(time.Millisecond), gapAt.Sub(faultAt).Round(time.Millisecond))
				if gap > tc.maxGap {
					t.Errorf("%s: delivery paused %s (ending %s after the fault), more than %s", name, gap, gapAt.Sub(faultAt), tc.maxGap)
				}
			}
		})
	}
}

// With two relays, a message server's /healthz and /metrics show a link to
// each, and a relay watching two VIPs says which one it holds.
func TestTwoRelaysHealthAndMetrics(t *testing.T) {
	// relay-a watches 127.0.0.1, which this host has, and 127.0.0.2, which
	// it has not (loopback carries 127.0.0.1 only).
	o := newObserved(t, "--vip", "127.0.0.1,127.0.0.2")
	relayA := o.relayAddr
	b := testenv.Start(t, "relay-b", o.relayBin, "--id", "relay-b", "--listen", "127.0.0.1:0",
		"--admin", "", "--link-secret-file", o.secretFile)
	relayB := b.WaitAddr("relay listening", 10*time.Second)
	o.relayAddr = relayA + "," + relayB
	s := o.addServer("msg-1")

	testenv.Eventually(t, 10*time.Second, "msg-1 to report two links up", func() bool {
		_, rep := healthz(t, s.admin)
		up := 0
		for _, l := range rep.Links {
			if l.Up {
				up++
			}
		}
		return up == 2
	})
	_, rep := healthz(t, s.admin)
	if rep.LinksUp != 2 || rep.Links[0].Peer != "relay-e2e" || rep.Links[1].Peer != "relay-b" {
		t.Fatalf("msgserver /healthz links %+v, want relay-e2e then relay-b, both up", rep.Links)
	}
	_, body := get(t, "http://"+s.admin+"/metrics")
	for _, want := range []string{
		fmt.Sprintf("msgserver_relay_link_up{addr=%q} 1", relayA),
		fmt.Sprintf("msgserver_relay_link_up{addr=%q} 1", relayB),
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("msgserver /metrics lacks %s", want)
		}
	}

	testenv.Eventually(t, 5*time.Second, "relay to report the VIP it holds", func() bool {
		_, rep := healthz(t, o.relayAdmin)
		return rep.Role == "master"
	})
	_, rep = healthz(t, o.relayAdmin)
	if rep.VIP != "127.0.0.1,127.0.0.2" || len(rep.VIPsHeld) != 1 || rep.VIPsHeld[0] != "127.0.0.1" {
		t.Fatalf("relay /healthz vip %q held %v, want both watched and 127.0.0.1 held", rep.VIP, rep.VIPsHeld)
	}
	_, body = get(t, "http://"+o.relayAdmin+"/metrics")
	for _, want := range []string{`relay_vip_held{vip="127.0.0.1"} 1`, `relay_vip_held{vip="127.0.0.2"} 0`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("relay /metrics lacks %s", want)
		}
	}

	// relay-b dies: msg-1 reports that link down and the other up.
	b.Kill()
	testenv.Eventually(t, 5*time.Second, "msg-1 to report its link to relay-b down", func() bool {
		_, rep := healthz(t, s.admin)
		return len(rep.Links) == 2 && rep.Links[0].Up && !rep.Links[1].Up
	})
	_, body = get(t, "http://"+s.admin+"/metrics")
	if want := fmt.Sprintf("msgserver_relay_link_up{addr=%q} 0", relayB); !strings.Contains(string(body), want) {
		t.Errorf("msgserver /metrics lacks %s", want)
	}
}
