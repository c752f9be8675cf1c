// Package vagrant_test checks the Vagrant lab without booting a VM (this
// machine has no VirtualBox or KVM). What the renderer gives is compared with
// golden files (render_test.go); here every real tool runs once on the
// rendered outputs and the lab's own files: Vagrant loads and validates the
// Vagrantfile, shellcheck reads every script, systemd-analyze the units, the
// relay binary renders as the provisioner runs it, and
// scripts/build-vagrant.sh builds linux/amd64 binaries.
//
// Tools: vagrant (which brings ruby), shellcheck, systemd-analyze, git, go.
// Missing ones fail the tests in CI and skip them elsewhere.
package vagrant_test

import (
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
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/keepalived"
	"github.com/chatrelay/chatrelay/testenv"
	"github.com/chatrelay/chatrelay/vagrant"
)

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

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
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

// labCopy copies the lab's files (the Vagrantfile and provision/) to a
// temporary tree, with topology as keepalived/topology.json and a stand-in
// vagrant/build/ (package, secret, the lab's CA and every host's
// certificates), and returns the
// copy's vagrant folder: what Vagrant loads there does not depend on whether
// scripts/build-vagrant.sh has run in this checkout.
func labCopy(t *testing.T, topology string) string {
	t.Helper()
	r := root(t)
	dst := t.TempDir()
	copyFile(t, topology, filepath.Join(dst, "keepalived", "topology.json"))
	defer func() {
		// The Vagrantfile's version requirement, relaxed for an older
		// installed Vagrant (relaxVersion).
		vf := filepath.Join(dst, "vagrant", "Vagrantfile")
		b, err := os.ReadFile(vf)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vf, relaxVersion(t, b, installedVagrant(t, needVagrant(t))), 0o644); err != nil {
			t.Fatal(err)
		}
	}()
	for _, glob := range []string{"vagrant/Vagrantfile", "vagrant/provision/*.sh"} {
		files, _ := filepath.Glob(filepath.Join(r, glob))
		for _, f := range files {
			rel, _ := filepath.Rel(r, f)
			copyFile(t, f, filepath.Join(dst, rel))
		}
	}
	if err := os.Mkdir(filepath.Join(dst, "vagrant", "build"), 0o755); err != nil {
		t.Fatal(err)
	}
	standIns := []string{"chatrelay.x86_64.rpm", "link.secret", "redis.password", "pki/ca.pem", "pki/ca-key.pem"}
	topo, err := keepalived.LoadTopology(topology)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range keepalived.Certs(topo) {
		standIns = append(standIns, "pki/"+c.Host+"/"+c.Name+".pem", "pki/"+c.Host+"/"+c.Name+"-key.pem")
	}
	for _, f := range standIns {
		p := filepath.Join(dst, "vagrant", "build", f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("stand-in\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dst, "vagrant")
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, fi.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
}

func TestVagrantValidate(t *testing.T) {
	bin := needVagrant(t)
	// --ignore-provider: validate everything but the provider blocks, which
	// need VirtualBox or vagrant-libvirt installed (the machines' golden
	// file has those settings, as Vagrant loads them).
	// On a copy, whose version requirement accepts the installed Vagrant
	// (TestVagrantRequiresVersion checks the real one).
	out, errOut, err := run(t, labCopy(t, labs(t)[0].topology), vagrantEnv(t), bin, "validate", "--ignore-provider")
	if err != nil || !strings.Contains(out, "Vagrantfile validated successfully") {
		t.Fatalf("vagrant validate --ignore-provider: %v\n%s%s", err, out, errOut)
	}
	for _, h := range labs(t)[0].load(t).Hosts {
		if !strings.Contains(out, "==> "+h.Name+":") {
			t.Errorf("vagrant validate did not validate machine %s:\n%s", h.Name, out)
		}
	}

	// The validation is worth something only if it rejects a broken
	// Vagrantfile: one with a misspelt setting and a missing script.
	dir := labCopy(t, labs(t)[0].topology)
	vf := filepath.Join(dir, "Vagrantfile")
	b, err := os.ReadFile(vf)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ from, to string }{
		{"vm.vm.hostname = name", "vm.vm.hostnme = name"},
		{`path: "provision/provision.sh"`, `path: "provision/nope.sh"`},
	} {
		if !bytes.Contains(b, []byte(c.from)) {
			t.Fatalf("Vagrantfile has no %q to break", c.from)
		}
		b = bytes.Replace(b, []byte(c.from), []byte(c.to), 1)
	}
	if err := os.WriteFile(vf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, err = run(t, dir, vagrantEnv(t), bin, "validate", "--ignore-provider")
	if err == nil || !strings.Contains(out+errOut, "hostnme") || !strings.Contains(out+errOut, "nope.sh") {
		t.Fatalf("vagrant validate did not reject both mistakes (%v):\n%s%s", err, out, errOut)
	}
}

// machine is the part of testdata/dump-vagrantfile.rb's output the targeted
// checks read; the golden file has all of it.
type machine struct {
	Name     string `json:"name"`
	Hostname string `json:"hostname"`
	Networks []struct {
		Type    string         `json:"type"`
		Options map[string]any `json:"options"`
	} `json:"networks"`
	Provisioners []struct {
		Path        string            `json:"path"`
		Env         map[string]string `json:"env"`
		Source      string            `json:"source"`
		Destination string            `json:"destination"`
	} `json:"provisioners"`
}

// labEnv is the environment the main provisioner (provision.sh) gets.
func (m machine) labEnv(t *testing.T) map[string]string {
	t.Helper()
	for _, p := range m.Provisioners {
		if p.Path == "provision/provision.sh" {
			return p.Env
		}
	}
	t.Fatalf("%s: no provisioner runs provision/provision.sh", m.Name)
	return nil
}

func parseMachines(t *testing.T, b []byte) []machine {
	t.Helper()
	var d struct {
		Machines []machine `json:"machines"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("machines: %v\n%s", err, b)
	}
	return d.Machines
}

// The machines, as Vagrant itself loads them from the Vagrantfile
// (testdata/dump-vagrantfile.rb), are testdata/<lab>/machines.json.golden:
// for the shipped topology, and for the other one with the Vagrantfile's
// knobs set. Both follow their topology: one VM per host, in order, with
// its name, address and roles.
func TestMachines(t *testing.T) {
	needVagrant(t)
	script := filepath.Join(root(t), "vagrant", "testdata", "dump-vagrantfile.rb")
	for _, l := range labs(t) {
		t.Run(l.name, func(t *testing.T) {
			var knobs []string
			if l.name != "lab" {
				knobs = []string{"CHATRELAY_VRRP_UNICAST=1", "CHATRELAY_BOX=example/other"}
			}
			dir := labCopy(t, l.topology)
			out, errOut, err := run(t, dir, vagrantEnv(t, knobs...), "ruby", script)
			if err != nil {
				t.Fatalf("dump-vagrantfile.rb: %v\n%s%s", err, out, errOut)
			}
			// Re-indented by Go: Ruby's JSON versions lay out empty arrays differently.
			var buf bytes.Buffer
			if err := json.Indent(&buf, []byte(out), "", "  "); err != nil {
				t.Fatalf("dump output: %v\n%s", err, out)
			}
			buf.WriteByte('\n')
			b := buf.Bytes()
			golden(t, filepath.Join("testdata", l.name, "machines.json.golden"), b)

			topo := l.load(t)
			machines := parseMachines(t, b)
			if len(machines) != len(topo.Hosts) {
				t.Fatalf("%d machines, want one per topology host (%d)", len(machines), len(topo.Hosts))
			}
			for i, h := range topo.Hosts {
				m := machines[i]
				env := m.labEnv(t)
				var ips []any
				for _, n := range m.Networks {
					if n.Type == "private_network" {
						ips = append(ips, n.Options["ip"])
					}
				}
				if m.Name != h.Name || m.Hostname != h.Name || !slices.Equal(ips, []any{h.IP}) ||
					env["LAB_HOST"] != h.Name || env["LAB_IP"] != h.IP || env["LAB_ROLES"] != strings.Join(h.Roles, " ") {
					t.Errorf("machine %d: %s (hostname %s, private networks %v, env %v); want host %+v", i, m.Name, m.Hostname, ips, env, h)
				}
				// Each VM is sent the CA's certificate and its own TLS
				// files, never the CA's key or another host's.
				var pkiUploads []string
				for _, p := range m.Provisioners {
					if strings.Contains(p.Source, "pki/") {
						pkiUploads = append(pkiUploads, p.Source+" "+p.Destination)
					}
				}
				wantPKI := []string{"build/pki/ca.pem /tmp/chatrelay-provision/pki/ca.pem"}
				for _, c := range keepalived.Certs(topo) {
					if c.Host == h.Name {
						for _, f := range []string{c.Name + ".pem", c.Name + "-key.pem"} {
							wantPKI = append(wantPKI, "build/pki/"+h.Name+"/"+f+" /tmp/chatrelay-provision/pki/host/"+f)
						}
					}
				}
				slices.Sort(pkiUploads)
				slices.Sort(wantPKI)
				if !slices.Equal(pkiUploads, wantPKI) {
					t.Errorf("%s: TLS uploads\n  %s\nwant\n  %s", m.Name, strings.Join(pkiUploads, "\n  "), strings.Join(wantPKI, "\n  "))
				}
				// VirtualBox >= 6.1.28 allows host-only networks in 192.168.56.0/21 only.
				if ip, _ := netip.ParseAddr(h.IP); l.name == "lab" && !netip.MustParsePrefix("192.168.56.0/21").Contains(ip) {
					t.Errorf("%s: %v is outside VirtualBox's default host-only range 192.168.56.0/21", m.Name, ip)
				}
			}
		})
	}
}

// rpmMagic is the lead an RPM file starts with.
const rpmMagic = "\xed\xab\xee\xdb"

// provision.sh stops at once, with the command to run, when the package or
// the secret were not built. It runs here with a PATH of four tools, so
// nothing past its input check could do anything, and with the environment
// the Vagrantfile gives the first machine (its golden file).
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
	b, err := os.ReadFile(filepath.Join("testdata", "lab", "machines.json.golden"))
	if err != nil {
		t.Fatal(err)
	}
	m := parseMachines(t, b)[0]
	script := filepath.Join(root(t), "vagrant", "provision", "provision.sh")
	for _, c := range []struct {
		name  string
		build map[string]string
		want  []string
	}{
		{"nothing built", nil, []string{"vagrant/build/chatrelay.x86_64.rpm vagrant/build/link.secret vagrant/build/redis.password not found",
			"Run scripts/build-vagrant.sh", "vagrant provision " + m.Name}},
		{"no secret", map[string]string{"chatrelay.x86_64.rpm": rpmMagic},
			[]string{"vagrant/build/link.secret vagrant/build/redis.password not found", "Run scripts/build-vagrant.sh"}},
		{"not an RPM", map[string]string{"chatrelay.x86_64.rpm": "\x7fELF", "link.secret": "0123456789abcdef0123", "redis.password": "0123456789abcdef0123"},
			[]string{"vagrant/build/chatrelay.x86_64.rpm is not an RPM", "scripts/build-vagrant.sh"}},
		{"no certificates", map[string]string{"chatrelay.x86_64.rpm": rpmMagic, "link.secret": "0123456789abcdef0123", "redis.password": "0123456789abcdef0123",
			"../topology.json": "{}", "../provision/render.sh": "#"},
			[]string{"vagrant/build/pki/ca.pem", "vagrant/build/pki/" + m.Name + "/relay.pem", "vagrant/build/pki/" + m.Name + "/check-key.pem",
				"certificates are made on the host", "Run scripts/build-vagrant.sh", "vagrant provision " + m.Name}},
	} {
		t.Run(c.name, func(t *testing.T) {
			stage := filepath.Join(t.TempDir(), "stage")
			if err := os.MkdirAll(filepath.Join(stage, "build"), 0o700); err != nil {
				t.Fatal(err)
			}
			for f, content := range c.build {
				p := filepath.Join(stage, "build", f) // ../ for the stage's other inputs
				if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			env := []string{"PATH=" + tools}
			for k, v := range m.labEnv(t) {
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

// provision/render.sh, as provision.sh runs it on a VM, writes what
// vagrant.RenderHost gives (with the VM's NIC and advert mode), through
// `relay render-lab`; and the command refuses mistakes with exit status 2.
func TestRenderOnVM(t *testing.T) {
	relay := testenv.Build(t, "relay")
	script := filepath.Join(root(t), "vagrant", "provision", "render.sh")
	for _, c := range []struct {
		lab  lab
		host string
		env  []string
	}{
		{labs(t)[0], "msg-1", nil},
		{labs(t)[1], "edge-2", []string{"LAB_NIC=enp0s8", "LAB_VRRP_UNICAST=1"}},
	} {
		out := filepath.Join(t.TempDir(), "rendered")
		env := append(os.Environ(), "LAB_HOST="+c.host, "LAB_TOPOLOGY="+c.lab.topology, "LAB_RELAY="+relay)
		if o, e, err := run(t, ".", append(env, c.env...), "bash", script, out); err != nil {
			t.Fatalf("render.sh %s: %v\n%s%s", c.host, err, o, e)
		}
		files, err := vagrant.RenderHost(c.lab.load(t), c.host, c.lab.opts)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, f := range files {
			names = append(names, f.Name)
			if got, err := os.ReadFile(filepath.Join(out, f.Name)); err != nil || !bytes.Equal(got, f.Data) {
				t.Errorf("render.sh %s: %s differs from RenderHost (%v):\n%s", c.host, f.Name, err, got)
			}
		}
		if entries, _ := os.ReadDir(out); len(entries) != len(names) {
			t.Errorf("render.sh %s wrote %v, want %v", c.host, entries, names)
		}
	}

	topology := labs(t)[0].topology
	prom, err := vagrant.RenderPrometheus(labs(t)[0].load(t))
	if err != nil {
		t.Fatal(err)
	}
	if o, e, err := run(t, ".", os.Environ(), relay, "render-lab", "--topology", topology, "--prometheus", "-"); err != nil || o != string(prom) {
		t.Errorf("render-lab --prometheus -: %v, stdout equal to RenderPrometheus: %v\n%s", err, o == string(prom), e)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--host", "msg-1", "--out", t.TempDir()}, "--topology is required"},
		{[]string{"--topology", topology}, "nothing to render"},
		{[]string{"--topology", topology, "--host", "msg-1"}, "--host and --out go together"},
		{[]string{"--topology", topology, "--host", "msg-9", "--out", t.TempDir()}, `host "msg-9" is not in the topology`},
		{[]string{"--topology", topology, "--host", "relay-a", "--out", t.TempDir(), "--interface", "a/b"}, `interface "a/b"`},
		{[]string{"--topology", "missing.json", "--prometheus", "-"}, "read topology: open missing.json"},
		{[]string{"--topology", topology, "--prometheus", "/nonexistent-dir/prometheus.yml"}, "write /nonexistent-dir/prometheus.yml"},
		{[]string{"--topology", topology, "--prometheus", "-", "extra"}, `unexpected arguments ["extra"]`},
	} {
		o, e, err := run(t, ".", os.Environ(), relay, append([]string{"render-lab"}, c.args...)...)
		if exitCode(err) != 2 || o != "" || !strings.Contains(e, c.want) {
			t.Errorf("render-lab %q: %v, stdout %q, stderr %q; want exit 2 saying %q", c.args, err, o, e, c.want)
		}
	}
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

// Every variable of the rendered env files is a flag of its binary.
func TestEnvFilesSetFlags(t *testing.T) {
	flags := map[string]map[string]bool{"relay.env": flagsOf(t, "relay"), "msgserver.env": flagsOf(t, "msgserver")}
	key := regexp.MustCompile(`(?m)^([A-Z_]+)=`)
	for _, l := range labs(t) {
		for host, files := range l.files(t) {
			for name, known := range flags {
				for _, m := range key.FindAllSubmatch(files[name], -1) {
					if !known[string(m[1])] {
						t.Errorf("%s %s %s: %s is not a flag of the binary (its --help does not list it)", l.name, host, name, m[1])
					}
				}
			}
		}
	}
}

// unit reads vagrant/systemd/NAME.
func unit(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root(t), "vagrant", "systemd", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// unitsForVerify copies the units to a temporary folder with the binaries'
// paths pointing at freshly built ones (systemd-analyze verify checks that
// each command exists and is executable).
func unitsForVerify(t *testing.T) []string {
	t.Helper()
	dir := t.TempDir()
	var out []string
	for _, bin := range []string{"relay", "msgserver"} {
		name := "chatrelay-" + bin + ".service"
		s := strings.ReplaceAll(unit(t, name), "\nExecStart=/usr/bin/"+bin+"\n", "\nExecStart="+testenv.Build(t, bin)+"\n")
		if strings.Contains(s, "ExecStart=/usr/bin/") {
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

// The units run the installed binaries as chatrelay, with the env files
// provision.sh installs from the render, and restart them; the message
// server's stop timeout leaves room for its shutdown grace. systemd-analyze
// verify passes them with no output (it reports unknown keys and unparsable
// values only as warnings, with exit status 0) and catches a misspelt key in a
// third unit in the same run; systemd-analyze security rates both at most 2.5
// (0 best, 10 worst; both are 1.7 when written).
func TestUnits(t *testing.T) {
	for _, bin := range []string{"relay", "msgserver"} {
		name := "chatrelay-" + bin + ".service"
		u := unit(t, name)
		for _, line := range []string{"Type=simple", "User=chatrelay", "Group=chatrelay", "Restart=on-failure", "RestartSec=1",
			"LimitNOFILE=262144", "ExecStart=/usr/bin/" + bin, "EnvironmentFile=" + vagrant.EtcDir + "/" + bin + ".env",
			"WantedBy=multi-user.target"} {
			if !strings.Contains(u, "\n"+line+"\n") {
				t.Errorf("%s: no line %s", name, line)
			}
		}
	}
	m := regexp.MustCompile(`\nTimeoutStopSec=(\d+)\n`).FindStringSubmatch(unit(t, "chatrelay-msgserver.service"))
	if m == nil {
		t.Fatal("chatrelay-msgserver.service: no TimeoutStopSec= in seconds")
	}
	stop, _ := time.ParseDuration(m[1] + "s")
	if grace, err := time.ParseDuration(vagrant.ShutdownGrace); err != nil || stop <= grace+time.Second {
		t.Errorf("chatrelay-msgserver.service: TimeoutStopSec %s must exceed --shutdown-grace %s (+1 s to flush and exit)", stop, vagrant.ShutdownGrace)
	}

	sa := testenv.Need(t, "systemd-analyze", "systemd")
	units := unitsForVerify(t)
	b, _ := os.ReadFile(units[0])
	bad := filepath.Join(t.TempDir(), "bad.service")
	if err := os.WriteFile(bad, bytes.Replace(b, []byte("Restart="), []byte("Restrt="), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := run(t, filepath.Dir(units[0]), os.Environ(), sa, append([]string{"verify", "--man=no"}, append(units, bad)...)...)
	var others []string
	for _, l := range strings.Split(strings.TrimSpace(out+errOut), "\n") {
		if !strings.HasPrefix(l, bad+":") {
			others = append(others, l)
		}
	}
	if err != nil || !strings.Contains(out+errOut, "Restrt") || len(others) > 0 {
		t.Fatalf("systemd-analyze verify: %v; want one warning, about Restrt= in %s:\n%s%s", err, bad, out, errOut)
	}

	out, errOut, err = run(t, filepath.Dir(units[0]), os.Environ(), sa, append([]string{"security", "--offline=true", "--threshold=25", "--no-pager"}, units...)...)
	if n := strings.Count(out, "Overall exposure level for "); err != nil || n != len(units) {
		t.Errorf("systemd-analyze security: exposure above 2.5 or error (%v), %d ratings:\n%s%s",
			err, n, strings.Join(regexp.MustCompile(`(?m)^.*Overall exposure.*$`).FindAllString(out, -1), "\n"), errOut)
	}
}

// The relay unit's ExecStartPost and ExecStopPost write 0 and 1 to the track
// file the rendered keepalived.conf watches, atomically, as root outside the
// sandbox ("+": ProtectSystem=strict makes /run read-only, and User=chatrelay
// cannot write root's folder). They run here in a temporary folder.
func TestRelayUnitWritesTrackFile(t *testing.T) {
	u := unit(t, "chatrelay-relay.service")
	get := func(key string) string {
		m := regexp.MustCompile(`\n`+key+`=\+/bin/sh -c '([^'\n]*)'\n`).FindAllStringSubmatch(u, -1)
		if len(m) != 1 {
			t.Fatalf("chatrelay-relay.service: want one %s=+/bin/sh -c '...', got %q", key, m)
		}
		return m[0][1]
	}
	start, stop := get("ExecStartPost"), get("ExecStopPost")
	track := keepalived.DefaultTrackFile
	dir := t.TempDir()
	for _, c := range []struct{ cmd, want string }{{start, "0"}, {stop, "1"}, {start, "0"}} {
		if !strings.Contains(c.cmd, track) {
			t.Fatalf("%q does not write %s, the track file keepalived.conf watches", c.cmd, track)
		}
		cmd := strings.ReplaceAll(c.cmd, filepath.Dir(track)+"/", dir+"/")
		if out, err := exec.Command("/bin/sh", "-c", cmd).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
		b, err := os.ReadFile(filepath.Join(dir, filepath.Base(track)))
		if err != nil || strings.TrimSpace(string(b)) != c.want {
			t.Fatalf("after %q the track file holds %q (%v), want %s", c.cmd, b, err, c.want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temporary files left beside the track file: %v", entries)
	}
}

// fcontextRule returns the regex the package's postinstall.sh gives SELinux
// type typ.
func fcontextRule(t *testing.T, text, typ string) *regexp.Regexp {
	t.Helper()
	g := regexp.MustCompile(`(?m)^\s*semanage fcontext -a -t ` + typ + ` '([^']+)'`).FindStringSubmatch(text)
	if g == nil {
		t.Fatalf("postinstall.sh sets no file context %s", typ)
	}
	return regexp.MustCompile("^(?:" + g[1] + ")$") // semanage regexes match whole paths
}

// What the relay VMs' keepalived.conf runs is installed by the chatrelay
// package (provision.sh installs it) and labelled by its postinstall.sh so
// SELinux lets it run unconfined; the track file's folder is keepalived's
// and exists at boot (tmpfiles.d); the script user exists (sysusers.d).
// TestPackages (packaging/) checks the built packages hold these files.
func TestPackageSetsUpKeepalivedPaths(t *testing.T) {
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(root(t), "packaging", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	post, nfpm := read("postinstall.sh"), read("nfpm.yaml")
	scripts := fcontextRule(t, post, "keepalived_unconfined_script_exec_t")
	runDir := fcontextRule(t, post, "keepalived_var_run_t")
	for _, p := range []string{vagrant.CheckRelayBin, vagrant.NotifyScript} {
		if !scripts.MatchString(p) {
			t.Errorf("%s is not under the keepalived_unconfined_script_exec_t rule %s", p, scripts)
		}
		if !strings.Contains(nfpm, "\n    dst: "+p+"\n") {
			t.Errorf("the package (nfpm.yaml) does not install %s", p)
		}
	}
	if !runDir.MatchString(keepalived.DefaultTrackFile) || !runDir.MatchString(filepath.Dir(keepalived.DefaultTrackFile)) {
		t.Errorf("%s (and its folder) are not under the keepalived_var_run_t rule %s", keepalived.DefaultTrackFile, runDir)
	}
	if !strings.Contains(read("chatrelay.tmpfiles"), "\nd "+filepath.Dir(keepalived.DefaultTrackFile)+" 0755 root root -\n") {
		t.Errorf("chatrelay.tmpfiles has no line for %s", filepath.Dir(keepalived.DefaultTrackFile))
	}
	if !regexp.MustCompile(`(?m)^u ` + keepalived.DefaultScriptUser + ` - `).MatchString(read("chatrelay.sysusers")) {
		t.Errorf("chatrelay.sysusers does not create the script user %s", keepalived.DefaultScriptUser)
	}
	b, err := os.ReadFile(filepath.Join(root(t), "vagrant", "provision", "provision.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "rpm -U --replacepkgs --oldpackage") || !strings.Contains(string(b), "policycoreutils-python-utils") {
		t.Error("provision.sh does not install the package (rpm -U --replacepkgs --oldpackage), after semanage (policycoreutils-python-utils)")
	}
}

// shellcheck runs once, on every script of the lab (vagrant/**.sh) and of
// scripts/ that build and test it (build-vagrant.sh, build-packages.sh,
// test.sh), every rendered firewall.sh, and one script with
// a mistake: it must report that one, and nothing else.
func TestShellScripts(t *testing.T) {
	sc := testenv.Need(t, "shellcheck", "shellcheck")
	r := root(t)
	var scripts []string
	err := filepath.WalkDir(filepath.Join(r, "vagrant"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".vagrant" || d.Name() == "build") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".sh") {
			scripts = append(scripts, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"build-vagrant.sh", "build-packages.sh", "test.sh"} {
		scripts = append(scripts, filepath.Join(r, "scripts", s))
	}
	if len(scripts) < 4 {
		t.Fatalf("found only %v", scripts)
	}
	for _, s := range scripts {
		b, _ := os.ReadFile(s)
		if !bytes.HasPrefix(b, []byte("#!/usr/bin/env bash\n")) || !bytes.Contains(b, []byte("\nset -euo pipefail\n")) {
			t.Errorf("%s: want #!/usr/bin/env bash and set -euo pipefail", s)
		}
		if fi, err := os.Stat(s); err != nil || fi.Mode().Perm()&0o111 != 0o111 {
			t.Errorf("%s is not executable", s)
		}
	}
	dir := t.TempDir()
	for _, l := range labs(t) {
		for host, files := range l.files(t) {
			p := filepath.Join(dir, l.name+"-"+host+"-firewall.sh")
			if err := os.WriteFile(p, files["firewall.sh"], 0o644); err != nil {
				t.Fatal(err)
			}
			scripts = append(scripts, p)
		}
	}
	bad := filepath.Join(dir, "bad.sh")
	if err := os.WriteFile(bad, []byte("#!/usr/bin/env bash\nset -euo pipefail\nrm -rf $1/*\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sc, append([]string{"--external-sources", "--format=gcc"}, append(scripts, bad)...)...).CombinedOutput()
	var others []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !strings.HasPrefix(l, bad+":") {
			others = append(others, l)
		}
	}
	if exitCode(err) != 1 || !strings.Contains(string(out), "SC2086") || len(others) > 0 {
		t.Fatalf("shellcheck: %v; want only the unquoted rm -rf $1/* of %s reported:\n%s", err, bad, out)
	}
}

// scripts/build-vagrant.sh builds the chatrelay RPM, with both binaries for
// linux/amd64, statically linked, and a link secret it keeps across runs. From a cold build cache this is
// the slow test of the package (all dependencies compiled once more, with
// CGO_ENABLED=0 and -trimpath); -short skips it outside CI.
func TestBuildVagrant(t *testing.T) {
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("-short: not cross-building the VMs' package")
	}
	testenv.Need(t, "go", "golang (Go on PATH)")
	out := filepath.Join(t.TempDir(), "build")
	script := filepath.Join(root(t), "scripts", "build-vagrant.sh")
	o, e, err := run(t, root(t), os.Environ(), script, "--out", out)
	if err != nil {
		t.Fatalf("build-vagrant.sh --out %s: %v\n%s%s", out, err, o, e)
	}
	pkg := filepath.Join(out, "chatrelay.x86_64.rpm")
	rpmInfo, e, err := run(t, root(t), os.Environ(), testenv.Need(t, "rpm", "rpm"), "-qp", "--qf", "%{NAME} %{ARCH}", pkg)
	if err != nil || rpmInfo != "chatrelay x86_64" {
		t.Fatalf("rpm -qp %s: %v %q%s, want chatrelay x86_64", pkg, err, rpmInfo, e)
	}
	files := testenv.RPMContents(t, pkg)
	for _, bin := range []string{"relay", "msgserver"} {
		b, ok := files["/usr/bin/"+bin]
		if !ok {
			t.Fatalf("the package has no /usr/bin/%s", bin)
		}
		f, err := elf.NewFile(bytes.NewReader(b))
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
		info, err := buildinfo.Read(bytes.NewReader(b))
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
	again, e, err := run(t, root(t), os.Environ(), script, "--out", out)
	if err != nil || !strings.Contains(again, "kept") {
		t.Fatalf("second build-vagrant.sh: %v\n%s%s", err, again, e)
	}
	if again, _ := os.ReadFile(secret); !bytes.Equal(again, first) {
		t.Error("a second build changed the link secret (running VMs would lose their links)")
	}
	pass := filepath.Join(out, "redis.password")
	if fi, err := os.Stat(pass); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("redis.password: %v, mode %v, want 0600", err, fi)
	}
	if p, _ := os.ReadFile(pass); !regexp.MustCompile(`^[0-9a-f]{64}\n$`).Match(p) || bytes.Equal(p, first) {
		t.Errorf("redis.password %q: want 64 hex characters, not the link secret", p)
	}
	if entries, _ := os.ReadDir(out); len(entries) != 4 {
		t.Errorf("build folder holds %v, want chatrelay.x86_64.rpm, link.secret, redis.password, pki", entries)
	}
	// The lab's CA and certificates (TestLabCertificates checks what they
	// are good for): made by the first run, kept by the second.
	caKey := filepath.Join(out, "pki", "ca-key.pem")
	if fi, err := os.Stat(caKey); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("CA key: %v %v, want mode 0600", err, fi)
	}
	if !strings.Contains(o, "made  "+filepath.Join(out, "pki", "ca.pem")) {
		t.Errorf("the first build-vagrant.sh did not make the lab CA:\n%s", o)
	}
	for _, c := range keepalived.Certs(labs(t)[0].load(t)) {
		certFile, _ := c.CertPaths(filepath.Join(out, "pki"))
		if !strings.Contains(again, "kept  "+certFile) {
			t.Errorf("the second build-vagrant.sh did not keep %s:\n%s", certFile, again)
		}
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

// provision.sh asks dnf for curl only on an image without one: CentOS
// Stream 9's images ship curl-minimal (it provides /usr/bin/curl and
// conflicts with the curl package, so `dnf install curl` aborts the
// provisioning). It runs here with every input in place, as root would, up
// to dnf: a stand-in that records its arguments and fails, so nothing past it
// runs (no dnf here). The tools provision.sh needs before dnf are the real
// ones; `id` says root; curl is there or not.
func TestProvisionAsksForCurlOnlyWithoutOne(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join("testdata", "lab", "machines.json.golden"))
	if err != nil {
		t.Fatal(err)
	}
	var m machine
	for _, mm := range parseMachines(t, b) {
		if mm.Name == "msg-1" { // a message server and Redis: no NIC lookup before dnf
			m = mm
		}
	}
	if m.Name == "" {
		t.Fatal("no machine msg-1 in testdata/lab/machines.json.golden")
	}
	script := filepath.Join(root(t), "vagrant", "provision", "provision.sh")
	for _, withCurl := range []bool{true, false} {
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
		record := filepath.Join(t.TempDir(), "dnf-args")
		standIns := map[string]string{
			"id":  "#!/bin/sh\necho 0\n",
			"dnf": "#!/bin/sh\necho \"$@\" > " + record + "\nexit 1\n",
		}
		if withCurl {
			standIns["curl"] = "#!/bin/sh\nexit 0\n"
		}
		for name, body := range standIns {
			if err := os.WriteFile(filepath.Join(tools, name), []byte(body), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		stage := filepath.Join(t.TempDir(), "stage")
		inputs := map[string]string{"build/chatrelay.x86_64.rpm": rpmMagic, "build/link.secret": "0123456789abcdef0123", "build/redis.password": "0123456789abcdef0123",
			"topology.json": "{}", "provision/render.sh": "#", "pki/ca.pem": "stand-in"}
		for _, f := range []string{"msgserver.pem", "msgserver-key.pem", "redis.pem", "redis-key.pem"} {
			inputs["pki/host/"+f] = "stand-in"
		}
		for f, content := range inputs {
			p := filepath.Join(stage, f)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		env := []string{"PATH=" + tools}
		for k, v := range m.labEnv(t) {
			env = append(env, k+"="+v)
		}
		env = append(env, "LAB_STAGE="+stage)
		out, errOut, err := run(t, stage, env, bash, script)
		got, rerr := os.ReadFile(record)
		if rerr != nil || exitCode(err) != 1 {
			t.Fatalf("curl installed %v: provision.sh did not reach dnf (exit %v):\n%s%s", withCurl, err, out, errOut)
		}
		args := strings.Fields(string(got))
		want := []string{"-y", "-q", "install", "firewalld", "policycoreutils-python-utils", "redis"}
		if !withCurl {
			want = []string{"-y", "-q", "install", "firewalld", "policycoreutils-python-utils", "curl", "redis"}
		}
		if !slices.Equal(args, want) {
			t.Errorf("curl installed %v: dnf %q, want dnf %q", withCurl, args, want)
		}
	}
}
