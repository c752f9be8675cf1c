// Package packaging_test builds the chatrelay RPM and deb with
// scripts/build-packages.sh (nfpm) and inspects them with the distributions'
// own tools, as an operator or a repository would: rpm -qp (files, modes,
// config files, scriptlets), dpkg-deb (-I, -c, -e, -x), rpm2archive, and
// systemd-analyze verify on the units as packaged, with the packaged
// binaries. Nothing is installed on this machine.
package packaging_test

import (
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/chatrelay/chatrelay/keepalived"
	"github.com/chatrelay/chatrelay/testenv"
)

const version = "1.2.3+test"

// files are what both packages install: path, mode, and whether it is
// configuration kept on upgrade.
var files = []struct {
	path   string
	mode   string
	config bool
}{
	{"/etc/chatrelay/msgserver.env", "-rw-r--r--", true},
	{"/etc/chatrelay/relay.env", "-rw-r--r--", true},
	{"/usr/bin/chatbench", "-rwxr-xr-x", false},
	{"/usr/bin/msgserver", "-rwxr-xr-x", false},
	{"/usr/bin/relay", "-rwxr-xr-x", false},
	{"/usr/lib/systemd/system/chatrelay-msgserver.service", "-rw-r--r--", false},
	{"/usr/lib/systemd/system/chatrelay-relay.service", "-rw-r--r--", false},
	{"/usr/lib/sysusers.d/chatrelay.conf", "-rw-r--r--", false},
	{"/usr/lib/tmpfiles.d/chatrelay.conf", "-rw-r--r--", false},
	// Where `relay render-keepalived` points keepalived.conf by default.
	{keepalived.DefaultNotifyScript, "-rwxr-xr-x", false},
	{keepalived.DefaultRelayBin, "-rwxr-xr-x", false},
	{"/usr/share/doc/chatrelay/CHANGELOG.md", "-rw-r--r--", false},
	{"/usr/share/doc/chatrelay/LICENSE", "-rw-r--r--", false},
}

func root(t *testing.T) string { return testenv.ModuleRoot(t) }

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, errOut.Bytes())
	}
	return string(out)
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// build runs scripts/build-packages.sh once per test binary and returns the
// RPM and the deb.
func build(t *testing.T) (rpmFile, debFile string) {
	t.Helper()
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("-short: not building the packages")
	}
	testenv.Need(t, "go", "golang (Go on PATH)")
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(root(t), "scripts", "build-packages.sh"), "--out", out)
	cmd.Env = append(os.Environ(), "CHATRELAY_VERSION="+version)
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("build-packages.sh: %v\n%s%s", err, stdout, errOut.Bytes())
	}
	rpmFile = filepath.Join(out, "chatrelay-"+version+"-1.x86_64.rpm")
	debFile = filepath.Join(out, "chatrelay_"+version+"-1_amd64.deb")
	if got := strings.Fields(string(stdout)); !slices.Equal(got, []string{rpmFile, debFile}) {
		t.Fatalf("build-packages.sh printed %q, want %s and %s", got, rpmFile, debFile)
	}
	return rpmFile, debFile
}

// TestPackages builds both packages once and checks each.
func TestPackages(t *testing.T) {
	rpmBin := testenv.Need(t, "rpm", "rpm")
	dpkgDeb := testenv.Need(t, "dpkg-deb", "dpkg")
	rpmFile, debFile := build(t)
	t.Run("rpm", func(t *testing.T) { checkRPM(t, rpmBin, rpmFile) })
	t.Run("deb", func(t *testing.T) { checkDeb(t, dpkgDeb, debFile) })
}

func checkRPM(t *testing.T, rpmBin, pkg string) {
	if got := run(t, rpmBin, "-qp", "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{OS} %{LICENSE}", pkg); got != "chatrelay "+version+" 1 x86_64 linux Apache-2.0" {
		t.Errorf("rpm -qp: %q", got)
	}
	// rpm -qlp: exactly the files (and the folders the package owns).
	var want []string
	for _, f := range files {
		want = append(want, f.path)
	}
	want = append(want, "/etc/chatrelay", "/usr/libexec/chatrelay", "/usr/share/doc/chatrelay")
	slices.Sort(want)
	if got := strings.Fields(run(t, rpmBin, "-qlp", pkg)); !slices.Equal(got, want) {
		t.Errorf("rpm -qlp:\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	// Modes, owners, config files.
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(run(t, rpmBin, "-qp", "--qf", `[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]`, pkg)), "\n") {
		f := strings.Fields(l)
		if len(f) == 3 { // no flags
			f = []string{f[0], f[1], "", f[2]}
		}
		if len(f) != 4 {
			t.Fatalf("rpm -qp --qf: line %q", l)
		}
		got[f[3]] = f[0] + " " + f[1] + " " + f[2]
	}
	for _, f := range files {
		w := f.mode + " root:root "
		if f.config {
			w += "cn" // %config(noreplace)
		}
		if got[f.path] != w {
			t.Errorf("%s: %q, want %q", f.path, got[f.path], w)
		}
	}
	if got := strings.Fields(run(t, rpmBin, "-qp", "--configfiles", pkg)); !slices.Equal(got, []string{"/etc/chatrelay/msgserver.env", "/etc/chatrelay/relay.env"}) {
		t.Errorf("rpm -qp --configfiles: %q", got)
	}
	// rpm -qp --scripts: the scriptlets are packaging/*.sh, run by /bin/sh.
	scripts := run(t, rpmBin, "-qp", "--scripts", pkg)
	for _, s := range []struct{ header, file string }{
		{"postinstall scriptlet (using /bin/sh):", "postinstall.sh"},
		{"preuninstall scriptlet (using /bin/sh):", "preremove.sh"},
		{"postuninstall scriptlet (using /bin/sh):", "postremove.sh"},
	} {
		body := strings.TrimSpace(read(t, filepath.Join(root(t), "packaging", s.file)))
		if !strings.Contains(scripts, s.header+"\n"+body) {
			t.Errorf("rpm -qp --scripts has no %q followed by packaging/%s:\n%s", s.header, s.file, scripts)
		}
	}
	if strings.Count(scripts, "scriptlet (using") != 3 {
		t.Errorf("rpm -qp --scripts: want 3 scriptlets:\n%s", scripts)
	}
	checkBinaries(t, testenv.RPMContents(t, pkg))
}

func checkDeb(t *testing.T, dpkgDeb, pkg string) {
	info := run(t, dpkgDeb, "-I", pkg)
	for _, l := range []string{" Package: chatrelay\n", " Version: " + version + "-1\n", " Architecture: amd64\n", " Section: net\n"} {
		if !strings.Contains(info, l) {
			t.Errorf("dpkg-deb -I lacks %q:\n%s", l, info)
		}
	}
	// dpkg-deb -c: the files (folders aside), with their modes.
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(run(t, dpkgDeb, "-c", pkg)), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 || strings.HasSuffix(f[5], "/") {
			continue
		}
		got[strings.TrimPrefix(f[5], ".")] = f[0] + " " + f[1]
	}
	if len(got) != len(files) {
		t.Errorf("dpkg-deb -c: %d files, want %d: %v", len(got), len(files), got)
	}
	for _, f := range files {
		if got[f.path] != f.mode+" root/root" {
			t.Errorf("dpkg-deb -c %s: %q, want %q", f.path, got[f.path], f.mode+" root/root")
		}
	}
	// The control archive: conffiles, and the maintainer scripts are
	// packaging/*.sh.
	ctl := t.TempDir()
	run(t, dpkgDeb, "-e", pkg, ctl)
	if got := strings.Fields(read(t, filepath.Join(ctl, "conffiles"))); !slices.Equal(got, []string{"/etc/chatrelay/msgserver.env", "/etc/chatrelay/relay.env"}) {
		t.Errorf("conffiles: %q", got)
	}
	for script, file := range map[string]string{"postinst": "postinstall.sh", "prerm": "preremove.sh", "postrm": "postremove.sh"} {
		if read(t, filepath.Join(ctl, script)) != read(t, filepath.Join(root(t), "packaging", file)) {
			t.Errorf("deb %s is not packaging/%s", script, file)
		}
	}
	if _, err := os.Stat(filepath.Join(ctl, "preinst")); err == nil {
		t.Error("deb has a preinst; the package has none")
	}

	tree := t.TempDir()
	run(t, dpkgDeb, "-x", pkg, tree)
	contents := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(tree, f.path))
		if err != nil {
			t.Fatal(err)
		}
		contents[f.path] = b
	}
	checkBinaries(t, contents)
	verifyUnits(t, tree)
}

// checkBinaries: the packaged binaries are the project's commands, static
// linux/amd64 executables; keepalived's check is the relay itself; the
// scripts and units are the repository's.
func checkBinaries(t *testing.T, contents map[string][]byte) {
	t.Helper()
	for path, cmd := range map[string]string{"/usr/bin/relay": "relay", "/usr/bin/msgserver": "msgserver",
		"/usr/bin/chatbench": "chatbench", "/usr/libexec/chatrelay/relay": "relay"} {
		b := contents[path]
		f, err := elf.NewFile(bytes.NewReader(b))
		if err != nil {
			t.Errorf("%s: not ELF: %v", path, err)
			continue
		}
		if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
			t.Errorf("%s: ELF %v %v %v, want a 64-bit x86-64 executable", path, f.Class, f.Machine, f.Type)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s is dynamically linked", path)
			}
		}
		info, err := buildinfo.Read(bytes.NewReader(b))
		if err != nil || info.Path != "github.com/chatrelay/chatrelay/cmd/"+cmd {
			t.Errorf("%s: build info %v %v, want cmd/%s", path, info, err, cmd)
		}
	}
	if !bytes.Equal(contents["/usr/libexec/chatrelay/relay"], contents["/usr/bin/relay"]) {
		t.Error("/usr/libexec/chatrelay/relay is not the same build as /usr/bin/relay")
	}
	for path, src := range map[string]string{
		"/usr/libexec/chatrelay/notify.sh":                    "keepalived/notify.sh",
		"/usr/lib/systemd/system/chatrelay-relay.service":     "vagrant/systemd/chatrelay-relay.service",
		"/usr/lib/systemd/system/chatrelay-msgserver.service": "vagrant/systemd/chatrelay-msgserver.service",
		"/usr/lib/tmpfiles.d/chatrelay.conf":                  "packaging/chatrelay.tmpfiles",
		"/usr/lib/sysusers.d/chatrelay.conf":                  "packaging/chatrelay.sysusers",
		"/usr/share/doc/chatrelay/LICENSE":                    "LICENSE",
	} {
		if string(contents[path]) != read(t, filepath.Join(root(t), src)) {
			t.Errorf("%s is not %s", path, src)
		}
	}
}

// verifyUnits runs systemd-analyze verify on the packaged units, with
// ExecStart pointing at the packaged binaries in tree (it checks that each
// command exists and is executable): no output. Each unit's ExecStart must
// be a binary the package installs.
func verifyUnits(t *testing.T, tree string) {
	t.Helper()
	sa := testenv.Need(t, "systemd-analyze", "systemd")
	dir := t.TempDir()
	var units []string
	for _, bin := range []string{"relay", "msgserver"} {
		name := "chatrelay-" + bin + ".service"
		u := read(t, filepath.Join(tree, "usr/lib/systemd/system", name))
		exec := "\nExecStart=/usr/bin/" + bin + "\n"
		if !strings.Contains(u, exec) {
			t.Fatalf("%s: no line %q", name, strings.TrimSpace(exec))
		}
		u = strings.Replace(u, exec, "\nExecStart="+filepath.Join(tree, "usr/bin", bin)+"\n", 1)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(u), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, p)
	}
	cmd := exec.Command(sa, append([]string{"verify", "--man=no"}, units...)...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify of the packaged units: %v\n%s", err, out)
	}
}

// The package scripts are POSIX sh (dpkg runs them with /bin/sh) and pass
// shellcheck as such, and each runs to completion for each way rpm and dpkg
// call it on a machine without systemd running, SELinux or semanage
// (preremove and postremove: no command is needed then).
func TestScriptlets(t *testing.T) {
	sc := testenv.Need(t, "shellcheck", "shellcheck")
	var scripts []string
	for _, s := range []string{"postinstall.sh", "preremove.sh", "postremove.sh"} {
		p := filepath.Join(root(t), "packaging", s)
		if !strings.HasPrefix(read(t, p), "#!/bin/sh\n") {
			t.Errorf("%s: want #!/bin/sh", s)
		}
		scripts = append(scripts, p)
	}
	if out, err := exec.Command(sc, append([]string{"--shell=sh", "--format=gcc"}, scripts...)...).CombinedOutput(); err != nil {
		t.Errorf("shellcheck: %v\n%s", err, out)
	}
	empty := t.TempDir() // PATH with no systemctl, semanage, selinuxenabled
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"preremove.sh", "postremove.sh"} {
		for _, arg := range []string{"0", "1", "remove", "upgrade", "purge"} {
			cmd := exec.Command(sh, filepath.Join(root(t), "packaging", s), arg)
			cmd.Env = []string{"PATH=" + empty}
			if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
				t.Errorf("%s %s: %v %s", s, arg, err, out)
			}
		}
	}
}

// A version with "-" (the separator of version and release in both
// formats) is refused before anything is built.
func TestBuildRefusesBadVersion(t *testing.T) {
	cmd := exec.Command(filepath.Join(root(t), "scripts", "build-packages.sh"), "--out", t.TempDir())
	cmd.Env = append(os.Environ(), "CHATRELAY_VERSION=1.2-3")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), `version "1.2-3"`) {
		t.Errorf("CHATRELAY_VERSION=1.2-3: %v, want exit 2 naming the version:\n%s", err, out)
	}
}

// postinstall.sh, run as rpm and dpkg run it, with every command it calls
// replaced by a stand-in that records its arguments (it would otherwise add
// users and SELinux rules to this machine): it makes the users, the log
// folder and /run/chatrelay, and on an SELinux system gives the check's
// folder and the track file's their types (changing an existing rule
// rather than failing on it), or says what is missing.
func TestPostinstall(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root(t), "packaging", "postinstall.sh")
	for _, c := range []struct {
		name    string
		stubs   map[string]string // command: exit status
		want    []string          // calls, in order (systemctl aside)
		wantErr string
	}{
		{"SELinux, rules already there", map[string]string{"systemd-sysusers": "0", "install": "0", "selinuxenabled": "0",
			"semanage": "$([ \"$2\" = -a ] && echo 1 || echo 0)", "systemd-tmpfiles": "0", "restorecon": "0", "systemctl": "0"},
			[]string{
				"systemd-sysusers /usr/lib/sysusers.d/chatrelay.conf",
				"install -d -m 0750 -o keepalived_script -g keepalived_script /var/log/chatrelay",
				"selinuxenabled",
				"semanage fcontext -a -t keepalived_unconfined_script_exec_t /usr/libexec/chatrelay(/.*)?",
				"semanage fcontext -m -t keepalived_unconfined_script_exec_t /usr/libexec/chatrelay(/.*)?",
				"semanage fcontext -a -t keepalived_var_run_t /run/chatrelay(/.*)?",
				"semanage fcontext -m -t keepalived_var_run_t /run/chatrelay(/.*)?",
				"systemd-tmpfiles --create /usr/lib/tmpfiles.d/chatrelay.conf",
				"selinuxenabled",
				"restorecon -RF /usr/libexec/chatrelay /run/chatrelay /var/log/chatrelay /etc/chatrelay",
			}, ""},
		{"SELinux without semanage", map[string]string{"systemd-sysusers": "0", "install": "0", "selinuxenabled": "0",
			"systemd-tmpfiles": "0", "restorecon": "0", "systemctl": "0"},
			[]string{
				"systemd-sysusers /usr/lib/sysusers.d/chatrelay.conf",
				"install -d -m 0750 -o keepalived_script -g keepalived_script /var/log/chatrelay",
				"selinuxenabled",
				"systemd-tmpfiles --create /usr/lib/tmpfiles.d/chatrelay.conf",
				"selinuxenabled",
				"restorecon -RF /usr/libexec/chatrelay /run/chatrelay /var/log/chatrelay /etc/chatrelay",
			}, "semanage is missing (dnf install policycoreutils-python-utils"},
		{"no SELinux, no sysusers", map[string]string{"id": "1", "useradd": "0", "install": "0", "selinuxenabled": "1",
			"semanage": "0", "systemctl": "0"},
			[]string{
				"id chatrelay",
				"useradd --system --no-create-home --home-dir / --shell /usr/sbin/nologin chatrelay",
				"id keepalived_script",
				"useradd --system --no-create-home --home-dir / --shell /usr/sbin/nologin keepalived_script",
				"install -d -m 0750 -o keepalived_script -g keepalived_script /var/log/chatrelay",
				"selinuxenabled",
				"selinuxenabled",
			}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			stubs := t.TempDir()
			calls := filepath.Join(t.TempDir(), "calls")
			for name, status := range c.stubs {
				body := "#!/bin/sh\necho \"" + name + " $*\" >> " + calls + "\nexit " + status + "\n"
				if err := os.WriteFile(filepath.Join(stubs, name), []byte(body), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			for _, arg := range []string{"1", "configure"} { // rpm %post, dpkg postinst
				os.Remove(calls)
				cmd := exec.Command(sh, script, arg)
				cmd.Env = []string{"PATH=" + stubs}
				var errOut bytes.Buffer
				cmd.Stderr = &errOut
				if out, err := cmd.Output(); err != nil || len(out) > 0 {
					t.Fatalf("postinstall.sh %s: %v\n%s%s", arg, err, out, errOut.Bytes())
				}
				if c.wantErr == "" && errOut.Len() > 0 || !strings.Contains(errOut.String(), c.wantErr) {
					t.Errorf("postinstall.sh %s: stderr %q, want %q", arg, errOut.String(), c.wantErr)
				}
				b, _ := os.ReadFile(calls)
				var got []string
				for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
					if l = strings.TrimSpace(l); !strings.HasPrefix(l, "systemctl") { // daemon-reload only where systemd runs
						got = append(got, l)
					}
				}
				if !slices.Equal(got, c.want) {
					t.Errorf("postinstall.sh %s ran\n  %s\nwant\n  %s", arg, strings.Join(got, "\n  "), strings.Join(c.want, "\n  "))
				}
			}
		})
	}
}

// The packages build-packages.sh writes to dist/ by default are never
// committed.
func TestGitIgnoresDist(t *testing.T) {
	git := testenv.Need(t, "git", "git")
	if _, err := os.Stat(filepath.Join(root(t), ".git")); err != nil {
		t.Skip("not a git checkout")
	}
	for _, p := range []string{"dist/chatrelay-1.2.3-1.x86_64.rpm", "dist/chatrelay_1.2.3-1_amd64.deb"} {
		if out, err := exec.Command(git, "-C", root(t), "check-ignore", "--no-index", "-q", p).CombinedOutput(); err != nil {
			t.Errorf("git does not ignore %s: %v %s", p, err, out)
		}
	}
}
