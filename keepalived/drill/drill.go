// Package drill runs failover drills on one Linux host: it builds the lab's
// four hosts (plus a client host) from network namespaces, runs real Redis,
// real keepalived with the configs rendered from keepalived/topology.json,
// and the real binaries, drives steady cross-server traffic, injects one
// fault and reports how long delivery stopped and what was lost or shown
// twice. As on the Vagrant VMs, every connection runs over TLS, with the
// lab's certificates (keepalived.WriteCerts) made for each drill: the client
// ports, the relay link (mutual TLS) and Redis. It needs root.
package drill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/chatrelay/chatrelay/keepalived"
)

// Scenario names, in the order "all" runs them.
var Scenarios = []string{"kill-relay", "stop-keepalived", "cut-network", "sigstop-relay", "restart-old-master", "hand-back", "kill-msgserver", "restart-redis"}

// NeedsTwoVIPs names the scenarios that only make sense with two VIPs.
var NeedsTwoVIPs = map[string]bool{"hand-back": true}

// Describe says what each scenario does.
var Describe = map[string]string{
	"kill-relay":         "SIGKILL the relay process on the VIP holder",
	"stop-keepalived":    "stop keepalived on the VIP holder (SIGTERM, as systemctl stop)",
	"cut-network":        "take the VIP holder's network interface down",
	"sigstop-relay":      "freeze the relay process on the VIP holder for 3 s (SIGSTOP, then SIGCONT)",
	"restart-old-master": "after a relay kill moved the VIP, start the old master's relay again",
	"hand-back":          "two VIPs: after a relay kill put both VIPs on the peer and the relay is back, the peer hands the first VIP back (relay hand-back)",
	"kill-msgserver":     "SIGKILL message server msg-2",
	"restart-redis":      "kill Redis and start it again, empty",
}

// Config is what a drill needs from the outside.
type Config struct {
	RelayBin, MsgserverBin string // the binaries under test
	LoadBin                string // a binary whose "load" subcommand runs RunLoad (cmd/drill)
	Topology               string // keepalived/topology.json
	ScriptsDir             string // keepalived/ (notify.sh, relay-supervise.sh)
	Pairs                  int
	AckPairs               int // of Pairs, how many log in with acks on
	Rate                   float64
	Before, After          time.Duration // traffic before and after the fault
	// OneVIP runs the topology with its first VIP only (active-passive);
	// otherwise a topology with two VIPs runs with both, the message
	// servers linked to both relays.
	OneVIP bool
	Log    io.Writer // progress; nil for none
}

// Report is one drill's outcome.
type Report struct {
	Scenario string `json:"scenario"`
	// VIPs is how many VIPs the lab ran with: 1 (active-passive) or 2.
	VIPs int `json:"vips"`
	// Interruption is the longest pause in delivery that ends after the
	// fault, in seconds: how long users saw nothing. Resumed is from the
	// fault to the end of that pause.
	Interruption float64 `json:"interruption_seconds"`
	// AtFault is the longest pause that spans a moment of the first
	// faultWindow after the fault: the pause the fault itself caused,
	// without later ones from elsewhere (on a loaded host, the load's
	// own). Baseline is the longest pause before the fault: the noise.
	AtFault      float64  `json:"at_fault_seconds"`
	Baseline     float64  `json:"baseline_seconds"`
	Resumed      float64  `json:"resumed_after_seconds"`
	VIPHolders   []string `json:"vip_holders"`
	ExpectHolder string   `json:"expected_holder"`
	// With two VIPs, the same for the second: after a fault on the first
	// VIP's holder, the peer holds both.
	VIPBHolders   []string   `json:"vip_b_holders,omitempty"`
	ExpectHolderB string     `json:"expected_holder_b,omitempty"`
	Load          LoadResult `json:"load"`
	Notes         []string   `json:"notes,omitempty"`
	Err           string     `json:"error,omitempty"`
}

// OK reports whether the drill kept the promise: nothing lost or
// duplicated, and the VIP on exactly the expected relay.
func (r *Report) OK() bool {
	return r.Err == "" && r.Load.Lost == 0 && r.Load.Duplicated == 0 && r.Load.Unacked == 0 &&
		len(r.VIPHolders) == 1 && r.VIPHolders[0] == r.ExpectHolder &&
		(r.ExpectHolderB == "" || len(r.VIPBHolders) == 1 && r.VIPBHolders[0] == r.ExpectHolderB)
}

func (c *Config) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, "drill: "+format+"\n", args...)
	}
}

// Run performs one scenario on a lab of its own and always cleans up,
// also when ctx ends early (the drill is interrupted).
func Run(ctx context.Context, cfg Config, scenario string) (rep *Report) {
	rep = &Report{Scenario: scenario}
	if _, ok := Describe[scenario]; !ok {
		rep.Err = fmt.Sprintf("unknown scenario %q (known: %s)", scenario, strings.Join(Scenarios, ", "))
		return rep
	}
	if os.Geteuid() != 0 {
		rep.Err = "drills need root: they build network namespaces and run keepalived"
		return rep
	}
	spec, err := loadSpec(cfg.Topology, cfg.OneVIP)
	if err != nil {
		rep.Err = err.Error()
		return rep
	}
	rep.VIPs = len(spec.vips)
	if NeedsTwoVIPs[scenario] && rep.VIPs < 2 {
		rep.Err = scenario + " needs a topology with two VIPs"
		return rep
	}
	hosts := map[string]string{"client": spec.clientIP}
	for h, a := range spec.ip {
		hosts[h] = a
	}
	// The folder for configs, pid and track files goes last: its removal is
	// deferred before the lab's, so it runs after everything is stopped.
	dir, err := os.MkdirTemp("", "chatrelay-drill-")
	if err != nil {
		rep.Err = err.Error()
		return rep
	}
	defer os.RemoveAll(dir)
	lab, err := NewLab(hosts, spec.mask)
	if err != nil {
		rep.Err = err.Error()
		return rep
	}
	defer func() {
		if err := lab.Close(); err != nil {
			rep.Notes = append(rep.Notes, "cleanup: "+err.Error())
		}
		if left := Leftovers(lab.Prefix); len(left) > 0 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("namespaces left behind: %v", left))
		}
	}()
	d := &drill{ctx: ctx, cfg: cfg, lab: lab, spec: spec, rep: rep, dir: dir}
	if err := d.run(scenario); err != nil {
		rep.Err = err.Error()
		cfg.logf("%s failed: %v", scenario, err)
	}
	return rep
}

type drill struct {
	ctx  context.Context
	cfg  Config
	lab  *Lab
	spec *spec
	rep  *Report
	dir  string

	redis      *Proc
	keepalived map[string]*Proc
	relays     map[string]*Proc // the supervisors
	servers    map[string]*Proc
}

func (d *drill) run(scenario string) error {
	d.keepalived, d.relays, d.servers = map[string]*Proc{}, map[string]*Proc{}, map[string]*Proc{}
	if err := os.WriteFile(filepath.Join(d.dir, "link.secret"), []byte(fmt.Sprintf("drill-secret-%d-%d", os.Getpid(), time.Now().UnixNano())), 0o600); err != nil {
		return err
	}
	if _, err := keepalived.WriteCerts(d.spec.topo, d.pki(), time.Now()); err != nil {
		return fmt.Errorf("the lab's certificates: %w", err)
	}

	if err := d.startRedis(); err != nil {
		return err
	}
	// With one VIP, the master first, and the backup only once the master
	// holds the VIP: with nopreempt, whichever relay is ready first keeps
	// the VIP, and the drills start from a known holder. With two, each
	// instance's first election must be decided by priority (relay-a takes
	// the first VIP, relay-b the second), so both relays must become
	// candidates at the same moment: keepalived starts on both with the
	// track files saying "down", and once both checks pass, both files say
	// "up" at once (keepalived reads them through inotify).
	master, backup := d.spec.relays[0], d.spec.relays[1]
	two := len(d.spec.vips) > 1
	if two {
		for _, r := range d.spec.relays {
			if err := d.startRelay(r); err != nil {
				return err
			}
		}
		if err := d.startTwoVIPs(master, backup); err != nil {
			return err
		}
	} else {
		for _, r := range d.spec.relays {
			if err := d.startRelay(r); err != nil {
				return err
			}
			if err := d.startKeepalived(r); err != nil {
				return err
			}
			if r == master {
				if err := d.waitVIP(master, d.spec.vip, 10*time.Second); err != nil {
					return err
				}
			}
		}
	}
	for _, m := range d.spec.msgs {
		if err := d.startMsgserver(m); err != nil {
			return err
		}
	}
	if two {
		d.cfg.logf("%s: lab up, VIP %s on %s and %s on %s; traffic %.0f msgs/s over %d pairs", scenario, d.spec.vips[0], master, d.spec.vips[1], backup, d.cfg.Rate, d.cfg.Pairs)
	} else {
		d.cfg.logf("%s: lab up, VIP on %s; traffic %.0f msgs/s over %d pairs", scenario, master, d.cfg.Rate, d.cfg.Pairs)
	}

	// hand-back injects its fault some 5 s after the others (a kill, the
	// relay back, its keepalived a candidate again): traffic runs longer.
	var extra time.Duration
	if scenario == "hand-back" {
		extra = handBackLead
	}
	load, err := d.startLoad(extra)
	if err != nil {
		return err
	}
	if err := d.pause(d.cfg.Before); err != nil { // steady traffic before the fault
		return err
	}
	t0 := time.Now()
	// After a fault on the master, the backup holds the first VIP (and
	// keeps the second); faults elsewhere leave both where they were.
	d.rep.ExpectHolder = backup
	if two {
		d.rep.ExpectHolderB = backup
	}
	switch scenario {
	case "kill-relay":
		err = d.killRelay(master)
	case "stop-keepalived":
		err = d.keepalived[master].Signal(syscall.SIGTERM)
	case "cut-network":
		err = ip("-n", d.lab.NS(master), "link", "set", "eth1", "down")
	case "sigstop-relay":
		err = d.signalRelay(master, syscall.SIGSTOP)
		time.AfterFunc(3*time.Second, func() { _ = d.signalRelay(master, syscall.SIGCONT) })
	case "restart-old-master":
		if err = d.killRelay(master); err == nil {
			if err = d.waitVIP(backup, d.spec.vip, 5*time.Second); err == nil {
				if err = d.pause(time.Second); err == nil {
					t0 = time.Now()
					err = d.startRelay(master)
				}
			}
		}
	case "hand-back":
		// Both VIPs end where they started: the first one handed back.
		d.rep.ExpectHolder = master
		err = d.handBack(master, backup, &t0)
	case "kill-msgserver":
		d.rep.ExpectHolder = master
		if two {
			d.rep.ExpectHolderB = backup
		}
		err = d.servers["msg-2"].Signal(syscall.SIGKILL)
	case "restart-redis":
		d.rep.ExpectHolder = master
		if two {
			d.rep.ExpectHolderB = backup
		}
		if err = d.redis.Signal(syscall.SIGKILL); err == nil {
			d.redis.Wait(5 * time.Second)
			if err = d.pause(500 * time.Millisecond); err == nil { // Redis stays down a moment
				err = d.startRedis()
			}
		}
	}
	if err != nil {
		return fmt.Errorf("inject %s: %w", scenario, err)
	}
	d.cfg.logf("%s: fault injected", scenario)
	res, err := d.finishLoad(load)
	if err != nil {
		return err
	}
	d.rep.Load = *res
	for _, g := range res.Gaps {
		if g.To > t0.UnixNano() && g.Seconds() > d.rep.Interruption {
			d.rep.Interruption = g.Seconds()
			d.rep.Resumed = float64(g.To-t0.UnixNano()) / 1e9
		}
		if g.To > t0.UnixNano() && g.From < t0.Add(faultWindow).UnixNano() {
			d.rep.AtFault = max(d.rep.AtFault, g.Seconds())
		}
		if g.To <= t0.UnixNano() {
			d.rep.Baseline = max(d.rep.Baseline, g.Seconds())
		}
	}
	for _, r := range d.spec.relays {
		if d.lab.HasAddr(r, d.spec.vip) {
			d.rep.VIPHolders = append(d.rep.VIPHolders, r)
		}
		if two && d.lab.HasAddr(r, d.spec.vips[1]) {
			d.rep.VIPBHolders = append(d.rep.VIPBHolders, r)
		}
	}
	if scenario == "kill-msgserver" {
		d.rep.Notes = append(d.rep.Notes, d.checkPresenceExpired())
	}
	if !d.rep.OK() && d.rep.Load.Lost == 0 && d.rep.Load.Duplicated == 0 { // the VIPs are not where they should be
		for _, r := range d.spec.relays {
			d.rep.Notes = append(d.rep.Notes, fmt.Sprintf("keepalived on %s said:\n%s", r, d.keepalived[r].Output()))
		}
	}
	return nil
}

// pki is the folder of the drill's CA and certificates; cert is one of
// them (keepalived.Certs names them) and its key.
func (d *drill) pki() string { return filepath.Join(d.dir, "pki") }

func (d *drill) cert(host, name string) (cert, key string) {
	return keepalived.Cert{Host: host, Name: name}.CertPaths(d.pki())
}

func (d *drill) caFile() string { return filepath.Join(d.pki(), "ca.pem") }

// redisURL is the lab's Redis, over TLS.
func (d *drill) redisURL() string {
	return fmt.Sprintf("rediss://%s:%d/0", d.spec.ip[d.spec.redisHost], d.spec.redisPort)
}

func (d *drill) startRedis() error {
	cert, key := d.cert(d.spec.redisHost, "redis")
	p, err := d.lab.Start(d.spec.redisHost, "redis-server", nil, "redis-server",
		"--bind", d.spec.ip[d.spec.redisHost], "--port", "0", "--tls-port", fmt.Sprint(d.spec.redisPort),
		"--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", d.caFile(), "--tls-auth-clients", "no",
		"--save", "", "--appendonly", "no", "--dir", d.dir, "--protected-mode", "no")
	if err != nil {
		return err
	}
	d.redis = p
	return p.WaitOutput("Ready to accept connections", 10*time.Second)
}

func (d *drill) trackFile(host string) string { return filepath.Join(d.dir, host+".down") }

// startTwoVIPs starts keepalived on both relays so that master ends up
// holding the first VIP and backup the second. The first elections are
// decided by VRRP timers 20 ms apart, which a loaded host can run late by
// more than that; the loser then stays BACKUP (nopreempt). So when the VIPs
// land elsewhere, both keepalived are stopped and started again (a few
// times at most).
func (d *drill) startTwoVIPs(master, backup string) error {
	const attempts = 8
	for attempt := 1; ; attempt++ {
		for _, r := range d.spec.relays {
			if err := keepalived.WriteTrackFile(d.trackFile(r), "1"); err != nil {
				return err
			}
			if err := d.startKeepalived(r); err != nil {
				return err
			}
		}
		for _, r := range d.spec.relays {
			if err := d.keepalived[r].WaitOutput("VRRP_Script(chk_relay) succeeded", 10*time.Second); err != nil {
				return fmt.Errorf("keepalived on %s: %w", r, err)
			}
		}
		for _, r := range d.spec.relays {
			if err := keepalived.WriteTrackFile(d.trackFile(r), "0"); err != nil {
				return err
			}
		}
		errA := d.waitVIP(master, d.spec.vips[0], 5*time.Second)
		errB := d.waitVIP(backup, d.spec.vips[1], 2*time.Second)
		if errA == nil && errB == nil {
			return nil
		}
		if attempt == attempts {
			return errors.Join(errA, errB)
		}
		d.cfg.logf("VIPs not on their own relays at start (attempt %d); starting keepalived again", attempt)
		for _, r := range d.spec.relays {
			_ = d.keepalived[r].Signal(syscall.SIGTERM)
		}
		for _, r := range d.spec.relays {
			if !d.keepalived[r].Wait(10 * time.Second) {
				return fmt.Errorf("keepalived on %s did not stop", r)
			}
		}
		deadline := time.Now().Add(5 * time.Second)
		for d.lab.HasAddr(master, d.spec.vips[0]) || d.lab.HasAddr(master, d.spec.vips[1]) ||
			d.lab.HasAddr(backup, d.spec.vips[0]) || d.lab.HasAddr(backup, d.spec.vips[1]) {
			if time.Now().After(deadline) {
				return errors.New("a VIP stayed configured after keepalived stopped")
			}
			if err := d.pause(20 * time.Millisecond); err != nil {
				return err
			}
		}
	}
}

// handBack kills the relay on master, waits for backup to hold both VIPs,
// starts master's relay again and waits for its keepalived to be a
// candidate again, then hands the first VIP back from backup through its
// release file. t0 is set to the moment of the hand-back.
func (d *drill) handBack(master, backup string, t0 *time.Time) error {
	mark := len(d.keepalived[master].Output())
	if err := d.killRelay(master); err != nil {
		return err
	}
	if err := d.waitVIP(backup, d.spec.vip, 5*time.Second); err != nil {
		return err
	}
	if err := d.startRelay(master); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(d.keepalived[master].Output()[mark:], "(VI_RELAY) Entering BACKUP STATE") {
		if time.Now().After(deadline) {
			return fmt.Errorf("keepalived on %s did not become BACKUP again:\n%s", master, d.keepalived[master].Output()[mark:])
		}
		if err := d.pause(20 * time.Millisecond); err != nil {
			return err
		}
	}
	if err := d.pause(time.Second); err != nil { // traffic on two links to one relay
		return err
	}
	// As an operator does: relay hand-back on the relay holding both.
	*t0 = time.Now()
	out, err := d.lab.Run(backup, d.cfg.RelayBin, "hand-back", "--vip", d.spec.vip,
		"--track-file", d.trackFile(backup), "--port", strconv.Itoa(d.spec.linkPort),
		"--peer", net.JoinHostPort(d.spec.ip[master], strconv.Itoa(d.spec.linkPort)))
	if err != nil {
		return fmt.Errorf("relay hand-back on %s: %v\n%s", backup, err, out)
	}
	d.cfg.logf("hand-back: %s", strings.TrimSpace(out))
	if !d.lab.HasAddr(master, d.spec.vip) {
		return fmt.Errorf("relay hand-back on %s said %q, but %s is not on %s", backup, strings.TrimSpace(out), d.spec.vip, master)
	}
	if data, err := os.ReadFile(keepalived.ReleaseFile(d.trackFile(backup), d.spec.vip)); err != nil || strings.TrimSpace(string(data)) != "0" {
		return fmt.Errorf("relay hand-back left the release file at %q (%v), want 0: %s would never take the VIP again", data, err, backup)
	}
	return nil
}

func (d *drill) startRelay(host string) error {
	cert, key := d.cert(host, "relay")
	p, err := d.lab.Start(host, "relay", []string{"CHATRELAY_TRACK_FILE=" + d.trackFile(host), "CHATRELAY_PID_FILE=" + d.pidFile(host)},
		filepath.Join(d.cfg.ScriptsDir, "relay-supervise.sh"), d.cfg.RelayBin,
		"--id", host, "--listen", fmt.Sprintf("0.0.0.0:%d", d.spec.linkPort), "--admin", fmt.Sprintf("127.0.0.1:%d", d.spec.adminPort),
		"--link-secret-file", filepath.Join(d.dir, "link.secret"), "--vip", strings.Join(d.spec.vips, ","), "--log-level", "info",
		"--tls-cert", cert, "--tls-key", key, "--link-client-ca", d.caFile())
	if err != nil {
		return err
	}
	d.relays[host] = p
	return p.WaitOutput("relay listening", 10*time.Second)
}

func (d *drill) pidFile(host string) string { return filepath.Join(d.dir, host+"-relay.pid") }

// killRelay SIGKILLs the relay process itself, not its supervisor, which
// then reports the death in keepalived's track file.
func (d *drill) killRelay(host string) error { return d.signalRelay(host, syscall.SIGKILL) }

// signalRelay sends sig to the relay process itself, not its supervisor.
func (d *drill) signalRelay(host string, sig syscall.Signal) error {
	b, err := os.ReadFile(d.pidFile(host))
	if err != nil {
		return fmt.Errorf("find the relay under its supervisor: %w", err)
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err != nil {
		return fmt.Errorf("bad relay pid file on %s: %q", host, b)
	}
	return syscall.Kill(pid, sig)
}

func (d *drill) startKeepalived(host string) error {
	conf, err := d.spec.render(host, d)
	if err != nil {
		return err
	}
	path := filepath.Join(d.dir, host+"-keepalived.conf")
	if err := os.WriteFile(path, conf, 0o644); err != nil {
		return err
	}
	p, err := d.lab.Start(host, "keepalived", []string{"CHATRELAY_NOTIFY_LOG=" + filepath.Join(d.dir, "transitions.log")}, "keepalived",
		"--use-file", path, "--dont-fork", "--log-console", "--log-detail", "--vrrp",
		"--pid", filepath.Join(d.dir, host+"-keepalived.pid"),
		"--vrrp_pid", filepath.Join(d.dir, host+"-vrrp.pid"),
		"--checkers_pid", filepath.Join(d.dir, host+"-checkers.pid"))
	if err != nil {
		return err
	}
	d.keepalived[host] = p
	return nil
}

func (d *drill) waitVIP(host, vip string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for !d.lab.HasAddr(host, vip) {
		if time.Now().After(deadline) {
			return fmt.Errorf("VIP %s not on %s after %s; keepalived said:\n%s", vip, host, within, d.keepalived[host].Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func (d *drill) startMsgserver(host string) error {
	cert, key := d.cert(host, "msgserver")
	p, err := d.lab.Start(host, "msgserver", nil, d.cfg.MsgserverBin,
		"--id", host, "--listen", fmt.Sprintf("0.0.0.0:%d", d.spec.clientPort),
		"--advertise", fmt.Sprintf("%s:%d", d.spec.ip[host], d.spec.clientPort),
		"--admin", fmt.Sprintf("127.0.0.1:%d", d.spec.msgAdminPort),
		"--relay", d.spec.topo.RelayAddr(),
		"--redis", d.redisURL(), "--redis-ca-file", d.caFile(),
		"--link-secret-file", filepath.Join(d.dir, "link.secret"),
		"--tls-cert", cert, "--tls-key", key,
		"--link-ca", d.caFile(), "--link-cert", cert, "--link-key", key,
		"--presence-ttl", "3s", "--no-route-timeout", "4s")
	if err != nil {
		return err
	}
	d.servers[host] = p
	if err := p.WaitOutput("relay link up", 10*time.Second); err != nil {
		return err
	}
	// With two VIPs, a link to each.
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(p.Output(), "relay link up") < len(d.spec.vips) {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not link to all of %v:\n%s", host, d.spec.vips, p.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// faultWindow is how long after the fault a pause counts as the fault's
// (AtFault): sigstop-relay's relay thaws after 3 s.
const faultWindow = 4 * time.Second

// handBackLead is how much longer traffic runs in hand-back.
const handBackLead = 8 * time.Second

func (d *drill) startLoad(extra time.Duration) (*Proc, error) {
	var servers []string
	for _, m := range d.spec.msgs {
		servers = append(servers, fmt.Sprintf("%s:%d", d.spec.ip[m], d.spec.clientPort))
	}
	return d.lab.Start("client", "load", nil, d.cfg.LoadBin, "load",
		"--servers", strings.Join(servers, ","), "--pairs", fmt.Sprint(d.cfg.Pairs),
		"--rate", fmt.Sprint(d.cfg.Rate), "--duration", (d.cfg.Before + d.cfg.After + extra).String(), "--ca", d.caFile(),
		"--ack-pairs", fmt.Sprint(d.cfg.AckPairs))
}

// pause waits d, or less if the drill is interrupted.
func (d *drill) pause(t time.Duration) error {
	select {
	case <-time.After(t):
		return nil
	case <-d.ctx.Done():
		return errors.New("interrupted")
	}
}

func (d *drill) finishLoad(p *Proc) (*LoadResult, error) {
	select {
	case <-p.done:
	case <-time.After(d.cfg.Before + d.cfg.After + handBackLead + 60*time.Second):
		return nil, errors.New("load generator did not finish")
	case <-d.ctx.Done():
		return nil, errors.New("interrupted")
	}
	out := p.Output()
	i := strings.LastIndex(out, "\n{")
	if i < 0 {
		i = strings.Index(out, "{")
	}
	if i < 0 {
		return nil, fmt.Errorf("load generator printed no result:\n%s", out)
	}
	var res LoadResult
	if err := json.Unmarshal([]byte(out[i:]), &res); err != nil {
		return nil, fmt.Errorf("load result: %w\n%s", err, out)
	}
	return &res, nil
}

// checkPresenceExpired asks Redis whether msg-2's users are gone.
func (d *drill) checkPresenceExpired() string {
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := d.lab.Run(d.spec.redisHost, "redis-cli", "--tls", "--cacert", d.caFile(),
			"-h", d.spec.ip[d.spec.redisHost], "-p", fmt.Sprint(d.spec.redisPort),
			"GET", "chatrelay:user:drill-0-b")
		if err == nil && strings.TrimSpace(out) == "" {
			return "msg-2's users' presence expired"
		}
		if time.Now().After(deadline) {
			return fmt.Sprintf("msg-2's users' presence did NOT expire: %q %v", strings.TrimSpace(out), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
