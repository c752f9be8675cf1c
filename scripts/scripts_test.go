// Package scripts_test runs the test command (test.sh) the way CI does, with
// the commands that would change the machine or take minutes (apt-get,
// dpkg-query, systemctl, go) replaced by stand-ins that record their
// arguments: what it does to the machine's services is what is checked.
package scripts_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chatrelay/chatrelay/testenv"
)

// test.sh leaves the machine's redis-server, prometheus and keepalived
// services alone: it asks systemd whether they run, says so, and never
// stops, starts, restarts, disables or masks one (it used to stop them
// without a word).
func TestTestCommandLeavesSystemServicesAlone(t *testing.T) {
	bash := testenv.Need(t, "bash", "bash")
	stubs := t.TempDir()
	calls := filepath.Join(t.TempDir(), "calls")
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(stubs, name), []byte("#!/bin/sh\necho \""+name+" $*\" >> "+calls+"\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write("dpkg-query", "printf 'install ok installed'\n") // every package present: no apt-get
	write("apt-get", "exit 1\n")                           // must not run
	write("systemctl", "exit 0\n")                         // every service active
	write("go", "exit 0\n")                                // vet, staticcheck, tests: nothing run
	cmd := exec.Command(bash, filepath.Join(testenv.ModuleRoot(t), "scripts", "test.sh"))
	cmd.Env = append(os.Environ(), "PATH="+stubs+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("test.sh with stand-ins: %v\n%s", err, out)
	}
	b, err := os.ReadFile(calls)
	if err != nil {
		t.Fatal(err)
	}
	var systemctl []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if strings.HasPrefix(l, "apt-get ") {
			t.Errorf("test.sh ran %q with every package installed", l)
		}
		if rest, ok := strings.CutPrefix(l, "systemctl "); ok {
			systemctl = append(systemctl, rest)
			if f := strings.Fields(rest); len(f) == 0 || f[0] != "is-active" {
				t.Errorf("test.sh ran systemctl %s: it must not change the machine's services", rest)
			}
		}
	}
	for _, svc := range []string{"redis-server", "prometheus", "keepalived"} {
		if !strings.Contains(strings.Join(systemctl, "\n"), svc) {
			t.Errorf("test.sh did not look at %s (systemctl calls: %q)", svc, systemctl)
		}
		if !strings.Contains(string(out), "note: the system's "+svc+" service is running; left alone") {
			t.Errorf("test.sh does not say it leaves %s running:\n%s", svc, out)
		}
	}
}
