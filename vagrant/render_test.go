package vagrant_test

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/chatrelay/chatrelay/keepalived"
	"github.com/chatrelay/chatrelay/testenv"
	"github.com/chatrelay/chatrelay/vagrant"
)

var update = flag.Bool("update", false, "rewrite the golden files (testdata/, health/prometheus/prometheus.yml) from the renderer")

// lab is a topology the tests render: the shipped one, and another where
// every address, name, port and count differs (so nothing can be written
// into a template), rendered with the provisioner's options set.
type lab struct {
	name       string // folder of its golden files in testdata/
	topology   string // its topology file
	opts       vagrant.Options
	prometheus string // the golden prometheus.yml
}

func labs(t *testing.T) []lab {
	r := root(t)
	return []lab{
		{"lab", filepath.Join(r, "keepalived", "topology.json"), vagrant.Options{},
			// The shipped render is the checked-in config, beside alerts.yml.
			filepath.Join(r, "health", "prometheus", "prometheus.yml")},
		{"other", filepath.Join("testdata", "other", "topology.json"), vagrant.Options{Interface: "enp0s8", Unicast: true},
			filepath.Join("testdata", "other", "prometheus.yml.golden")},
	}
}

func (l lab) load(t *testing.T) *keepalived.Topology {
	t.Helper()
	topo, err := keepalived.LoadTopology(l.topology)
	if err != nil {
		t.Fatal(err)
	}
	return topo
}

// files renders every host of the lab: host name -> file name -> content.
func (l lab) files(t *testing.T) map[string]map[string][]byte {
	t.Helper()
	topo := l.load(t)
	out := map[string]map[string][]byte{}
	for _, h := range topo.Hosts {
		files, err := vagrant.RenderHost(topo, h.Name, l.opts)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = map[string][]byte{}
		for _, f := range files {
			out[h.Name][f.Name] = f.Data
		}
	}
	return out
}

func root(t *testing.T) string { return testenv.ModuleRoot(t) }

// golden compares got with the golden file at path, or writes it under -update.
func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("%v (go test ./vagrant/ -update writes it)", err)
		return
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is not what the renderer gives now; if the change is deliberate, go test ./vagrant/ -update "+
			"(for health/prometheus/prometheus.yml after editing the topology: go generate ./vagrant/)\n%s", path, firstDiff(want, got))
	}
}

// firstDiff shows the first line where want and got differ.
func firstDiff(want, got []byte) string {
	w, g := strings.Split(string(want), "\n"), strings.Split(string(got), "\n")
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl || i >= len(w) || i >= len(g) {
			return fmt.Sprintf("line %d:\n  golden: %q\n  render: %q", i+1, wl, gl)
		}
	}
	return ""
}

// Every file of every host, and the Prometheus config, is its golden file:
// testdata/<lab>/<host>/<file>.golden, read them to see what each VM gets.
// No golden file is left over from a file the renderer no longer makes.
func TestRenderGolden(t *testing.T) {
	for _, l := range labs(t) {
		t.Run(l.name, func(t *testing.T) {
			dir := filepath.Join("testdata", l.name)
			want := map[string]bool{}
			for host, files := range l.files(t) {
				for name, data := range files {
					p := filepath.Join(dir, host, name+".golden")
					want[p] = true
					golden(t, p, data)
				}
			}
			prom, err := vagrant.RenderPrometheus(l.load(t))
			if err != nil {
				t.Fatal(err)
			}
			golden(t, l.prometheus, prom)
			stale, _ := filepath.Glob(filepath.Join(dir, "*", "*.golden"))
			for _, p := range stale {
				if want[p] {
					continue
				}
				if *update {
					if err := os.Remove(p); err != nil {
						t.Fatal(err)
					}
				} else {
					t.Errorf("%s: the renderer makes no such file (go test ./vagrant/ -update removes it)", p)
				}
			}
		})
	}
}

// Each host gets the files of its roles, and only those.
func TestFilesFollowRoles(t *testing.T) {
	for _, l := range labs(t) {
		topo := l.load(t)
		files := l.files(t)
		for _, h := range topo.Hosts {
			want := []string{"firewall.sh"}
			for role, name := range map[string]string{keepalived.RoleRelay: "relay.env", keepalived.RoleMsgServer: "msgserver.env", keepalived.RoleRedis: "redis.conf"} {
				if h.Has(role) {
					want = append(want, name)
				}
			}
			if h.Has(keepalived.RoleRelay) {
				want = append(want, "keepalived.conf")
			}
			var got []string
			for name := range files[h.Name] {
				got = append(got, name)
			}
			slices.Sort(want)
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Errorf("%s %s (roles %v): files %v, want %v", l.name, h.Name, h.Roles, got, want)
			}
		}
	}
}

// allows says whether rules let TCP from addr to port in.
func allows(rules []vagrant.Rule, port int, from netip.Addr) bool {
	for _, r := range rules {
		if r.Proto != "tcp" || r.Port != port {
			continue
		}
		if r.Source == "" {
			return true
		}
		if p, err := netip.ParsePrefix(r.Source); err == nil && p.Contains(from) {
			return true
		}
		if a, err := netip.ParseAddr(r.Source); err == nil && a == from {
			return true
		}
	}
	return false
}

// The firewall lets each peer, message server and the VM host's Prometheus
// in where needed, and nothing else from outside the lab network.
func TestFirewallRules(t *testing.T) {
	outside := netip.MustParseAddr("203.0.113.7")
	for _, l := range labs(t) {
		topo := l.load(t)
		lab := netip.PrefixFrom(netip.MustParseAddr(topo.VIP), topo.Prefix).Masked()
		vmHost := lab.Addr().Next() // .1 on VirtualBox host-only and libvirt networks
		p := topo.Ports
		fw := map[string][]vagrant.Rule{}
		for _, h := range topo.Hosts {
			rules, err := vagrant.FirewallRules(topo, h.Name)
			if err != nil {
				t.Fatal(err)
			}
			fw[h.Name] = rules
			var vrrpFrom []string
			for _, r := range rules {
				if r.Proto == "vrrp" {
					vrrpFrom = append(vrrpFrom, r.Source)
				}
			}
			where := l.name + " " + h.Name
			if h.Has(keepalived.RoleRelay) {
				peer, _ := topo.Peer(h.Name)
				if !slices.Equal(vrrpFrom, []string{peer.IP}) {
					t.Errorf("%s: VRRP allowed from %v, want only the peer relay %s", where, vrrpFrom, peer.IP)
				}
				for _, m := range topo.WithRole(keepalived.RoleMsgServer) {
					if !allows(rules, p.RelayLink, netip.MustParseAddr(m.IP)) {
						t.Errorf("%s: message server %s cannot reach the relay link port %d", where, m.Name, p.RelayLink)
					}
				}
				if allows(rules, p.RelayLink, outside) || allows(rules, p.RelayAdmin, outside) {
					t.Errorf("%s: relay ports open beyond the lab network: %v", where, rules)
				}
			} else if len(vrrpFrom) > 0 {
				t.Errorf("%s: VRRP allowed on a host without the relay role", where)
			}
			if h.Has(keepalived.RoleMsgServer) {
				if !allows(rules, p.MsgServerClient, outside) {
					t.Errorf("%s: the client port %d is not open to clients", where, p.MsgServerClient)
				}
				if allows(rules, p.MsgServerAdmin, outside) {
					t.Errorf("%s: the admin port %d is open beyond the lab network", where, p.MsgServerAdmin)
				}
			}
			if h.Has(keepalived.RoleRedis) {
				for _, c := range topo.Hosts { // message servers, and relay checks (--redis)
					if !allows(rules, p.Redis, netip.MustParseAddr(c.IP)) {
						t.Errorf("%s: %s cannot reach Redis port %d", where, c.Name, p.Redis)
					}
				}
				if allows(rules, p.Redis, outside) {
					t.Errorf("%s: Redis is open beyond the lab network", where)
				}
			} else if allows(rules, p.Redis, vmHost) {
				t.Errorf("%s: Redis port open on a host without Redis", where)
			}
		}
		// Prometheus on the VM host scrapes every target.
		for _, tg := range vagrant.ScrapeTargets(topo) {
			ap := netip.MustParseAddrPort(tg.Addr)
			if !allows(fw[tg.Host], int(ap.Port()), vmHost) {
				t.Errorf("%s: scrape target %s (%s): the firewall of %s does not let the VM host %s in", l.name, tg.Addr, tg.Job, tg.Host, vmHost)
			}
		}
	}
}

// Prometheus scrapes exactly the relays and the message servers, each at
// its own address and admin port, labelled with its name; and that admin
// port listens on every address (so on that one) per the host's env file.
func TestScrapeTargetsAreTheAdminAddresses(t *testing.T) {
	for _, l := range labs(t) {
		topo := l.load(t)
		files := l.files(t)
		prom, err := vagrant.RenderPrometheus(topo)
		if err != nil {
			t.Fatal(err)
		}
		var got, want []string
		for _, tg := range vagrant.ScrapeTargets(topo) {
			got = append(got, tg.Job+" "+tg.Host+" "+tg.Addr)
			ap := netip.MustParseAddrPort(tg.Addr)
			env := files[tg.Host][tg.Job+".env"]
			if !bytes.Contains(env, fmt.Appendf(nil, "\nCHATRELAY_ADMIN=:%d\n", ap.Port())) {
				t.Errorf("%s: %s's %s.env does not listen on every address at admin port %d, where Prometheus scrapes it:\n%s",
					l.name, tg.Host, tg.Job, ap.Port(), env)
			}
			if !bytes.Contains(prom, fmt.Appendf(nil, "- targets: [%q]\n        labels:\n          host: %s\n", tg.Addr, tg.Host)) {
				t.Errorf("%s: prometheus.yml has no target %s labelled host %s", l.name, tg.Addr, tg.Host)
			}
		}
		for _, h := range topo.Hosts {
			if h.Has(keepalived.RoleRelay) {
				want = append(want, fmt.Sprintf("relay %s %s:%d", h.Name, h.IP, topo.Ports.RelayAdmin))
			}
			if h.Has(keepalived.RoleMsgServer) {
				want = append(want, fmt.Sprintf("msgserver %s %s:%d", h.Name, h.IP, topo.Ports.MsgServerAdmin))
			}
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: scrape targets\n  %s\nwant\n  %s", l.name, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
	}
}

// A relay VM's keepalived.conf is keepalived.Render's, with the check run
// from the copy of the relay that provision.sh installs for keepalived, the
// lab's Redis (over TLS), the link port probed over TLS with the check's
// certificate, and the VM's NIC and advert mode.
func TestKeepalivedConfForVMs(t *testing.T) {
	for _, l := range labs(t) {
		topo := l.load(t)
		files := l.files(t)
		nic := topo.Interface
		if l.opts.Interface != "" {
			nic = l.opts.Interface
		}
		for _, h := range topo.Relays() {
			conf := files[h.Name]["keepalived.conf"]
			for _, s := range []string{"interface " + nic + "\n", "dev " + nic + "\n",
				`script "` + vagrant.CheckRelayBin + " check ",
				" --link-tls --link-cert " + vagrant.TLSDir + "/check.pem --link-key " + vagrant.TLSDir + "/check-key.pem ",
				"--redis rediss://" + strings.TrimPrefix(topo.RedisURL(), "redis://") + " --redis-ca-file " + vagrant.TLSDir + `/ca.pem"`,
				`notify "` + vagrant.NotifyScript + " " + h.Name + `"`, `file "` + keepalived.DefaultTrackFile + `"`,
				"script_user " + keepalived.DefaultScriptUser + "\n"} {
				if !bytes.Contains(conf, []byte(s)) {
					t.Errorf("%s %s: keepalived.conf lacks %q", l.name, h.Name, s)
				}
			}
			if bytes.Contains(conf, []byte("unicast_peer")) != l.opts.Unicast {
				t.Errorf("%s %s: unicast %v, but unicast_peer present: %v", l.name, h.Name, l.opts.Unicast, !l.opts.Unicast)
			}
		}
	}
}

func TestRenderRefuses(t *testing.T) {
	topo := labs(t)[0].load(t)
	for _, c := range []struct {
		name string
		host string
		o    vagrant.Options
		want string
	}{
		{"unknown host", "relay-c", vagrant.Options{}, `host "relay-c" is not in the topology (hosts: relay-a, relay-b, msg-1, msg-2)`},
		{"bad interface", "relay-a", vagrant.Options{Interface: "eth1/2"}, `interface "eth1/2" is not a network interface name`},
	} {
		if _, err := vagrant.RenderHost(topo, c.host, c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: want an error saying %q, got %v", c.name, c.want, err)
		}
	}
	if _, err := vagrant.RenderHost(nil, "relay-a", vagrant.Options{}); err == nil {
		t.Error("RenderHost(nil) succeeded")
	}
	if _, err := vagrant.RenderPrometheus(&keepalived.Topology{}); err == nil || !strings.Contains(err.Error(), "invalid topology") {
		t.Errorf("RenderPrometheus of an empty topology: %v", err)
	}
	if _, err := vagrant.FirewallRules(topo, "nope"); err == nil {
		t.Error("FirewallRules of an unknown host succeeded")
	}
}
