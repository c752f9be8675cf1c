package vagrant_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// minVagrant is the oldest Vagrant that configures the private network of an
// EL9 guest without /etc/sysconfig/network-scripts (NetworkManager keyfiles,
// Vagrant 2.4.4); the Vagrantfile must require at least that.
var minVagrant = []int{2, 4, 4}

var requireLine = regexp.MustCompile(`(?m)^Vagrant\.require_version ">= ([0-9]+(?:\.[0-9]+)*)"$`)

func parseVersion(s string) []int {
	var v []int
	for _, f := range strings.Split(s, ".") {
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil
		}
		v = append(v, n)
	}
	return v
}

func older(a, b []int) bool {
	for i := 0; i < len(a) || i < len(b); i++ {
		var x, y int
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != y {
			return x < y
		}
	}
	return false
}

// installedVagrant is the version `vagrant --version` reports.
func installedVagrant(t *testing.T, bin string) string {
	t.Helper()
	out, err := exec.Command(bin, "--version").Output()
	m := regexp.MustCompile(`Vagrant ([0-9.]+)`).FindSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("vagrant --version: %v %q", err, out)
	}
	return string(m[1])
}

// relaxVersion returns the Vagrantfile with its version requirement lowered
// to the installed Vagrant when that one is older (Debian 12 ships 2.3.4),
// so the rest of the file can still be loaded and validated here. Only the
// tests' copies are changed; TestVagrantRequiresVersion checks the real
// file refuses the older Vagrant.
func relaxVersion(t *testing.T, vf []byte, installed string) []byte {
	t.Helper()
	m := requireLine.FindSubmatch(vf)
	if m == nil {
		t.Fatal(`Vagrantfile: no line Vagrant.require_version ">= X.Y.Z"`)
	}
	if !older(parseVersion(installed), parseVersion(string(m[1]))) {
		return vf
	}
	t.Logf("Vagrant %s is older than the Vagrantfile's %s: its requirement is relaxed in the test's copy", installed, m[1])
	return requireLine.ReplaceAll(vf, []byte(`Vagrant.require_version ">= `+installed+`"`))
}

// The Vagrantfile requires a Vagrant that can configure EL9's network
// (>= 2.4.4), and an older one stops before anything is done, saying which
// version is needed; with a new enough Vagrant the real file validates.
func TestVagrantRequiresVersion(t *testing.T) {
	bin := needVagrant(t)
	b, err := os.ReadFile(filepath.Join(root(t), "vagrant", "Vagrantfile"))
	if err != nil {
		t.Fatal(err)
	}
	m := requireLine.FindSubmatch(b)
	if m == nil || older(parseVersion(string(m[1])), minVagrant) {
		t.Fatalf("Vagrantfile requires %q, want at least >= 2.4.4", m)
	}
	installed := installedVagrant(t, bin)
	out, errOut, err := run(t, filepath.Join(root(t), "vagrant"), vagrantEnv(t), bin, "validate", "--ignore-provider")
	if older(parseVersion(installed), parseVersion(string(m[1]))) {
		if err == nil || !strings.Contains(out+errOut, ">= "+string(m[1])) || !strings.Contains(out+errOut, "You are running Vagrant "+installed) {
			t.Fatalf("vagrant %s validate on the real Vagrantfile: %v; want a refusal naming >= %s:\n%s%s", installed, err, m[1], out, errOut)
		}
		return
	}
	if err != nil || !strings.Contains(out, "Vagrantfile validated successfully") {
		t.Fatalf("vagrant %s validate: %v\n%s%s", installed, err, out, errOut)
	}
}

// The box comes from cloud.centos.org by default, one image per provider
// (testdata/lab/machines.json.golden); a dated build, a URL or a local .box
// file can be chosen instead, and a box by name without any URL
// (testdata/other/machines.json.golden), as Vagrant loads the Vagrantfile
// (testdata/dump-vagrantfile.rb).
func TestBoxSettings(t *testing.T) {
	needVagrant(t)
	script := filepath.Join(root(t), "vagrant", "testdata", "dump-vagrantfile.rb")
	dir := labCopy(t, labs(t)[0].topology)
	local := filepath.Join(t.TempDir(), "centos.box")
	if err := os.WriteFile(local, []byte("stand-in\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const images = "https://cloud.centos.org/centos/9-stream/x86_64/images/"
	for _, c := range []struct {
		env    []string
		box    string
		vb, lv string // box_url per provider; "" for none
	}{
		{[]string{"CHATRELAY_BOX_BUILD=20250326.0"}, "chatrelay/centos-stream-9-20250326.0",
			images + "CentOS-Stream-Vagrant-9-20250326.0.x86_64.vagrant-virtualbox.box",
			images + "CentOS-Stream-Vagrant-9-20250326.0.x86_64.vagrant-libvirt.box"},
		{[]string{"CHATRELAY_BOX_URL=" + local, "CHATRELAY_BOX=mine/centos9"}, "mine/centos9", "file://" + local, "file://" + local},
		{[]string{"CHATRELAY_BOX_URL=https://mirror.example/c9.box"}, "chatrelay/centos-stream-9-latest",
			"https://mirror.example/c9.box", "https://mirror.example/c9.box"},
	} {
		out, errOut, err := run(t, dir, vagrantEnv(t, c.env...), "ruby", script)
		if err != nil {
			t.Fatalf("%v: dump-vagrantfile.rb: %v\n%s%s", c.env, err, out, errOut)
		}
		var d struct {
			Machines []struct {
				Name   string              `json:"name"`
				Box    string              `json:"box"`
				BoxURL map[string][]string `json:"box_url"`
			} `json:"machines"`
		}
		if err := json.Unmarshal([]byte(out), &d); err != nil || len(d.Machines) == 0 {
			t.Fatalf("%v: %v\n%s", c.env, err, out)
		}
		for _, m := range d.Machines {
			urls := func(u string) []string {
				if u == "" {
					return nil
				}
				return []string{u}
			}
			if m.Box != c.box || !slices.Equal(m.BoxURL["virtualbox"], urls(c.vb)) || !slices.Equal(m.BoxURL["libvirt"], urls(c.lv)) {
				t.Errorf("%v: %s: box %q, box_url %v; want %q, virtualbox %q, libvirt %q", c.env, m.Name, m.Box, m.BoxURL, c.box, c.vb, c.lv)
			}
		}
	}
}
