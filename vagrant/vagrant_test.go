// Package vagrant_test checks the Vagrant lab without booting a VM (this
// machine has no VirtualBox or KVM): Vagrant itself validates and loads the
// Vagrantfile; the provisioning scripts that turn the topology into env
// files, firewall rules and keepalived.conf run here against temporary
// directories and a recording firewall-cmd; the systemd units pass
// systemd-analyze; scripts/build-vagrant.sh builds linux/amd64 binaries. Every
// address, port and name is compared with keepalived/topology.json (the one
// source of truth) and with health/prometheus/prometheus.yml.
//
// Tools: vagrant (which brings ruby), shellcheck, systemd-analyze, git.
// Missing ones fail the tests in CI and skip them elsewhere.
package vagrant_test

import (
	"bufio"
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/testenv"
	"github.com/chatrelay/chatrelay/keepalived"
)

// machine is one VM as testdata/dump-vagrantfile.rb reports it: the
// configuration Vagrant itself built from the Vagrantfile.
type machine struct {
	Name     string `json:"name"`
	Hostname string `json:"hostname"`
	Box      string `json:"box"`
	Networks []struct {
		Type    string         `json:"type"`
		Options map[string]any `json:"options"`
	} `json:"networks"`
	SyncedFolders []struct {
		ID        string `json:"id"`
		GuestPath string `json:"guestpath"`
		Disabled  bool   `json:"disabled"`
	} `json:"synced_folders"`
	VirtualBox struct {
		Name    string   `json:"name"`
		Memory  string   `json:"memory"`
		CPUs    string   `json:"cpus"`
		Invalid []string `json:"invalid"`
	} `json:"virtualbox"`
	Libvirt struct {
		Class   string   `json:"class"`
		Memory  int      `json:"memory"`
		CPUs    int      `json:"cpus"`
		Invalid []string `json:"invalid"`
	} `json:"libvirt"`
	Provisioners []provisioner `json:"provisioners"`
}

type provisioner struct {
	Name        string            `json:"name"`
	Type        string            `json:"type"`
	Path        string            `json:"path"`
	Args        []string          `json:"args"`
	Env         map[string]string `json:"env"`
	Privileged  *bool             `json:"privileged"`
	Source      string            `json:"source"`
	Destination string            `json:"destination"`
}

// labEnv is the environment the main provisioner (provision.sh) gets.
func (m machine) labEnv(t *testing.T) map[string]string {
	t.Helper()
	for _, p := range m.Provisioners {
		if p.Type == "shell" && p.Path == "provision/provision.sh" {
			return p.Env
		}
	}
	t.Fatalf("%s: no shell provisioner runs provision/provision.sh: %+v", m.Name, m.Provisioners)
	return nil
}

// privateIPs are the addresses of the machine's private networks.
func (m machine) privateNets() []map[string]any {
	var out []map[string]any
	for _, n := range m.Networks {
		if n.Type == "private_network" {
			out = append(out, n.Options)
		}
	}
	return out
}

func root(t *testing.T) string { return testenv.ModuleRoot(t) }

func loadTopology(t *testing.T) *keepalived.Topology {
	t.Helper()
	topo, err := keepalived.LoadTopology(filepath.Join(root(t), "keepalived", "topology.json"))
	if err != nil {
		t.Fatal(err)
	}
	return topo
}

// vagrantEnv is the environment vagrant and the dump script run with: a
// private VAGRANT_HOME (never the user's) and project data folder (no
// .vagrant/ left in the tree), no update checks (no network), and none of
// the Vagrantfile's own knobs unless extra sets them.
func vagrantEnv(t *testing.T, extra ...string) []string {
	t.Helper()
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "VAGRANT_") || strings.HasPrefix(k, "CHATRELAY_") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "VAGRANT_HOME="+t.TempDir(), "VAGRANT_DOTFILE_PATH="+t.TempDir(), "VAGRANT_CHECKPOINT_DISABLE=1",
		"VAGRANT_BOX_UPDATE_CHECK_DISABLE=1", "VAGRANT_NO_COLOR=1")
	return append(env, extra...)
}

// labCopy makes a copy of the lab's files (vagrant/ without build/ and
// .vagrant/, and keepalived/notify.sh) in a temporary tree, with topology as
// keepalived/topology.json, and returns the copy's vagrant folder.
func labCopy(t *testing.T, topology []byte) string {
	t.Helper()
	r := root(t)
	dst := t.TempDir()
	for _, f := range []string{"vagrant/Vagrantfile", "keepalived/notify.sh"} {
		copyFile(t, filepath.Join(r, f), filepath.Join(dst, f))
	}
	for _, glob := range []string{"vagrant/provision/*.sh", "vagrant/systemd/*.service"} {
		files, _ := filepath.Glob(filepath.Join(r, glob))
		for _, f := range files {
			rel, _ := filepath.Rel(r, f)
			copyFile(t, f, filepath.Join(dst, rel))
		}
	}
	if err := os.WriteFile(filepath.Join(dst, "keepalived", "topology.json"), topology, 0o644); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dst, "vagrant")
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(src)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, fi.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
}

func run(t *testing.T, dir string, env []string, name string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return "", "", err
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(5 * time.Minute):
		_ = cmd.Process.Kill()
		err = fmt.Errorf("%s timed out: %v", name, <-done)
	}
	return o.String(), e.String(), err
}

// needVagrant returns the vagrant executable, after checking that ruby can
// load Vagrant's library (the dump script needs it; Debian's vagrant package
// is built that way, HashiCorp's bundles its own Ruby).
func needVagrant(t *testing.T) string {
	t.Helper()
	bin := testenv.Need(t, "vagrant", "vagrant")
	ruby := testenv.Need(t, "ruby", "vagrant")
	if out, err := exec.Command(ruby, "-e", `require "vagrant"`).CombinedOutput(); err != nil {
		msg := fmt.Sprintf("ruby cannot load Vagrant's library (install Debian's vagrant package): %v\n%s", err, out)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

// dump returns the machines the Vagrantfile in dir defines, as Vagrant loads
// them (testdata/dump-vagrantfile.rb).
func dump(t *testing.T, dir string, extraEnv ...string) []machine {
	t.Helper()
	needVagrant(t)
	script := filepath.Join(root(t), "vagrant", "testdata", "dump-vagrantfile.rb")
	out, errOut, err := run(t, dir, vagrantEnv(t, extraEnv...), "ruby", script)
	if err != nil {
		t.Fatalf("dump-vagrantfile.rb: %v\n%s%s", err, out, errOut)
	}
	var d struct {
		Machines []machine `json:"machines"`
	}
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("dump output: %v\n%s", err, out)
	}
	return d.Machines
}

func TestVagrantValidate(t *testing.T) {
	bin := needVagrant(t)
	// --ignore-provider: validate everything but the provider blocks, which
	// need VirtualBox or vagrant-libvirt installed (the dump test checks
	// those settings instead).
	out, errOut, err := run(t, filepath.Join(root(t), "vagrant"), vagrantEnv(t), bin, "validate", "--ignore-provider")
	if err != nil || !strings.Contains(out, "Vagrantfile validated successfully") {
		t.Fatalf("vagrant validate --ignore-provider: %v\n%s%s", err, out, errOut)
	}
	for _, h := range loadTopology(t).Hosts {
		if !strings.Contains(out, "==> "+h.Name+":") {
			t.Errorf("vagrant validate did not validate machine %s:\n%s", h.Name, out)
		}
	}
}

// The validation above is worth something only if vagrant validate rejects
// a broken Vagrantfile.
func TestVagrantValidateRejectsMistakes(t *testing.T) {
	bin := needVagrant(t)
	topo, err := os.ReadFile(filepath.Join(root(t), "keepalived", "topology.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, from, to, want string }{
		{"misspelt setting", "vm.vm.hostname = name", "vm.vm.hostnme = name", "hostnme"},
		{"missing script", `path: "provision/provision.sh"`, `path: "provision/nope.sh"`, "nope.sh"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := labCopy(t, topo)
			vf := filepath.Join(dir, "Vagrantfile")
			b, _ := os.ReadFile(vf)
			if !bytes.Contains(b, []byte(c.from)) {
				t.Fatalf("Vagrantfile has no %q to break", c.from)
			}
			if err := os.WriteFile(vf, bytes.Replace(b, []byte(c.from), []byte(c.to), 1), 0o644); err != nil {
				t.Fatal(err)
			}
			out, errOut, err := run(t, dir, vagrantEnv(t), bin, "validate", "--ignore-provider")
			if err == nil || !strings.Contains(out+errOut, c.want) {
				t.Fatalf("vagrant validate accepted a broken Vagrantfile (%v):\n%s%s", err, out, errOut)
			}
		})
	}
}

// No name, address or port of the lab is written in the Vagrantfile's code
// (comments may explain them): all come from the topology.
func TestVagrantfileHasNoLabLiterals(t *testing.T) {
	topo := loadTopology(t)
	b, err := os.ReadFile(filepath.Join(root(t), "vagrant", "Vagrantfile"))
	if err != nil {
		t.Fatal(err)
	}
	ipv4 := regexp.MustCompile(`\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b`)
	var forbidden []*regexp.Regexp
	for _, h := range topo.Hosts {
		forbidden = append(forbidden, regexp.MustCompile(`\b`+regexp.QuoteMeta(h.Name)+`\b`))
	}
	p := topo.Ports
	for _, port := range []int{p.RelayLink, p.RelayAdmin, p.MsgServerClient, p.MsgServerAdmin, p.Redis} {
		forbidden = append(forbidden, regexp.MustCompile(`\b`+strconv.Itoa(port)+`\b`))
	}
	forbidden = append(forbidden, regexp.MustCompile(`\b`+regexp.QuoteMeta(topo.Interface)+`\b`))
	code := 0
	for i, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		code++
		if m := ipv4.FindString(line); m != "" {
			t.Errorf("Vagrantfile:%d: address literal %s in %q", i+1, m, trimmed)
		}
		for _, re := range forbidden {
			if m := re.FindString(line); m != "" {
				t.Errorf("Vagrantfile:%d: topology value %q written in %q", i+1, m, trimmed)
			}
		}
	}
	if code < 20 {
		t.Fatalf("only %d code lines found in the Vagrantfile", code)
	}
}

func TestMachinesMatchTopology(t *testing.T) {
	topo := loadTopology(t)
	machines := dump(t, filepath.Join(root(t), "vagrant"))
	checkMachines(t, topo, machines)

	m := machines[0]
	if m.Box != "generic/centos9s" {
		t.Errorf("box %q, want generic/centos9s (virtualbox and libvirt builds, eth1 naming)", m.Box)
	}
	for _, m := range machines {
		mem, _ := strconv.Atoi(m.VirtualBox.Memory)
		if mem < 512 || mem > 1024 || m.Libvirt.Memory != mem {
			t.Errorf("%s: memory virtualbox %q libvirt %d, want the same, 512..1024 MB", m.Name, m.VirtualBox.Memory, m.Libvirt.Memory)
		}
		if m.VirtualBox.CPUs != "1" || m.Libvirt.CPUs != 1 {
			t.Errorf("%s: cpus virtualbox %q libvirt %d, want 1", m.Name, m.VirtualBox.CPUs, m.Libvirt.CPUs)
		}
		if len(m.VirtualBox.Invalid)+len(m.Libvirt.Invalid) > 0 {
			t.Errorf("%s: unknown provider settings: virtualbox %v libvirt %v", m.Name, m.VirtualBox.Invalid, m.Libvirt.Invalid)
		}
		if m.Libvirt.Class == "" || m.VirtualBox.Name != "chatrelay-"+m.Name {
			t.Errorf("%s: provider blocks: virtualbox name %q, libvirt %q", m.Name, m.VirtualBox.Name, m.Libvirt.Class)
		}
		// VirtualBox >= 6.1.28 allows host-only networks in 192.168.56.0/21 only.
		for _, n := range m.privateNets() {
			ip, _ := netip.ParseAddr(fmt.Sprint(n["ip"]))
			if !netip.MustParsePrefix("192.168.56.0/21").Contains(ip) {
				t.Errorf("%s: %v is outside VirtualBox's default host-only range 192.168.56.0/21", m.Name, ip)
			}
		}
	}
}

// checkMachines compares what Vagrant will build with the topology: one VM
// per host in order, named and addressed as the topology says, provisioned
// with the topology's values.
func checkMachines(t *testing.T, topo *keepalived.Topology, machines []machine) {
	t.Helper()
	if len(machines) != len(topo.Hosts) {
		t.Fatalf("%d machines, want one per topology host (%d)", len(machines), len(topo.Hosts))
	}
	vip := netip.MustParseAddr(topo.VIP)
	lab := netip.PrefixFrom(vip, topo.Prefix).Masked()
	mask := net4Mask(topo.Prefix)
	var relayIPs []string
	for _, h := range topo.Relays() {
		relayIPs = append(relayIPs, h.IP)
	}
	redis := topo.WithRole(keepalived.RoleRedis)[0]
	for i, h := range topo.Hosts {
		m := machines[i]
		if m.Name != h.Name || m.Hostname != h.Name {
			t.Errorf("machine %d: name %q hostname %q, want %q", i, m.Name, m.Hostname, h.Name)
		}
		nets := m.privateNets()
		if len(nets) != 1 || nets[0]["ip"] != h.IP || nets[0]["netmask"] != mask {
			t.Errorf("%s: private networks %v, want one with ip %s netmask %s", m.Name, nets, h.IP, mask)
		}
		for _, n := range m.Networks {
			if n.Type == "forwarded_port" && n.Options["guest"] != float64(22) {
				t.Errorf("%s: forwarded port %v: the host reaches the VMs on the private network instead", m.Name, n.Options)
			}
		}
		if len(m.SyncedFolders) != 1 || !m.SyncedFolders[0].Disabled {
			t.Errorf("%s: synced folders %+v, want /vagrant disabled (files are uploaded)", m.Name, m.SyncedFolders)
		}
		want := map[string]string{
			"LAB_STAGE":                 "/tmp/chatrelay-provision",
			"LAB_HOST":                  h.Name,
			"LAB_IP":                    h.IP,
			"LAB_ROLES":                 strings.Join(h.Roles, " "),
			"LAB_INTERFACE":             topo.Interface,
			"LAB_VIP":                   topo.VIP,
			"LAB_CIDR":                  lab.String(),
			"LAB_RELAY_IPS":             strings.Join(relayIPs, " "),
			"LAB_REDIS_IP":              redis.IP,
			"LAB_PORT_RELAY_LINK":       strconv.Itoa(topo.Ports.RelayLink),
			"LAB_PORT_RELAY_ADMIN":      strconv.Itoa(topo.Ports.RelayAdmin),
			"LAB_PORT_MSGSERVER_CLIENT": strconv.Itoa(topo.Ports.MsgServerClient),
			"LAB_PORT_MSGSERVER_ADMIN":  strconv.Itoa(topo.Ports.MsgServerAdmin),
			"LAB_PORT_REDIS":            strconv.Itoa(topo.Ports.Redis),
			"LAB_VRRP_UNICAST":          "0",
		}
		got := m.labEnv(t)
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: provisioner env %s=%q, want %q", m.Name, k, got[k], v)
			}
		}
		if len(got) != len(want) {
			t.Errorf("%s: provisioner env %v, want exactly %v", m.Name, got, want)
		}
		checkProvisionOrder(t, m, got["LAB_STAGE"])
	}
}

// checkProvisionOrder: stage.sh first, then the uploads (everything
// provision.sh reads), then provision.sh last.
func checkProvisionOrder(t *testing.T, m machine, stage string) {
	t.Helper()
	ps := m.Provisioners
	if len(ps) < 3 || ps[0].Path != "provision/stage.sh" || !slices.Equal(ps[0].Args, []string{stage}) ||
		ps[len(ps)-1].Path != "provision/provision.sh" {
		t.Fatalf("%s: provisioners %+v: want stage.sh %s first and provision.sh last", m.Name, ps, stage)
	}
	uploaded := map[string]string{}
	for _, p := range ps[1 : len(ps)-1] {
		if p.Type != "file" || !strings.HasPrefix(p.Destination, stage+"/") {
			t.Errorf("%s: provisioner %+v between stage.sh and provision.sh is not an upload to %s", m.Name, p, stage)
			continue
		}
		uploaded[strings.TrimPrefix(p.Destination, stage+"/")] = p.Source
	}
	for _, f := range []string{"topology.json", "notify.sh", "provision/write-env.sh", "provision/firewall.sh",
		"provision/render-keepalived.sh", "systemd/chatrelay-relay.service", "systemd/chatrelay-msgserver.service"} {
		if uploaded[f] == "" {
			t.Errorf("%s: %s is not uploaded (uploads: %v)", m.Name, f, uploaded)
		}
	}
	if src := uploaded["topology.json"]; filepath.Base(filepath.Dir(src)) != "keepalived" {
		t.Errorf("%s: topology.json uploaded from %s, want ../keepalived/topology.json", m.Name, src)
	}
	if src := uploaded["notify.sh"]; filepath.Base(filepath.Dir(src)) != "keepalived" {
		t.Errorf("%s: notify.sh uploaded from %s, want ../keepalived/notify.sh", m.Name, src)
	}
}

func net4Mask(prefix int) string {
	m := ^uint32(0) << (32 - prefix)
	return fmt.Sprintf("%d.%d.%d.%d", m>>24, m>>16&0xff, m>>8&0xff, m&0xff)
}

// The Vagrantfile follows the topology rather than merely agreeing with it:
// a different lab (other subnet, names, ports, a third message server) gives
// other machines.
func TestVagrantfileFollowsTopology(t *testing.T) {
	other := []byte(`{
  "vip": "10.77.0.200", "prefix": 16, "interface": "ens8",
  "virtual_router_id": 9, "advert_int": 0.5,
  "ports": { "relay_link": 17000, "relay_admin": 19100, "msgserver_client": 17001, "msgserver_admin": 19200, "redis": 16379 },
  "hosts": [
    { "name": "edge-1", "ip": "10.77.1.1", "roles": ["relay"], "priority": 90 },
    { "name": "edge-2", "ip": "10.77.1.2", "roles": ["relay"], "priority": 80 },
    { "name": "chat-1", "ip": "10.77.2.1", "roles": ["msgserver"] },
    { "name": "chat-2", "ip": "10.77.2.2", "roles": ["msgserver"] },
    { "name": "store", "ip": "10.77.3.1", "roles": ["msgserver", "redis"] }
  ]
}`)
	topo, err := keepalived.ParseTopology(other)
	if err != nil {
		t.Fatal(err)
	}
	if err := topo.Validate(); err != nil {
		t.Fatal(err)
	}
	checkMachines(t, topo, dump(t, labCopy(t, other)))
}

func TestVagrantfileKnobs(t *testing.T) {
	dir := filepath.Join(root(t), "vagrant")
	ms := dump(t, dir, "CHATRELAY_VRRP_UNICAST=1", "CHATRELAY_BOX=example/other")
	for _, m := range ms {
		if m.labEnv(t)["LAB_VRRP_UNICAST"] != "1" || m.Box != "example/other" {
			t.Errorf("%s: CHATRELAY_VRRP_UNICAST=1 CHATRELAY_BOX=example/other gave LAB_VRRP_UNICAST=%q box %q",
				m.Name, m.labEnv(t)["LAB_VRRP_UNICAST"], m.Box)
		}
	}
}

// envFile parses a systemd EnvironmentFile of KEY=value lines.
func envFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: not KEY=value: %q", path, line)
		}
		out[k] = v
	}
	return out
}

// writeEnv runs provision/write-env.sh as provision.sh does on machine m,
// into a temporary directory, and returns the env files it wrote.
func writeEnv(t *testing.T, m machine) (relay, msgserver map[string]string) {
	t.Helper()
	etc := t.TempDir()
	env := append(os.Environ(), "LAB_ETC="+etc)
	for k, v := range m.labEnv(t) {
		env = append(env, k+"="+v)
	}
	script := filepath.Join(root(t), "vagrant", "provision", "write-env.sh")
	if out, errOut, err := run(t, etc, env, "bash", script); err != nil {
		t.Fatalf("%s: write-env.sh: %v\n%s%s", m.Name, err, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(etc, "relay.env")); err == nil {
		relay = envFile(t, filepath.Join(etc, "relay.env"))
	}
	if _, err := os.Stat(filepath.Join(etc, "msgserver.env")); err == nil {
		msgserver = envFile(t, filepath.Join(etc, "msgserver.env"))
	}
	return relay, msgserver
}

// flagsOf lists the CHATRELAY_* variables a binary reads, from its --help.
func flagsOf(t *testing.T, name string) map[string]bool {
	t.Helper()
	out, _ := exec.Command(testenv.Build(t, name), "--help").CombinedOutput()
	vars := map[string]bool{}
	for _, m := range regexp.MustCompile(`\((CHATRELAY_[A-Z_]+)\)`).FindAllStringSubmatch(string(out), -1) {
		vars[m[1]] = true
	}
	if len(vars) < 5 {
		t.Fatalf("%s --help lists %d CHATRELAY_ variables:\n%s", name, len(vars), out)
	}
	return vars
}

func TestEnvFilesMatchTopology(t *testing.T) {
	topo := loadTopology(t)
	machines := dump(t, filepath.Join(root(t), "vagrant"))
	relayFlags, msgFlags := flagsOf(t, "relay"), flagsOf(t, "msgserver")
	redis := topo.WithRole(keepalived.RoleRedis)[0]
	p := topo.Ports
	for i, h := range topo.Hosts {
		relay, msg := writeEnv(t, machines[i])
		if h.Has(keepalived.RoleRelay) != (relay != nil) || h.Has(keepalived.RoleMsgServer) != (msg != nil) {
			t.Errorf("%s (roles %v): relay.env written %v, msgserver.env written %v", h.Name, h.Roles, relay != nil, msg != nil)
		}
		if relay != nil {
			want := map[string]string{
				"CHATRELAY_ID":               h.Name,
				"CHATRELAY_LISTEN":           fmt.Sprintf(":%d", p.RelayLink),
				"CHATRELAY_ADMIN":            fmt.Sprintf(":%d", p.RelayAdmin),
				"CHATRELAY_VIP":              topo.VIP,
				"CHATRELAY_LINK_SECRET_FILE": "/etc/chatrelay/link.secret",
			}
			compareEnv(t, h.Name+" relay.env", relay, want, relayFlags)
		}
		if msg != nil {
			want := map[string]string{
				"CHATRELAY_ID":               h.Name,
				"CHATRELAY_LISTEN":           fmt.Sprintf(":%d", p.MsgServerClient),
				"CHATRELAY_ADVERTISE":        fmt.Sprintf("%s:%d", h.IP, p.MsgServerClient),
				"CHATRELAY_ADMIN":            fmt.Sprintf(":%d", p.MsgServerAdmin),
				"CHATRELAY_RELAY":            topo.RelayAddr(),
				"CHATRELAY_REDIS":            fmt.Sprintf("redis://%s:%d/0", redis.IP, p.Redis),
				"CHATRELAY_LINK_SECRET_FILE": "/etc/chatrelay/link.secret",
				"CHATRELAY_SHUTDOWN_GRACE":   "5s",
			}
			compareEnv(t, h.Name+" msgserver.env", msg, want, msgFlags)
			if msg["CHATRELAY_REDIS"] != topo.RedisURL() {
				t.Errorf("%s: CHATRELAY_REDIS %s, topology's Redis %s", h.Name, msg["CHATRELAY_REDIS"], topo.RedisURL())
			}
		}
	}
}

func compareEnv(t *testing.T, what string, got, want map[string]string, flags map[string]bool) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s=%q, want %q", what, k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: unexpected %s=%q", what, k, got[k])
		}
		if !flags[k] {
			t.Errorf("%s: %s is not a flag of the binary (its --help does not list it)", what, k)
		}
	}
}

// fwRule is one thing firewall.sh opened: TCP port from a source (empty: from
// anywhere), or VRRP from a source.
type fwRule struct {
	Proto  string // "tcp" or "vrrp"
	Port   int
	Source string
}

// firewall runs provision/firewall.sh for machine m with a firewall-cmd that
// records its arguments, and returns the rules it opened.
func firewall(t *testing.T, m machine) []fwRule {
	t.Helper()
	dir := t.TempDir()
	log := filepath.Join(dir, "calls")
	stub := "#!/bin/sh\n# records one call per line, arguments separated by tabs\n" +
		"(IFS=$(printf '\\t'); printf '%s\\n' \"$*\") >>\"$FIREWALL_LOG\"\n"
	if err := os.WriteFile(filepath.Join(dir, "firewall-cmd"), []byte(stub), 0o755); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"), "FIREWALL_LOG="+log)
	for k, v := range m.labEnv(t) {
		env = append(env, k+"="+v)
	}
	script := filepath.Join(root(t), "vagrant", "provision", "firewall.sh")
	if out, errOut, err := run(t, dir, env, "bash", script); err != nil {
		t.Fatalf("%s: firewall.sh: %v\n%s%s", m.Name, err, out, errOut)
	}
	b, _ := os.ReadFile(log)
	richPort := regexp.MustCompile(`^rule family="ipv4" source address="([^"]+)" port port="(\d+)" protocol="tcp" accept$`)
	richVRRP := regexp.MustCompile(`^rule family="ipv4" source address="([^"]+)" protocol value="vrrp" accept$`)
	var rules []fwRule
	reloaded := false
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		args := strings.Split(line, "\t")
		adds := false
		for _, a := range args {
			switch {
			case strings.HasPrefix(a, "--add-rich-rule="):
				adds = true
				r := strings.TrimPrefix(a, "--add-rich-rule=")
				if g := richPort.FindStringSubmatch(r); g != nil {
					port, _ := strconv.Atoi(g[2])
					rules = append(rules, fwRule{"tcp", port, g[1]})
				} else if g := richVRRP.FindStringSubmatch(r); g != nil {
					rules = append(rules, fwRule{"vrrp", 0, g[1]})
				} else {
					t.Errorf("%s: rich rule not understood: %q", m.Name, r)
				}
			case strings.HasPrefix(a, "--add-port="):
				adds = true
				port, proto, _ := strings.Cut(strings.TrimPrefix(a, "--add-port="), "/")
				n, _ := strconv.Atoi(port)
				rules = append(rules, fwRule{proto, n, ""})
			case a == "--reload":
				reloaded = true
			}
		}
		if adds && (!slices.Contains(args, "--permanent") || reloaded) {
			t.Errorf("%s: firewall-cmd %q: rules must be --permanent and added before --reload", m.Name, args)
		}
	}
	if !reloaded {
		t.Errorf("%s: firewall.sh never ran firewall-cmd --reload", m.Name)
	}
	return rules
}

// allows says whether rules let TCP from addr to port in.
func allows(rules []fwRule, port int, from netip.Addr) bool {
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

func TestFirewallMatchesTopology(t *testing.T) {
	topo := loadTopology(t)
	machines := dump(t, filepath.Join(root(t), "vagrant"))
	lab := netip.PrefixFrom(netip.MustParseAddr(topo.VIP), topo.Prefix).Masked()
	hostAddr := lab.Addr().Next() // the VM host: .1 on VirtualBox host-only and libvirt networks
	outside := netip.MustParseAddr("203.0.113.7")
	p := topo.Ports
	fw := map[string][]fwRule{}
	for i, h := range topo.Hosts {
		fw[h.Name] = firewall(t, machines[i])
	}
	for _, h := range topo.Hosts {
		rules := fw[h.Name]
		var vrrpFrom []string
		for _, r := range rules {
			if r.Proto == "vrrp" {
				vrrpFrom = append(vrrpFrom, r.Source)
			}
		}
		if h.Has(keepalived.RoleRelay) {
			peer, _ := topo.Peer(h.Name)
			if !slices.Equal(vrrpFrom, []string{peer.IP}) {
				t.Errorf("%s: VRRP allowed from %v, want only the peer relay %s", h.Name, vrrpFrom, peer.IP)
			}
			for _, m := range topo.WithRole(keepalived.RoleMsgServer) {
				if !allows(rules, p.RelayLink, netip.MustParseAddr(m.IP)) {
					t.Errorf("%s: message server %s cannot reach the relay link port %d", h.Name, m.Name, p.RelayLink)
				}
			}
			if allows(rules, p.RelayLink, outside) || allows(rules, p.RelayAdmin, outside) {
				t.Errorf("%s: relay ports open beyond the lab network: %v", h.Name, rules)
			}
		} else if len(vrrpFrom) > 0 {
			t.Errorf("%s: VRRP allowed on a host without the relay role", h.Name)
		}
		if h.Has(keepalived.RoleMsgServer) {
			if !allows(rules, p.MsgServerClient, outside) {
				t.Errorf("%s: the client port %d is not open to clients", h.Name, p.MsgServerClient)
			}
			if allows(rules, p.MsgServerAdmin, outside) {
				t.Errorf("%s: the admin port %d is open beyond the lab network", h.Name, p.MsgServerAdmin)
			}
		}
		if h.Has(keepalived.RoleRedis) {
			for _, c := range topo.Hosts { // message servers, and relay checks (--redis)
				if !allows(rules, p.Redis, netip.MustParseAddr(c.IP)) {
					t.Errorf("%s: %s cannot reach Redis port %d", h.Name, c.Name, p.Redis)
				}
			}
			if allows(rules, p.Redis, outside) {
				t.Errorf("%s: Redis is open beyond the lab network", h.Name)
			}
		} else if allows(rules, p.Redis, hostAddr) {
			t.Errorf("%s: Redis port open on a host without Redis", h.Name)
		}
	}
	// Prometheus on the VM host scrapes every target of prometheus.yml.
	for _, tg := range promTargets(t) {
		h := hostWithIP(topo, tg.addr.Addr().String())
		if h == nil {
			t.Errorf("prometheus.yml target %s is no topology host", tg.addr)
			continue
		}
		if !allows(fw[h.Name], int(tg.addr.Port()), hostAddr) {
			t.Errorf("prometheus.yml target %s (%s): firewalld on %s does not let the host %s in", tg.addr, tg.job, h.Name, hostAddr)
		}
	}
}

func hostWithIP(topo *keepalived.Topology, ip string) *keepalived.Host {
	for i := range topo.Hosts {
		if topo.Hosts[i].IP == ip {
			return &topo.Hosts[i]
		}
	}
	return nil
}

type promTarget struct {
	job  string
	addr netip.AddrPort
	host string // the target's "host" label
}

// promTargets reads the static targets of health/prometheus/prometheus.yml
// (job_name, targets, and the host label after each).
func promTargets(t *testing.T) []promTarget {
	t.Helper()
	f, err := os.Open(filepath.Join(root(t), "health", "prometheus", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	jobRe := regexp.MustCompile(`^\s*-\s*job_name:\s*"?([\w-]+)"?`)
	targetsRe := regexp.MustCompile(`^\s*-?\s*targets:\s*\[(.*)\]`)
	hostRe := regexp.MustCompile(`^\s*host:\s*"?([\w.-]+)"?`)
	var out []promTarget
	var job string
	var pending []int // targets of the current static config, waiting for their host label
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		if g := jobRe.FindStringSubmatch(line); g != nil {
			job, pending = g[1], nil
		} else if g := targetsRe.FindStringSubmatch(line); g != nil {
			pending = nil
			for _, s := range strings.Split(g[1], ",") {
				ap, err := netip.ParseAddrPort(strings.Trim(strings.TrimSpace(s), `"'`))
				if err != nil {
					t.Fatalf("prometheus.yml: target %q: %v", s, err)
				}
				pending = append(pending, len(out))
				out = append(out, promTarget{job: job, addr: ap})
			}
		} else if g := hostRe.FindStringSubmatch(line); g != nil {
			for _, i := range pending {
				out[i].host = g[1]
			}
			pending = nil
		}
	}
	if len(out) == 0 {
		t.Fatal("no targets found in prometheus.yml")
	}
	return out
}

// prometheus.yml scrapes exactly the VMs: each relay on its address and the
// relay admin port, each message server on its address and the message
// server admin port, labelled with the host's name; and the admin ports
// listen on every address (so on that one) per the env files.
func TestPrometheusTargetsAreTheVMs(t *testing.T) {
	topo := loadTopology(t)
	var want, got []string
	for _, h := range topo.Hosts {
		if h.Has(keepalived.RoleRelay) {
			want = append(want, fmt.Sprintf("relay %s:%d %s", h.IP, topo.Ports.RelayAdmin, h.Name))
		}
		if h.Has(keepalived.RoleMsgServer) {
			want = append(want, fmt.Sprintf("msgserver %s:%d %s", h.IP, topo.Ports.MsgServerAdmin, h.Name))
		}
	}
	for _, tg := range promTargets(t) {
		got = append(got, fmt.Sprintf("%s %s %s", tg.job, tg.addr, tg.host))
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("prometheus.yml targets:\n  %s\nwant (from the topology):\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	machines := dump(t, filepath.Join(root(t), "vagrant"))
	for i, h := range topo.Hosts {
		relay, msg := writeEnv(t, machines[i])
		for what, admin := range map[string]string{"relay": relay["CHATRELAY_ADMIN"], "msgserver": msg["CHATRELAY_ADMIN"]} {
			if admin != "" && !strings.HasPrefix(admin, ":") {
				t.Errorf("%s: %s admin address %q does not listen on %s, where Prometheus scrapes it", h.Name, what, admin, h.IP)
			}
		}
	}
}

// unitFile reads vagrant/systemd/NAME as key -> values.
func unitFile(t *testing.T, name string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root(t), "vagrant", "systemd", name))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, _ := strings.Cut(line, "=")
		out[k] = append(out[k], v)
	}
	return out
}

func TestUnitSettings(t *testing.T) {
	common := map[string]string{
		"Type": "simple", "User": "chatrelay", "Group": "chatrelay", "Restart": "on-failure", "RestartSec": "1",
		"LimitNOFILE": "262144", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
		"PrivateTmp": "yes", "WantedBy": "multi-user.target",
	}
	for name, own := range map[string]map[string]string{
		"chatrelay-relay.service": {
			"EnvironmentFile": "/etc/chatrelay/relay.env", "ExecStart": "/usr/local/bin/relay",
		},
		"chatrelay-msgserver.service": {
			"EnvironmentFile": "/etc/chatrelay/msgserver.env", "ExecStart": "/usr/local/bin/msgserver",
			"KillSignal": "SIGTERM",
		},
	} {
		u := unitFile(t, name)
		for k, v := range common {
			if !slices.Equal(u[k], []string{v}) {
				t.Errorf("%s: %s=%v, want %s", name, k, u[k], v)
			}
		}
		for k, v := range own {
			if !slices.Equal(u[k], []string{v}) {
				t.Errorf("%s: %s=%v, want %s", name, k, u[k], v)
			}
		}
	}
	// The message server drains for --shutdown-grace on SIGTERM: systemd must
	// wait longer than that before its SIGKILL.
	u := unitFile(t, "chatrelay-msgserver.service")
	stop, err := time.ParseDuration(strings.Join(u["TimeoutStopSec"], "") + "s")
	if err != nil {
		t.Fatalf("TimeoutStopSec=%v: %v", u["TimeoutStopSec"], err)
	}
	machines := dump(t, filepath.Join(root(t), "vagrant"))
	for _, m := range machines {
		if _, msg := writeEnv(t, m); msg != nil {
			grace, err := time.ParseDuration(msg["CHATRELAY_SHUTDOWN_GRACE"])
			if err != nil || stop <= grace+time.Second {
				t.Errorf("%s: TimeoutStopSec %s must exceed CHATRELAY_SHUTDOWN_GRACE %q (+1 s to flush and exit)", m.Name, stop, msg["CHATRELAY_SHUTDOWN_GRACE"])
			}
		}
	}
}

// trackCommands returns the shell commands of the relay unit's
// ExecStartPost= and ExecStopPost= (after "+/bin/sh -c").
func trackCommands(t *testing.T) (start, stop string) {
	t.Helper()
	u := unitFile(t, "chatrelay-relay.service")
	get := func(key string) string {
		if len(u[key]) != 1 {
			t.Fatalf("chatrelay-relay.service: %s=%v, want one", key, u[key])
		}
		v := u[key][0]
		// "+": as root and outside the sandbox (ProtectSystem=strict makes
		// /run read-only, and User=chatrelay cannot write root's folder).
		const prefix = "+/bin/sh -c '"
		if !strings.HasPrefix(v, prefix) || !strings.HasSuffix(v, "'") {
			t.Fatalf("chatrelay-relay.service: %s=%s, want %s...'", key, v, prefix)
		}
		return strings.TrimSuffix(strings.TrimPrefix(v, prefix), "'")
	}
	return get("ExecStartPost"), get("ExecStopPost")
}

// The relay unit's ExecStartPost and ExecStopPost write 0 and 1 to the track
// file the rendered keepalived.conf watches (run here in a temporary folder).
func TestRelayUnitWritesTrackFile(t *testing.T) {
	start, stop := trackCommands(t)
	track := keepalived.DefaultTrackFile
	dir := t.TempDir()
	tmpTrack := filepath.Join(dir, filepath.Base(track))
	for _, c := range []struct {
		cmd, want string
	}{{start, "0"}, {stop, "1"}, {start, "0"}} {
		if !strings.Contains(c.cmd, track) {
			t.Fatalf("%q does not write %s, the track file keepalived.conf watches", c.cmd, track)
		}
		cmd := strings.ReplaceAll(c.cmd, filepath.Dir(track)+"/", dir+"/")
		if out, err := exec.Command("/bin/sh", "-c", cmd).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
		b, err := os.ReadFile(tmpTrack)
		if err != nil || strings.TrimSpace(string(b)) != c.want {
			t.Fatalf("after %q the track file holds %q (%v), want %s", c.cmd, b, err, c.want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temporary files left beside the track file: %v", entries)
	}
}

// unitsForVerify copies the units to a temporary folder with the binaries'
// paths pointing at freshly built ones (systemd-analyze verify checks that
// each command exists and is executable).
func unitsForVerify(t *testing.T) []string {
	t.Helper()
	dir := t.TempDir()
	var out []string
	for _, name := range []string{"chatrelay-relay.service", "chatrelay-msgserver.service"} {
		b, err := os.ReadFile(filepath.Join(root(t), "vagrant", "systemd", name))
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for _, bin := range []string{"relay", "msgserver"} {
			s = strings.ReplaceAll(s, "ExecStart=/usr/local/bin/"+bin+"\n", "ExecStart="+testenv.Build(t, bin)+"\n")
		}
		if strings.Contains(s, "ExecStart=/usr/local/bin/") {
			t.Fatalf("%s: ExecStart not rewritten:\n%s", name, s)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// systemd-analyze verify must pass and print nothing: it reports unknown
// keys and unparsable values only as warnings, with exit status 0.
func TestUnitsVerify(t *testing.T) {
	sa := testenv.Need(t, "systemd-analyze", "systemd")
	units := unitsForVerify(t)
	out, errOut, err := run(t, filepath.Dir(units[0]), os.Environ(), sa, append([]string{"verify", "--man=no"}, units...)...)
	if err != nil || strings.TrimSpace(out+errOut) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s%s", err, out, errOut)
	}
	t.Run("catches a misspelt key", func(t *testing.T) {
		b, _ := os.ReadFile(units[0])
		bad := filepath.Join(t.TempDir(), "bad.service")
		if err := os.WriteFile(bad, bytes.Replace(b, []byte("Restart="), []byte("Restrt="), 1), 0o644); err != nil {
			t.Fatal(err)
		}
		out, errOut, _ := run(t, filepath.Dir(bad), os.Environ(), sa, "verify", "--man=no", bad)
		if !strings.Contains(out+errOut, "Restrt") {
			t.Fatalf("systemd-analyze verify said nothing about Restrt=: %q", out+errOut)
		}
	})
}

// The hardening stays: systemd-analyze security rates each unit (0 best, 10
// worst); 2.5 is well inside its "OK" band (both are 1.7 when written).
func TestUnitsSecurityExposure(t *testing.T) {
	sa := testenv.Need(t, "systemd-analyze", "systemd")
	for _, u := range unitsForVerify(t) {
		out, errOut, err := run(t, filepath.Dir(u), os.Environ(), sa, "security", "--offline=true", "--threshold=25", "--no-pager", u)
		if err != nil {
			t.Errorf("systemd-analyze security %s: exposure above 2.5 or error: %v\n%s%s", filepath.Base(u), err, lastLines(out, 3), errOut)
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// provisionText is provision.sh, for the checks that compare its SELinux and
// system set-up with the paths the renderer and the units use.
func provisionText(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root(t), "vagrant", "provision", "provision.sh"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fcontextRule returns the regex provision.sh gives SELinux type typ.
func fcontextRule(t *testing.T, text, typ string) *regexp.Regexp {
	t.Helper()
	g := regexp.MustCompile(`(?m)^\s*fcontext ` + typ + ` '([^']+)'`).FindStringSubmatch(text)
	if g == nil {
		t.Fatalf("provision.sh sets no file context %s", typ)
	}
	return regexp.MustCompile("^(?:" + g[1] + ")$") // semanage regexes match whole paths
}

// render-keepalived.sh renders, for each relay VM, what keepalived.Render
// gives for the VM's paths; and those paths are the ones provision.sh
// installs, labels for SELinux and creates, and the relay unit writes.
func TestKeepalivedConfForVMs(t *testing.T) {
	topo := loadTopology(t)
	machines := dump(t, filepath.Join(root(t), "vagrant"))
	relayBin := testenv.Build(t, "relay")
	script := filepath.Join(root(t), "vagrant", "provision", "render-keepalived.sh")
	text := provisionText(t)
	scripts := fcontextRule(t, text, "keepalived_unconfined_script_exec_t")
	runDir := fcontextRule(t, text, "keepalived_var_run_t")
	checked := 0
	for i, h := range topo.Hosts {
		if !h.Has(keepalived.RoleRelay) {
			continue
		}
		for _, c := range []struct {
			name    string
			nic     string
			unicast string
		}{{"multicast", topo.Interface, "0"}, {"other NIC", "enp0s8", "0"}, {"unicast", topo.Interface, "1"}} {
			t.Run(h.Name+" "+c.name, func(t *testing.T) {
				out := filepath.Join(t.TempDir(), "keepalived.conf")
				env := append(os.Environ(), "LAB_NIC="+c.nic, "LAB_RELAY="+relayBin, "LAB_KEEPALIVED_CONF="+out,
					"LAB_TOPOLOGY="+filepath.Join(root(t), "keepalived", "topology.json"))
				for k, v := range machines[i].labEnv(t) {
					env = append(env, k+"="+v)
				}
				env = append(env, "LAB_VRRP_UNICAST="+c.unicast)
				if o, e, err := run(t, filepath.Dir(out), env, "bash", script); err != nil {
					t.Fatalf("render-keepalived.sh: %v\n%s%s", err, o, e)
				}
				got, err := os.ReadFile(out)
				if err != nil {
					t.Fatal(err)
				}
				opts := keepalived.Options{
					RelayBin:     "/usr/local/libexec/chatrelay/relay",
					NotifyScript: "/usr/local/libexec/chatrelay/notify.sh",
					RedisURL:     topo.RedisURL(),
					Unicast:      c.unicast == "1",
				}
				if c.nic != topo.Interface {
					opts.Interface = c.nic
				}
				want, err := keepalived.Render(topo, h.Name, opts)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("render-keepalived.sh wrote:\n%s\nwant keepalived.Render with %+v:\n%s", got, opts, want)
				}
				for _, s := range []string{"interface " + c.nic + "\n", "dev " + c.nic + "\n", `file "` + keepalived.DefaultTrackFile + `"`,
					"script_user " + keepalived.DefaultScriptUser + "\n", "--redis " + topo.RedisURL()} {
					if !bytes.Contains(got, []byte(s)) {
						t.Errorf("rendered config lacks %q", s)
					}
				}
				if bytes.Contains(got, []byte("unicast_peer")) != (c.unicast == "1") {
					t.Errorf("LAB_VRRP_UNICAST=%s: unicast_peer present: %v", c.unicast, bytes.Contains(got, []byte("unicast_peer")))
				}
				checked++
			})
		}
	}
	if checked != 2*3 {
		t.Fatalf("checked %d renders, want 6 (two relays, three variants)", checked)
	}
	// What keepalived executes is labelled so SELinux lets it run unconfined,
	// and installed by provision.sh; the track file's folder is keepalived's
	// and exists at boot.
	for _, p := range []string{"/usr/local/libexec/chatrelay/relay", keepalived.DefaultNotifyScript} {
		if !scripts.MatchString(p) {
			t.Errorf("%s is not under the keepalived_unconfined_script_exec_t rule %s", p, scripts)
		}
		if !strings.Contains(text, " "+p+"\n") {
			t.Errorf("provision.sh does not install %s", p)
		}
	}
	if !runDir.MatchString(keepalived.DefaultTrackFile) || !runDir.MatchString(filepath.Dir(keepalived.DefaultTrackFile)) {
		t.Errorf("%s (and its folder) are not under the keepalived_var_run_t rule %s", keepalived.DefaultTrackFile, runDir)
	}
	if !strings.Contains(text, "'d "+filepath.Dir(keepalived.DefaultTrackFile)+" 0755 root root -'") {
		t.Errorf("provision.sh writes no tmpfiles.d line for %s", filepath.Dir(keepalived.DefaultTrackFile))
	}
	if !strings.Contains(text, "--shell /usr/sbin/nologin "+keepalived.DefaultScriptUser+"\n") {
		t.Errorf("provision.sh does not create the script user %s", keepalived.DefaultScriptUser)
	}
}

// provision.sh stops at once, with the command to run, when the binaries or
// the secret were not built. It runs here with a PATH of four tools, so
// nothing past its input check could do anything.
func TestProvisionStopsWithoutBuild(t *testing.T) {
	tools := t.TempDir()
	for _, tool := range []string{"head", "od", "tr", "rm"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Skipf("%s: %v", tool, err)
		}
		if err := os.Symlink(p, filepath.Join(tools, tool)); err != nil {
			t.Fatal(err)
		}
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal(err)
	}
	machines := dump(t, filepath.Join(root(t), "vagrant"))
	script := filepath.Join(root(t), "vagrant", "provision", "provision.sh")
	for _, c := range []struct {
		name  string
		build map[string]string
		want  []string
	}{
		{"nothing built", nil, []string{"vagrant/build/relay vagrant/build/msgserver vagrant/build/link.secret not found",
			"Run scripts/build-vagrant.sh", "vagrant provision " + machines[0].Name}},
		{"no secret", map[string]string{"relay": "\x7fELF", "msgserver": "\x7fELF"},
			[]string{"vagrant/build/link.secret not found", "Run scripts/build-vagrant.sh"}},
		{"not a Linux binary", map[string]string{"relay": "MZ\x90\x00", "msgserver": "\x7fELF", "link.secret": "0123456789abcdef0123"},
			[]string{"vagrant/build/relay is not a Linux binary", "scripts/build-vagrant.sh"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			stage := filepath.Join(t.TempDir(), "stage")
			if err := os.MkdirAll(filepath.Join(stage, "build"), 0o700); err != nil {
				t.Fatal(err)
			}
			for f, content := range c.build {
				if err := os.WriteFile(filepath.Join(stage, "build", f), []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			env := []string{"PATH=" + tools}
			for k, v := range machines[0].labEnv(t) {
				env = append(env, k+"="+v)
			}
			env = append(env, "LAB_STAGE="+stage)
			out, errOut, err := run(t, stage, env, bash, script)
			if code := exitCode(err); code != 1 {
				t.Errorf("exit status %d (%v), want 1", code, err)
			}
			for _, w := range c.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s%s", w, out, errOut)
				}
			}
			if _, err := os.Stat(stage); !os.IsNotExist(err) {
				t.Errorf("the stage folder (it may hold the secret) is left behind: %v", err)
			}
		})
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// shellScripts are every shell script of the lab: vagrant/**.sh and
// scripts/build-vagrant.sh.
func shellScripts(t *testing.T) []string {
	t.Helper()
	r := root(t)
	var out []string
	err := filepath.WalkDir(filepath.Join(r, "vagrant"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".vagrant" || d.Name() == "build") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".sh") {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, filepath.Join(r, "scripts", "build-vagrant.sh"))
	if len(out) < 6 {
		t.Fatalf("found only %v", out)
	}
	return out
}

func TestShellScripts(t *testing.T) {
	sc := testenv.Need(t, "shellcheck", "shellcheck")
	for _, s := range shellScripts(t) {
		rel, _ := filepath.Rel(root(t), s)
		if out, err := exec.Command(sc, "--external-sources", s).CombinedOutput(); err != nil {
			t.Errorf("shellcheck %s: %v\n%s", rel, err, out)
		}
		b, _ := os.ReadFile(s)
		if !bytes.HasPrefix(b, []byte("#!/usr/bin/env bash\n")) || !bytes.Contains(b, []byte("\nset -euo pipefail\n")) {
			t.Errorf("%s: want #!/usr/bin/env bash and set -euo pipefail", rel)
		}
		if fi, err := os.Stat(s); err != nil || fi.Mode().Perm()&0o111 != 0o111 {
			t.Errorf("%s is not executable", rel)
		}
	}
	t.Run("catches a mistake", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad.sh")
		if err := os.WriteFile(bad, []byte("#!/usr/bin/env bash\nset -euo pipefail\nrm -rf $1/*\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(sc, bad).CombinedOutput(); err == nil {
			t.Fatalf("shellcheck passed an unquoted rm -rf $1/*:\n%s", out)
		}
	})
}

// scripts/build-vagrant.sh builds both binaries for linux/amd64, statically,
// and a link secret it keeps across runs.
func TestBuildVagrant(t *testing.T) {
	testenv.Need(t, "go", "golang (Go on PATH)")
	out := filepath.Join(t.TempDir(), "build")
	script := filepath.Join(root(t), "scripts", "build-vagrant.sh")
	o, e, err := run(t, root(t), os.Environ(), script, "--out", out)
	if err != nil {
		t.Fatalf("build-vagrant.sh --out %s: %v\n%s%s", out, err, o, e)
	}
	for _, bin := range []string{"relay", "msgserver"} {
		p := filepath.Join(out, bin)
		f, err := elf.Open(p)
		if err != nil {
			t.Fatalf("%s: not ELF: %v", bin, err)
		}
		if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
			t.Errorf("%s: ELF class %v machine %v type %v, want 64-bit x86-64 executable", bin, f.Class, f.Machine, f.Type)
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				t.Errorf("%s is dynamically linked (has an interpreter); the VMs need a static binary (CGO_ENABLED=0)", bin)
			}
		}
		f.Close()
		info, err := buildinfo.ReadFile(p)
		if err != nil {
			t.Fatalf("%s: %v", bin, err)
		}
		settings := map[string]string{}
		for _, s := range info.Settings {
			settings[s.Key] = s.Value
		}
		if settings["GOOS"] != "linux" || settings["GOARCH"] != "amd64" || settings["CGO_ENABLED"] != "0" {
			t.Errorf("%s built with GOOS=%s GOARCH=%s CGO_ENABLED=%s", bin, settings["GOOS"], settings["GOARCH"], settings["CGO_ENABLED"])
		}
		if info.Path != "github.com/chatrelay/chatrelay/cmd/"+bin {
			t.Errorf("%s is %s", bin, info.Path)
		}
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o111 == 0 {
			t.Errorf("%s is not executable", bin)
		}
	}
	secret := filepath.Join(out, "link.secret")
	fi, err := os.Stat(secret)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("link.secret: %v, mode %v, want 0600", err, fi)
	}
	first, _ := os.ReadFile(secret)
	if !regexp.MustCompile(`^[0-9a-f]{64}\n$`).Match(first) {
		t.Errorf("link.secret %q: want 64 hex characters", first)
	}
	if o, e, err := run(t, root(t), os.Environ(), script, "--out", out); err != nil || !strings.Contains(o, "kept") {
		t.Fatalf("second build-vagrant.sh: %v\n%s%s", err, o, e)
	}
	if again, _ := os.ReadFile(secret); !bytes.Equal(again, first) {
		t.Error("a second build changed the link secret (running VMs would lose their links)")
	}
	if entries, _ := os.ReadDir(out); len(entries) != 3 {
		t.Errorf("build folder holds %v, want relay, msgserver, link.secret", entries)
	}
	if _, _, err := run(t, root(t), os.Environ(), script, "--bogus"); exitCode(err) != 2 {
		t.Errorf("build-vagrant.sh --bogus: %v, want exit status 2", err)
	}
}

// The secret and Vagrant's state are never committed.
func TestGitIgnoresBuildAndState(t *testing.T) {
	git := testenv.Need(t, "git", "git")
	r := root(t)
	if _, err := os.Stat(filepath.Join(r, ".git")); err != nil {
		t.Skip("not a git checkout")
	}
	for _, p := range []string{"vagrant/build/link.secret", "vagrant/build/relay", "vagrant/.vagrant/machines/relay-a/id"} {
		if out, err := exec.Command(git, "-C", r, "check-ignore", "--no-index", "-q", p).CombinedOutput(); err != nil {
			t.Errorf("git does not ignore %s: %v %s", p, err, out)
		}
	}
	if out, err := exec.Command(git, "-C", r, "check-ignore", "--no-index", "-q", "vagrant/Vagrantfile").CombinedOutput(); err == nil {
		t.Errorf("git ignores vagrant/Vagrantfile %s", out)
	}
}
