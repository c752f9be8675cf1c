package keepalived_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/keepalived"
	"github.com/chatrelay/chatrelay/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden configs in testdata/")

const topologyFile = "topology.json"

func loadTopology(t *testing.T) *keepalived.Topology {
	t.Helper()
	topo, err := keepalived.LoadTopology(topologyFile)
	if err != nil {
		t.Fatal(err)
	}
	return topo
}

func TestTopologyFileIsTheLab(t *testing.T) {
	topo := loadTopology(t)
	if err := topo.Validate(); err != nil {
		t.Fatal(err)
	}
	if topo.VIP != "192.168.56.100" || topo.Prefix != 24 || topo.Interface != "eth1" ||
		topo.VirtualRouterID != 51 || topo.AdvertInt != 0.1 {
		t.Errorf("VRRP settings: %+v", topo)
	}
	want := keepalived.Ports{RelayLink: 7000, RelayAdmin: 9100, MsgServerClient: 7001, MsgServerAdmin: 9200, Redis: 6379}
	if topo.Ports != want {
		t.Errorf("ports %+v, want %+v", topo.Ports, want)
	}
	relays := topo.Relays()
	if len(relays) != 2 || relays[0].Name != "relay-a" || relays[0].Priority != 150 ||
		relays[1].Name != "relay-b" || relays[1].Priority != 100 {
		t.Errorf("relays: %+v", relays)
	}
	if peer, err := topo.Peer("relay-a"); err != nil || peer.Name != "relay-b" || peer.IP != "192.168.56.12" {
		t.Errorf("peer of relay-a: %+v, %v", peer, err)
	}
	if _, err := topo.Peer("msg-1"); err == nil || !strings.Contains(err.Error(), "not a relay host") {
		t.Errorf("peer of msg-1: %v", err)
	}
	var msgs []string
	for _, h := range topo.WithRole(keepalived.RoleMsgServer) {
		msgs = append(msgs, h.Name+"="+h.IP)
	}
	if got := strings.Join(msgs, ","); got != "msg-1=192.168.56.21,msg-2=192.168.56.22" {
		t.Errorf("message servers: %s", got)
	}
	if got := topo.RedisURL(); got != "redis://192.168.56.21:6379/0" {
		t.Errorf("RedisURL %s", got)
	}
	// Two VIPs by default: message servers dial both.
	if topo.VIPB != "192.168.56.101" || topo.VirtualRouterIDB != 52 {
		t.Errorf("second VIP %s, router %d", topo.VIPB, topo.VirtualRouterIDB)
	}
	if got := topo.RelayAddr(); got != "192.168.56.100:7000,192.168.56.101:7000" {
		t.Errorf("RelayAddr %s", got)
	}
	one := *topo
	one.VIPB, one.VirtualRouterIDB = "", 0
	if got := one.RelayAddr(); got != "192.168.56.100:7000" || one.Validate() != nil {
		t.Errorf("with one VIP: RelayAddr %s, %v", got, one.Validate())
	}
}

func TestBrokenTopologiesAreClearErrors(t *testing.T) {
	cases := []struct {
		name   string
		break_ func(*keepalived.Topology)
		want   string
	}{
		{"vip missing", func(t *keepalived.Topology) { t.VIP = "" }, "vip: missing"},
		{"vip not an address", func(t *keepalived.Topology) { t.VIP = "192.168.56" }, `vip: "192.168.56" is not an IPv4 address`},
		{"vip IPv6", func(t *keepalived.Topology) { t.VIP = "fd00::100" }, `vip: "fd00::100" is not an IPv4 address`},
		{"vip outside the hosts' subnet", func(t *keepalived.Topology) { t.VIP = "10.1.2.100" },
			`hosts[0] "relay-a": ip 192.168.56.11 is outside the VIP's subnet 10.1.2.0/24`},
		{"vip is the broadcast address", func(t *keepalived.Topology) { t.VIP = "192.168.56.255" }, "vip: 192.168.56.255 is the network or broadcast address"},
		{"vip is a host's address", func(t *keepalived.Topology) { t.VIP = "192.168.56.21" }, `hosts[2] "msg-1": ip 192.168.56.21 is the VIP`},
		{"vip_b without its router", func(t *keepalived.Topology) { t.VirtualRouterIDB = 0 }, "virtual_router_id_b: 0 is outside 1..255"},
		{"router without vip_b", func(t *keepalived.Topology) { t.VIPB = "" }, "vip_b: missing, but virtual_router_id_b is set"},
		{"vip_b is vip", func(t *keepalived.Topology) { t.VIPB = t.VIP }, "vip_b: 192.168.56.100 is the same as vip"},
		{"vip_b outside the subnet", func(t *keepalived.Topology) { t.VIPB = "10.0.0.1" }, "vip_b: 10.0.0.1 is outside the VIP's subnet 192.168.56.0/24"},
		{"vip_b is a host's address", func(t *keepalived.Topology) { t.VIPB = "192.168.56.22" }, `hosts[3] "msg-2": ip 192.168.56.22 is vip_b`},
		{"both VIPs on one router", func(t *keepalived.Topology) { t.VirtualRouterIDB = 51 }, "virtual_router_id_b: 51 is the same as virtual_router_id"},
		{"host outside the subnet", func(t *keepalived.Topology) { t.Hosts[3].IP = "192.168.57.22" },
			`hosts[3] "msg-2": ip 192.168.57.22 is outside the VIP's subnet 192.168.56.0/24`},
		{"prefix too long", func(t *keepalived.Topology) { t.Prefix = 31 }, "prefix: 31 is not a usable IPv4 prefix length"},
		{"prefix missing", func(t *keepalived.Topology) { t.Prefix = 0 }, "prefix: 0 is not a usable IPv4 prefix length"},
		{"interface missing", func(t *keepalived.Topology) { t.Interface = "" }, `interface: "" is not a network interface name`},
		{"interface too long", func(t *keepalived.Topology) { t.Interface = "enp0s8-very-long" }, `interface: "enp0s8-very-long" is not a network interface name`},
		{"vrid 0", func(t *keepalived.Topology) { t.VirtualRouterID = 0 }, "virtual_router_id: 0 is outside 1..255"},
		{"vrid 256", func(t *keepalived.Topology) { t.VirtualRouterID = 256 }, "virtual_router_id: 256 is outside 1..255"},
		{"advert_int too small", func(t *keepalived.Topology) { t.AdvertInt = 0.005 }, "advert_int: 0.005 s is below VRRPv3's minimum of 0.01 s"},
		{"advert_int missing", func(t *keepalived.Topology) { t.AdvertInt = 0 }, "advert_int: 0 s is below VRRPv3's minimum"},
		{"advert_int too large", func(t *keepalived.Topology) { t.AdvertInt = 41 }, "advert_int: 41 s is above VRRPv3's maximum of 40.95 s"},
		{"advert_int not centiseconds", func(t *keepalived.Topology) { t.AdvertInt = 0.125 }, "advert_int: 0.125 s is not a whole number of centiseconds"},
		{"port 0", func(t *keepalived.Topology) { t.Ports.RelayAdmin = 0 }, "ports.relay_admin: 0 is not a TCP port"},
		{"port too big", func(t *keepalived.Topology) { t.Ports.Redis = 70000 }, "ports.redis: 70000 is not a TCP port"},
		{"two services on one port", func(t *keepalived.Topology) { t.Ports.MsgServerClient = 6379 },
			`hosts[2] "msg-1": ports.msgserver_client and ports.redis are both 6379 on this host`},
		{"three relays", func(t *keepalived.Topology) {
			t.Hosts[3].Roles = append(t.Hosts[3].Roles, keepalived.RoleRelay)
			t.Hosts[3].Priority = 120
		}, `3 hosts have the role "relay"; the tier is a pair, exactly 2 are needed`},
		{"one relay", func(t *keepalived.Topology) { t.Hosts[1].Roles = []string{"msgserver"}; t.Hosts[1].Priority = 0 },
			`1 hosts have the role "relay"`},
		{"equal priorities", func(t *keepalived.Topology) { t.Hosts[1].Priority = 150 },
			`relays "relay-a" and "relay-b" both have priority 150; they must differ`},
		{"priority missing", func(t *keepalived.Topology) { t.Hosts[1].Priority = 0 }, `hosts[1] "relay-b": priority 0 is outside 1..254`},
		{"priority 255", func(t *keepalived.Topology) { t.Hosts[0].Priority = 255 }, `hosts[0] "relay-a": priority 255 is outside 1..254`},
		{"priority on a message server", func(t *keepalived.Topology) { t.Hosts[2].Priority = 10 },
			`hosts[2] "msg-1": priority is set but the host is not a relay`},
		{"duplicate name", func(t *keepalived.Topology) { t.Hosts[3].Name = "msg-1" }, `hosts[3] "msg-1": name is also used by hosts[2]`},
		{"bad name", func(t *keepalived.Topology) { t.Hosts[3].Name = "msg 2" }, `hosts[3] "msg 2": name may only have letters`},
		{"name missing", func(t *keepalived.Topology) { t.Hosts[3].Name = "" }, "hosts[3]: name is missing"},
		{"duplicate ip", func(t *keepalived.Topology) { t.Hosts[1].IP = "192.168.56.11" },
			`hosts[1] "relay-b": ip 192.168.56.11 is also used by hosts[0] "relay-a"`},
		{"bad ip", func(t *keepalived.Topology) { t.Hosts[0].IP = "relay-a.local" }, `hosts[0] "relay-a": ip "relay-a.local" is not an IPv4 address`},
		{"unknown role", func(t *keepalived.Topology) { t.Hosts[3].Roles = []string{"msgserver", "postgres"} }, `hosts[3] "msg-2": unknown role "postgres"`},
		{"role twice", func(t *keepalived.Topology) { t.Hosts[3].Roles = []string{"msgserver", "msgserver"} }, `hosts[3] "msg-2": role "msgserver" is listed twice`},
		{"no roles", func(t *keepalived.Topology) { t.Hosts[3].Roles = nil }, `hosts[3] "msg-2": roles is empty`},
		{"no message server", func(t *keepalived.Topology) {
			t.Hosts[2].Roles = []string{"redis"}
			t.Hosts[3].Roles = []string{"redis"}
		}, `no host has the role "msgserver"`},
		{"no redis", func(t *keepalived.Topology) { t.Hosts[2].Roles = []string{"msgserver"} }, `no host has the role "redis"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			topo := loadTopology(t)
			c.break_(topo)
			err := topo.Validate()
			if err == nil {
				t.Fatalf("Validate accepted the broken topology")
			}
			var verr *keepalived.ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("error %T is not a *ValidationError: %v", err, err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error does not say %q:\n%v", c.want, err)
			}
			// Render refuses it too, with the same words.
			if _, err := keepalived.Render(topo, "relay-a", keepalived.Options{}); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Render: %v", err)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	topo := loadTopology(t)
	topo.VirtualRouterID = 300
	topo.AdvertInt = 0.001
	topo.Hosts[1].Priority = 150
	err := topo.Validate()
	var verr *keepalived.ValidationError
	if !errors.As(err, &verr) || len(verr.Problems) != 3 {
		t.Fatalf("want 3 problems, got: %v", err)
	}
	for _, want := range []string{"virtual_router_id", "advert_int", "both have priority 150"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

func TestTopologyDocumentIsStrict(t *testing.T) {
	good, err := os.ReadFile(topologyFile)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, doc, want string }{
		{"misspelt key", strings.Replace(string(good), `"advert_int"`, `"advert_interval"`, 1), `unknown field "advert_interval"`},
		{"wrong type", strings.Replace(string(good), `"prefix": 24`, `"prefix": "24"`, 1), "cannot unmarshal string"},
		{"trailing data", string(good) + "{}", "data after the top-level object"},
		{"not JSON", "vip: 192.168.56.100", "not a valid topology document"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := keepalived.ParseTopology([]byte(c.doc))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want an error saying %q, got %v", c.want, err)
			}
		})
	}
	path := filepath.Join(t.TempDir(), "topology.json")
	if err := os.WriteFile(path, []byte(`{"vip": "192.168.56.100"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := keepalived.LoadTopology(path); err == nil || !strings.Contains(err.Error(), path) ||
		!strings.Contains(err.Error(), "exactly 2 are needed") {
		t.Fatalf("LoadTopology of an incomplete file: %v", err)
	}
}

// The golden files are the rendered configs an operator reads; -update
// rewrites them after a deliberate change.
func TestRenderGolden(t *testing.T) {
	topo := loadTopology(t)
	cases := []struct {
		file, host string
		o          keepalived.Options
		oneVIP     bool // the topology without vip_b: active-passive
	}{
		{"relay-a.conf", "relay-a", keepalived.Options{}, false},
		{"relay-b-unicast.conf", "relay-b", keepalived.Options{Unicast: true, RedisURL: topo.RedisURL()}, false},
		{"relay-a-one-vip.conf", "relay-a", keepalived.Options{}, true},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			topo := *topo
			if c.oneVIP {
				topo.VIPB, topo.VirtualRouterIDB = "", 0
			}
			got, err := keepalived.Render(&topo, c.host, c.o)
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", c.file)
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./keepalived -run TestRenderGolden -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("rendered config differs from %s (after a deliberate change: -update):\n%s", golden, got)
			}
		})
	}
}

func TestRenderContent(t *testing.T) {
	topo := loadTopology(t)
	render := func(host string, o keepalived.Options) string {
		t.Helper()
		b, err := keepalived.Render(topo, host, o)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	settings := func(conf string) []string {
		var out []string
		for _, l := range strings.Split(conf, "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				out = append(out, l)
			}
		}
		return out
	}
	has := func(t *testing.T, conf string, lines ...string) {
		t.Helper()
		got := settings(conf)
		for _, want := range lines {
			found := false
			for _, l := range got {
				found = found || l == want
			}
			if !found {
				t.Errorf("no line %q in:\n%s", want, conf)
			}
		}
	}
	hasNot := func(t *testing.T, conf string, words ...string) {
		t.Helper()
		for _, l := range settings(conf) {
			for _, w := range words {
				if strings.HasPrefix(l, w) {
					t.Errorf("unexpected line %q", l)
				}
			}
		}
	}

	a := render("relay-a", keepalived.Options{})
	has(t, a, "router_id relay-a", "script_user keepalived_script", "enable_script_security",
		`script "/usr/libexec/chatrelay/relay check --admin 127.0.0.1:9100 --link 127.0.0.1:7000 --timeout 400ms --grace 3s"`,
		"interval 1", "timeout 1", "fall 1", "rise 2", "weight 0", "init_fail",
		`file "/run/chatrelay/relay.down"`, "init_file 1",
		"state BACKUP", "nopreempt", "interface eth1", "virtual_router_id 51", "priority 150", "version 3",
		"advert_int 0.1", "192.168.56.100/24 dev eth1", "chk_relay", "relay_down",
		`notify "/usr/libexec/chatrelay/notify.sh relay-a"`)
	hasNot(t, a, "unicast", "check_unicast_src", "smtp", "notification_email", "vrrp_strict", "preempt_delay", "state MASTER")

	b := render("relay-b", keepalived.Options{
		Unicast: true, Interface: "enp0s8", RelayBin: "/opt/chatrelay/relay", NotifyScript: "/opt/chatrelay/notify.sh",
		TrackFile: "/run/drill/relay-b.down", ScriptUser: "root", RedisURL: "redis://192.168.56.21:6379/0",
		ExtraGlobal: []string{"vrrp_garp_interval 0.001", "  "},
	})
	has(t, b, "router_id relay-b", "priority 100", "script_user root", "interface enp0s8",
		"unicast_src_ip 192.168.56.12", "unicast_peer {", "192.168.56.11", "check_unicast_src",
		"192.168.56.100/24 dev enp0s8", `file "/run/drill/relay-b.down"`, "vrrp_garp_interval 0.001",
		`script "/opt/chatrelay/relay check --admin 127.0.0.1:9100 --link 127.0.0.1:7000 --timeout 400ms --grace 3s --redis redis://192.168.56.21:6379/0"`,
		`notify "/opt/chatrelay/notify.sh relay-b"`)
	hasNot(t, b, "interface eth1")
	// The extra line lands inside global_defs.
	if g := b[strings.Index(b, "global_defs {"):strings.Index(b, "vrrp_script")]; !strings.Contains(g, "vrrp_garp_interval 0.001") {
		t.Errorf("extra line not in global_defs:\n%s", g)
	}
}

func TestRenderRefusesBadOptions(t *testing.T) {
	topo := loadTopology(t)
	cases := []struct {
		name string
		host string
		o    keepalived.Options
		want string
	}{
		{"unknown host", "relay-c", keepalived.Options{}, `host "relay-c" is not in the topology (relay hosts: relay-a, relay-b)`},
		{"not a relay", "msg-1", keepalived.Options{}, `host "msg-1" is not a relay host (relay hosts: relay-a, relay-b)`},
		{"relative relay binary", "relay-a", keepalived.Options{RelayBin: "bin/relay"}, `relay binary "bin/relay" is not an absolute path`},
		{"blank in a path", "relay-a", keepalived.Options{NotifyScript: "/opt/my scripts/notify.sh"}, `notify script "/opt/my scripts/notify.sh" has a blank`},
		{"quote in a path", "relay-a", keepalived.Options{TrackFile: `/run/x"y`}, `track file "/run/x\"y" has a blank or one of`},
		{"comment char in a path", "relay-a", keepalived.Options{RelayBin: "/opt/#relay"}, `relay binary "/opt/#relay" has a blank or one of`},
		{"bad user", "relay-a", keepalived.Options{ScriptUser: "Root User"}, `script user "Root User" is not a user name`},
		{"bad interface", "relay-a", keepalived.Options{Interface: "eth1/2"}, `interface "eth1/2" is not a network interface name`},
		{"bad redis URL", "relay-a", keepalived.Options{RedisURL: "http://x"}, `redis URL "http://x" is not a redis://`},
		{"blank in redis URL", "relay-a", keepalived.Options{RedisURL: "redis://a b"}, "redis URL has a blank"},
		{"brace in an extra line", "relay-a", keepalived.Options{ExtraGlobal: []string{"}"}}, `extra global_defs line "}"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := keepalived.Render(topo, c.host, c.o)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want an error saying %q, got %v", c.want, err)
			}
		})
	}
	if _, err := keepalived.Render(nil, "relay-a", keepalived.Options{}); err == nil {
		t.Fatal("Render(nil) succeeded")
	}
}

// scriptDir makes a directory keepalived's enable_script_security accepts
// (root-owned, 0755, under root-owned directories or /tmp, whose sticky bit
// keepalived accepts) holding a stand-in relay binary whose "check" passes
// while the file check-fails does not exist, and a copy of notify.sh.
func scriptDir(t *testing.T) (dir, relayBin, notify string) {
	t.Helper()
	testenv.NeedRoot(t, "keepalived accepts scripts run as root only when root owns them")
	dir = t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	relayBin = filepath.Join(dir, "relay")
	writeExec(t, relayBin, fmt.Sprintf("#!/bin/sh\n# stands in for relay check\n[ ! -e %s ]\n", filepath.Join(dir, "check-fails")))
	src, err := os.ReadFile("notify.sh")
	if err != nil {
		t.Fatal(err)
	}
	notify = filepath.Join(dir, "notify.sh")
	writeExec(t, notify, string(src))
	return dir, relayBin, notify
}

func writeExec(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o755); err != nil { // whatever the umask
		t.Fatal(err)
	}
}

// netnsSetup gives a fresh network namespace what a relay host has: the
// topology's interface (a veth, whose peer stays in the namespace), up, with
// the host's address.
func netnsSetup(ifname, cidr string) string {
	return fmt.Sprintf("ip link add %[1]s type veth peer name %[1]sp && ip link set %[1]sp up && "+
		"ip link set %[1]s up && ip addr add %[2]s dev %[1]s", ifname, cidr)
}

// configTest runs keepalived -t on conf in a fresh network namespace that
// has the interface; it returns keepalived's exit code and output.
func configTest(t *testing.T, conf []byte, ifname, cidr string) (int, string) {
	t.Helper()
	kbin := testenv.Need(t, "keepalived", "keepalived")
	testenv.Need(t, "unshare", "util-linux")
	testenv.Need(t, "ip", "iproute2")
	path := filepath.Join(t.TempDir(), "keepalived.conf")
	if err := os.WriteFile(path, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--net", "--", "sh", "-c", netnsSetup(ifname, cidr)+` && exec "$@"`,
		"sh", kbin, "--config-test", "--use-file", path)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &exit):
		return exit.ExitCode(), string(out)
	}
	t.Fatalf("run keepalived -t: %v\n%s", err, out)
	return -1, ""
}

// keepalived -t (2.2.7) prints nothing and exits 0 for a good config. It
// reports problems on stderr ("Unknown keyword", "WARNING - interface ...
// doesn't exist", "Disabling track script ... due to insecure", "... since
// not found/accessible") and exits non-zero. So any output at all counts as
// a problem.
func TestKeepalivedAcceptsRenderedConfigs(t *testing.T) {
	topo := loadTopology(t)
	dir, relayBin, notify := scriptDir(t)
	for _, c := range []struct {
		host    string
		unicast bool
	}{{"relay-a", false}, {"relay-b", false}, {"relay-a", true}, {"relay-b", true}} {
		name := c.host + "/multicast"
		if c.unicast {
			name = c.host + "/unicast"
		}
		t.Run(name, func(t *testing.T) {
			h, _ := topo.Host(c.host)
			conf, err := keepalived.Render(topo, c.host, keepalived.Options{
				RelayBin: relayBin, NotifyScript: notify, TrackFile: filepath.Join(dir, "relay.down"),
				ScriptUser: "root", Unicast: c.unicast, RedisURL: topo.RedisURL(),
				ExtraGlobal: []string{"vrrp_garp_interval 0.001"},
			})
			if err != nil {
				t.Fatal(err)
			}
			code, out := configTest(t, conf, topo.Interface, h.IP+"/24")
			if code != 0 || out != "" {
				t.Fatalf("keepalived -t exit %d, output:\n%s\nconfig:\n%s", code, out, conf)
			}
		})
	}
}

// keepalived -t is a real gate: broken configs exit non-zero and say why.
func TestKeepalivedRejectsBrokenConfigs(t *testing.T) {
	topo := loadTopology(t)
	dir, relayBin, notify := scriptDir(t)
	good := keepalived.Options{RelayBin: relayBin, NotifyScript: notify, TrackFile: filepath.Join(dir, "relay.down"), ScriptUser: "root"}
	insecure := filepath.Join(dir, "insecure")
	if err := os.Mkdir(insecure, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(insecure, 0o777); err != nil {
		t.Fatal(err)
	}
	writeExec(t, filepath.Join(insecure, "relay"), "#!/bin/sh\nexit 0\n")

	cases := []struct {
		name string
		edit func(o *keepalived.Options)
		want string
	}{
		{"unknown keyword", func(o *keepalived.Options) { o.ExtraGlobal = []string{"no_such_keyword 1"} }, "Unknown keyword 'no_such_keyword'"},
		{"missing check binary", func(o *keepalived.Options) { o.RelayBin = filepath.Join(dir, "missing") }, "not found/accessible"},
		{"check binary in a world-writable directory", func(o *keepalived.Options) { o.RelayBin = filepath.Join(insecure, "relay") }, "insecure"},
		{"interface that does not exist", func(o *keepalived.Options) { o.Interface = "eth7" }, "interface eth7 for vrrp_instance VI_RELAY doesn't exist"},
		{"unknown script user", func(o *keepalived.Options) { o.ScriptUser = "no_such_user_x" }, "Unable to set default user"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := good
			c.edit(&o)
			conf, err := keepalived.Render(topo, "relay-a", o)
			if err != nil {
				t.Fatal(err)
			}
			code, out := configTest(t, conf, topo.Interface, "192.168.56.11/24")
			if code == 0 {
				t.Fatalf("keepalived -t accepted the broken config (output %q)", out)
			}
			if !strings.Contains(out, c.want) {
				t.Fatalf("keepalived -t exit %d without saying %q:\n%s", code, c.want, out)
			}
		})
	}
}

func TestScriptsPassShellcheck(t *testing.T) {
	bin := testenv.Need(t, "shellcheck", "shellcheck")
	for _, s := range []string{"notify.sh", "relay-supervise.sh"} {
		if out, err := exec.Command(bin, s).CombinedOutput(); err != nil {
			t.Errorf("shellcheck %s: %v\n%s", s, err, out)
		}
		if fi, err := os.Stat(s); err != nil || fi.Mode().Perm()&0o111 != 0o111 {
			t.Errorf("%s is not executable: %v %v", s, fi.Mode(), err)
		}
	}
}

func readTrimmed(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

// supervise runs relay-supervise.sh around args, reporting to a track file.
func supervise(t *testing.T, dir string, args ...string) (p *testenv.Proc, track, pidFile string) {
	t.Helper()
	script, err := filepath.Abs("relay-supervise.sh")
	if err != nil {
		t.Fatal(err)
	}
	track = filepath.Join(dir, "relay.down")
	pidFile = filepath.Join(dir, "relay.pid")
	env := []string{"CHATRELAY_TRACK_FILE=" + track, "CHATRELAY_PID_FILE=" + pidFile, script}
	p = testenv.Start(t, "relay-supervise.sh", "env", append(env, args...)...)
	// Stop it the way systemd would, so its child does not outlive the test
	// (testenv's SIGKILL at cleanup would orphan it).
	t.Cleanup(func() {
		p.Signal(syscall.SIGTERM)
		p.Wait(10 * time.Second)
	})
	return p, track, pidFile
}

func childPid(t *testing.T, pidFile string) int {
	t.Helper()
	var pid int
	testenv.Eventually(t, 5*time.Second, "the supervisor to write the child's pid", func() bool {
		n, err := strconv.Atoi(readTrimmed(pidFile))
		pid = n
		return err == nil && n > 0
	})
	return pid
}

func TestSuperviseReportsAKilledRelay(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "relay.down"), []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, track, pidFile := supervise(t, dir, "sleep", "60")
	testenv.Eventually(t, 5*time.Second, "track file to say 0 (relay up)", func() bool { return readTrimmed(track) == "0" })
	child := childPid(t, pidFile)
	if err := syscall.Kill(child, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "track file to say 1 (relay down)", func() bool { return readTrimmed(track) == "1" })
	if code := p.Wait(5 * time.Second); code != 128+int(syscall.SIGKILL) {
		t.Errorf("supervisor exit %d, want %d (the child's status)", code, 128+int(syscall.SIGKILL))
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("pid file left behind: %v", err)
	}
	// Only the track file is left: the atomic writes leave no temp files.
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("files left in the track file's directory: %v", entries)
	}
}

func TestSuperviseForwardsSIGTERM(t *testing.T) {
	dir := t.TempDir()
	// The child traps TERM and exits 7, so its exit proves it got the signal
	// (it stops its own sleep: an orphan would hold the output pipe open).
	p, track, pidFile := supervise(t, dir, "sh", "-c", `trap 'kill $!; exit 7' TERM; sleep 60 & wait`)
	testenv.Eventually(t, 5*time.Second, "track file to say 0", func() bool { return readTrimmed(track) == "0" })
	childPid(t, pidFile)
	p.Signal(syscall.SIGTERM)
	if code := p.Wait(5 * time.Second); code != 7 {
		t.Errorf("supervisor exit %d, want the child's 7", code)
	}
	if got := readTrimmed(track); got != "1" {
		t.Errorf("track file says %q after the child exited, want 1", got)
	}
}

func TestSuperviseNeedsTheTrackFile(t *testing.T) {
	cmd := exec.Command("./relay-supervise.sh", "sleep", "60")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), "CHATRELAY_TRACK_FILE") {
		t.Fatalf("want exit 2 naming CHATRELAY_TRACK_FILE, got %v: %s", err, out)
	}
}

func TestNotifyLogsTransitions(t *testing.T) {
	log := filepath.Join(t.TempDir(), "not", "yet", "transitions.log")
	run := func(args ...string) (int, string) {
		cmd := exec.Command("./notify.sh", args...)
		cmd.Env = append(os.Environ(), "CHATRELAY_NOTIFY_LOG="+log)
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := run("relay-a", "INSTANCE", "VI_RELAY", "MASTER", "150"); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	if code, out := run("INSTANCE", "VI_RELAY", "FAULT", "150"); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	if code, _ := run("INSTANCE", "VI_RELAY"); code != 2 {
		t.Errorf("bad arguments: exit %d, want 2", code)
	}
	host, _ := os.Hostname()
	lines := strings.Split(readTrimmed(log), "\n")
	if len(lines) != 2 {
		t.Fatalf("log has %d lines, want 2:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for i, want := range []string{
		" host=relay-a INSTANCE=VI_RELAY state=MASTER priority=150",
		" host=" + host + " INSTANCE=VI_RELAY state=FAULT priority=150",
	} {
		ts, rest, _ := strings.Cut(lines[i], " ")
		if _, err := time.Parse("2006-01-02T15:04:05.000Z", ts); err != nil {
			t.Errorf("line %d: timestamp: %v", i, err)
		}
		if " "+rest != want {
			t.Errorf("line %d: %q, want %q", i, " "+rest, want)
		}
	}
}

// vipOn reports whether the network namespace of pid has the VIP.
func vipOn(t *testing.T, pid int, ifname, vip string) bool {
	t.Helper()
	out, err := exec.Command("nsenter", fmt.Sprintf("--net=/proc/%d/ns/net", pid), "ip", "-o", "-4", "addr", "show", "dev", ifname).CombinedOutput()
	if err != nil {
		t.Fatalf("list addresses: %v: %s", err, out)
	}
	return strings.Contains(string(out), " "+vip+"/")
}

// The rendered config running in real keepalived: the instance becomes
// MASTER only once the relay is up and the check passes; the relay's
// supervisor writing 1 to the track file releases the VIP at once, and so
// does a failing check; every transition reaches notify.sh.
func TestRenderedConfigRunsInKeepalived(t *testing.T) {
	if testing.Short() {
		t.Skip("runs keepalived for a few seconds")
	}
	kbin := testenv.Need(t, "keepalived", "keepalived")
	testenv.Need(t, "unshare", "util-linux")
	testenv.Need(t, "nsenter", "util-linux")
	testenv.Need(t, "ip", "iproute2")
	topo := loadTopology(t)
	dir, relayBin, notify := scriptDir(t)
	runDir := filepath.Join(dir, "run")
	if err := os.Mkdir(runDir, 0o755); err != nil {
		t.Fatal(err)
	}
	track := filepath.Join(runDir, "relay.down")
	transitions := filepath.Join(dir, "log", "transitions.log")
	conf, err := keepalived.Render(topo, "relay-a", keepalived.Options{
		RelayBin: relayBin, NotifyScript: notify, TrackFile: track, ScriptUser: "root",
	})
	if err != nil {
		t.Fatal(err)
	}
	confPath := filepath.Join(dir, "keepalived.conf")
	if err := os.WriteFile(confPath, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	h, _ := topo.Host("relay-a")
	pidFile := filepath.Join(dir, "keepalived.pid")
	k := testenv.Start(t, "keepalived", "unshare", "--net", "--", "sh", "-c", netnsSetup(topo.Interface, h.IP+"/24")+` && exec "$@"`,
		"sh", "env", "CHATRELAY_NOTIFY_LOG="+transitions,
		kbin, "--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--vrrp", "--use-file", confPath,
		"--pid", pidFile, "--vrrp_pid", filepath.Join(dir, "vrrp.pid"))
	t.Cleanup(func() {
		k.Signal(syscall.SIGTERM)
		k.Wait(10 * time.Second)
	})
	var kpid int
	testenv.Eventually(t, 10*time.Second, "keepalived to write its pid", func() bool {
		kpid, _ = strconv.Atoi(readTrimmed(pidFile))
		return kpid > 0
	})
	logged := func(state string) func() bool {
		return func() bool {
			return strings.Contains(readTrimmed(transitions), "host=relay-a INSTANCE=VI_RELAY state="+state+" priority=150")
		}
	}

	// No relay has run: init_file 1 keeps the instance in FAULT.
	testenv.Eventually(t, 10*time.Second, "notify FAULT at start (no relay yet)", logged("FAULT"))
	if got := readTrimmed(track); got != "1" {
		t.Fatalf("track file %q at start, want keepalived's init_file 1", got)
	}
	if vipOn(t, kpid, topo.Interface, topo.VIP) {
		t.Fatal("VIP taken before any relay ran")
	}

	// The relay starts: BACKUP, then MASTER (no peer), VIP on eth1.
	_, _, supPid := supervise(t, runDir, "sleep", "60")
	testenv.Eventually(t, 10*time.Second, "VIP on relay-a", func() bool { return vipOn(t, kpid, topo.Interface, topo.VIP) })
	testenv.Eventually(t, 5*time.Second, "notify MASTER", logged("MASTER"))

	// SIGKILL the relay: the supervisor writes 1 and the VIP goes at once,
	// well before the next 1 s check (the stand-in check still passes).
	killed := time.Now()
	if err := syscall.Kill(childPid(t, supPid), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "VIP released after the relay was killed", func() bool { return !vipOn(t, kpid, topo.Interface, topo.VIP) })
	t.Logf("relay SIGKILL to VIP released: %v", time.Since(killed).Round(time.Millisecond))
	if d := time.Since(killed); d > 900*time.Millisecond {
		t.Errorf("VIP released %v after the kill: the track file should beat the 1 s check", d)
	}
	if n := strings.Count(readTrimmed(transitions), "state=FAULT"); n < 2 {
		testenv.Eventually(t, 5*time.Second, "notify FAULT after the kill", func() bool {
			return strings.Count(readTrimmed(transitions), "state=FAULT") >= 2
		})
	}

	// A relay again, then the check fails: FAULT through vrrp_script.
	supervise(t, runDir, "sleep", "60")
	testenv.Eventually(t, 10*time.Second, "VIP back on relay-a", func() bool { return vipOn(t, kpid, topo.Interface, topo.VIP) })
	if err := os.WriteFile(filepath.Join(dir, "check-fails"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	failed := time.Now()
	testenv.Eventually(t, 5*time.Second, "VIP released after the check failed", func() bool { return !vipOn(t, kpid, topo.Interface, topo.VIP) })
	t.Logf("check failing to VIP released: %v (interval 1, fall 1)", time.Since(failed).Round(time.Millisecond))

	// Stop keepalived: the notify script sees STOP.
	k.Signal(syscall.SIGTERM)
	k.Wait(10 * time.Second)
	testenv.Eventually(t, 5*time.Second, "notify STOP", logged("STOP"))
	if t.Failed() || testing.Verbose() {
		t.Logf("transitions:\n%s", readTrimmed(transitions))
	}
}

// The JSON keys are the schema README.md documents (and the Vagrantfile and
// the drill read): renaming a Go field must not change them.
func TestTopologyJSONKeys(t *testing.T) {
	b, err := json.Marshal(loadTopology(t))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(topologyFile)
	if err != nil {
		t.Fatal(err)
	}
	var file map[string]any
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(doc)
	want, _ := json.Marshal(file)
	if !bytes.Equal(got, want) {
		t.Fatalf("topology.json does not round-trip through Topology:\n got %s\nwant %s", got, want)
	}
}

func TestRenderCommand(t *testing.T) {
	relay := testenv.Build(t, "relay")
	topo := loadTopology(t)
	run := func(args ...string) (int, string, string) {
		t.Helper()
		cmd := exec.Command(relay, append([]string{"render-keepalived"}, args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatal(err)
		}
		return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
	}

	want, err := keepalived.Render(topo, "relay-a", keepalived.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if code, out, errs := run("--topology", topologyFile, "--host", "relay-a"); code != 0 || out != string(want) {
		t.Errorf("relay-a: exit %d, stderr %q, stdout equal to Render: %v", code, errs, out == string(want))
	}

	want, err = keepalived.Render(topo, "relay-b", keepalived.Options{
		Unicast: true, Interface: "enp0s8", RelayBin: "/opt/relay", NotifyScript: "/opt/notify.sh",
		TrackFile: "/run/x/relay.down", ScriptUser: "root", RedisURL: topo.RedisURL(),
	})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "keepalived.conf")
	if code, stdout, errs := run("--topology", topologyFile, "--host", "relay-b", "--unicast", "--interface", "enp0s8",
		"--relay-bin", "/opt/relay", "--notify", "/opt/notify.sh", "--track-file", "/run/x/relay.down",
		"--script-user", "root", "--redis", topo.RedisURL(), "--out", out); code != 0 || stdout != "" {
		t.Fatalf("--out: exit %d, stdout %q, stderr %q", code, stdout, errs)
	}
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, want) {
		t.Errorf("--out file differs from Render (%v):\n%s", err, got)
	}

	broken := filepath.Join(t.TempDir(), "topology.json")
	if err := os.WriteFile(broken, []byte(`{"vip": "192.168.56.100", "prefix": 24}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--host", "relay-a"}, "--topology is required"},
		{[]string{"--topology", topologyFile, "--host", "msg-1"}, `host "msg-1" is not a relay host (relay hosts: relay-a, relay-b)`},
		{[]string{"--topology", topologyFile, "--host", "relay-c"}, `host "relay-c" is not in the topology`},
		{[]string{"--topology", "missing.json", "--host", "relay-a"}, "read topology: open missing.json"},
		{[]string{"--topology", broken, "--host", "relay-a"}, "invalid topology"},
		{[]string{"--topology", topologyFile, "--host", "relay-a", "--redis", "redis-cluster://"}, "--redis:"},
		{[]string{"--topology", topologyFile, "--host", "relay-a", "--relay-bin", "relay"}, `relay binary "relay" is not an absolute path`},
		{[]string{"--topology", topologyFile, "--host", "relay-a", "extra"}, `unexpected arguments ["extra"]`},
		{[]string{"--topology", topologyFile, "--host", "relay-a", "--out", "/nonexistent-dir/keepalived.conf"}, "write /nonexistent-dir/keepalived.conf"},
		{[]string{"--no-such-flag"}, "unknown flag --no-such-flag; relay render-keepalived --help lists the flags\n"},
	} {
		code, stdout, stderr := run(c.args...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, c.want) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 2 saying %q", c.args, code, stdout, stderr, c.want)
		}
	}
	if code, stdout, stderr := run("--help"); code != 0 || !strings.Contains(stdout, "--topology") || stderr != "" {
		t.Errorf("--help: exit %d, stdout %q, stderr %q; want the help on stdout", code, stdout, stderr)
	}
}

// With a TLS link port the check probes it over TLS, with the check's
// client certificate for mutual TLS, and reads a rediss:// Redis with the
// lab's CA; keepalived -t accepts the longer script line. The TLS options
// are checked like the paths: together, absolute, safe.
func TestRenderTLSCheck(t *testing.T) {
	topo := loadTopology(t)
	dir, relayBin, notify := scriptDir(t)
	o := keepalived.Options{
		RelayBin: relayBin, NotifyScript: notify, TrackFile: filepath.Join(dir, "relay.down"), ScriptUser: "root",
		RedisURL: "rediss://192.168.56.21:6379/0", RedisCA: "/etc/chatrelay/tls/ca.pem",
		LinkTLS: true, CheckCert: "/etc/chatrelay/tls/check.pem", CheckKey: "/etc/chatrelay/tls/check-key.pem",
	}
	conf, err := keepalived.Render(topo, "relay-a", o)
	if err != nil {
		t.Fatal(err)
	}
	want := `script "` + relayBin + ` check --admin 127.0.0.1:9100 --link 127.0.0.1:7000 --timeout 400ms --grace 3s` +
		` --link-tls --link-cert /etc/chatrelay/tls/check.pem --link-key /etc/chatrelay/tls/check-key.pem` +
		` --redis rediss://192.168.56.21:6379/0 --redis-ca-file /etc/chatrelay/tls/ca.pem"`
	if !strings.Contains(string(conf), want) {
		t.Fatalf("no %s in:\n%s", want, conf)
	}
	h, _ := topo.Host("relay-a")
	if code, out := configTest(t, conf, topo.Interface, h.IP+"/24"); code != 0 || out != "" {
		t.Fatalf("keepalived -t exit %d, output:\n%s", code, out)
	}

	for _, c := range []struct {
		name string
		edit func(*keepalived.Options)
		want string
	}{
		{"certificate without key", func(o *keepalived.Options) { o.CheckKey = "" }, "client certificate and key go together"},
		{"certificate without TLS", func(o *keepalived.Options) { o.LinkTLS = false }, "set LinkTLS"},
		{"CA without Redis", func(o *keepalived.Options) { o.RedisURL = "" }, "a Redis CA file without a Redis URL"},
		{"relative certificate", func(o *keepalived.Options) { o.CheckCert = "tls/check.pem" }, `check certificate "tls/check.pem" is not an absolute path`},
		{"blank in the CA path", func(o *keepalived.Options) { o.RedisCA = "/etc/my ca.pem" }, `Redis CA file "/etc/my ca.pem" has a blank`},
	} {
		t.Run(c.name, func(t *testing.T) {
			bad := o
			c.edit(&bad)
			if _, err := keepalived.Render(topo, "relay-a", bad); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want an error saying %q, got %v", c.want, err)
			}
		})
	}
}
