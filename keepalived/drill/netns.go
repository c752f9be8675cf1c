package drill

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Lab is the four-VM topology built from network namespaces on one host:
// one namespace per host, each with an "eth1" joined to a bridge that lives
// in a namespace of its own (the LAN), so nothing touches the host's own
// network. Every name starts with the lab's prefix, so leftovers of an
// interrupted run can be found and removed.
type Lab struct {
	Prefix string
	Hosts  map[string]string // host name -> its address on the LAN
	Mask   int

	mu    sync.Mutex
	procs []*Proc
}

// Proc is a process started in a host's namespace.
type Proc struct {
	Host, Name string
	cmd        *exec.Cmd
	out        *lockedBuffer
	done       chan struct{}
}

// NamespacePrefix starts every namespace a drill makes.
const NamespacePrefix = "crdrill"

// NewLab builds the namespaces, the bridge and the links. On error it
// removes whatever it made.
func NewLab(hosts map[string]string, mask int) (*Lab, error) {
	// Unique per run: the pid and a random suffix.
	l := &Lab{Prefix: fmt.Sprintf("%s%d-%04x", NamespacePrefix, os.Getpid(), rand.N(1<<16)), Hosts: hosts, Mask: mask}
	if err := l.build(); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// NS is the namespace of a host.
func (l *Lab) NS(host string) string { return l.Prefix + "-" + host }

func (l *Lab) lanNS() string { return l.Prefix + "-lan" }

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func (l *Lab) build() error {
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("the ip command (iproute2) is missing")
	}
	lan := l.lanNS()
	steps := [][]string{
		{"netns", "add", lan},
		{"-n", lan, "link", "set", "lo", "up"},
		{"-n", lan, "link", "add", "br0", "type", "bridge"},
		{"-n", lan, "link", "set", "br0", "up"},
	}
	i := 0
	for host, addr := range l.Hosts {
		ns := l.NS(host)
		peer := fmt.Sprintf("p%d", i) // the bridge side, inside the LAN namespace
		i++
		steps = append(steps,
			[]string{"netns", "add", ns},
			[]string{"-n", ns, "link", "set", "lo", "up"},
			[]string{"-n", ns, "link", "add", "eth1", "type", "veth", "peer", "name", peer, "netns", lan},
			[]string{"-n", lan, "link", "set", peer, "master", "br0"},
			[]string{"-n", lan, "link", "set", peer, "up"},
			[]string{"-n", ns, "addr", "add", fmt.Sprintf("%s/%d", addr, l.Mask), "dev", "eth1"},
			[]string{"-n", ns, "link", "set", "eth1", "up"},
		)
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return err
		}
	}
	return nil
}

// Start runs a command in host's namespace. env adds to the environment.
func (l *Lab) Start(host, name string, env []string, bin string, args ...string) (*Proc, error) {
	p := &Proc{Host: host, Name: name, out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", l.NS(host), bin}, args...)...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	// A process group of its own: a Ctrl-C of the drill reaches it only
	// through Close, in order.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s on %s: %w", name, host, err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p, nil
}

// Run runs a command in host's namespace to completion.
func (l *Lab) Run(host string, bin string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", l.NS(host), bin}, args...)...).CombinedOutput()
	return string(out), err
}

// HasAddr reports whether addr is configured on host's eth1 (and eth1 is up).
func (l *Lab) HasAddr(host, addr string) bool {
	out, err := exec.Command("ip", "-n", l.NS(host), "-o", "addr", "show", "dev", "eth1", "up").CombinedOutput()
	return err == nil && strings.Contains(string(out), " "+addr+"/")
}

// Pid is the process id (ip netns exec execs the command in place).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits up to d for the process to end.
func (p *Proc) Wait(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

// Output is what the process printed.
func (p *Proc) Output() string { return p.out.String() }

// WaitOutput waits up to d for the output to contain s.
func (p *Proc) WaitOutput(s string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for !strings.Contains(p.Output(), s) {
		if p.Exited() {
			return fmt.Errorf("%s on %s exited before printing %q:\n%s", p.Name, p.Host, s, p.Output())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s on %s did not print %q within %s:\n%s", p.Name, p.Host, s, d, p.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// Close kills every process the lab started (whole process groups), then
// deletes its namespaces, which removes their links and the bridge.
func (l *Lab) Close() error {
	l.mu.Lock()
	procs := l.procs
	l.procs = nil
	l.mu.Unlock()
	for _, p := range procs {
		if p.Exited() {
			continue // its group id may belong to someone else by now
		}
		_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
		p.Wait(5 * time.Second)
	}
	var errs []error
	for host := range l.Hosts {
		if err := deleteNS(l.NS(host)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := deleteNS(l.lanNS()); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func deleteNS(ns string) error {
	if !nsExists(ns) {
		return nil
	}
	// Anything still running in it (a stray child) goes first.
	if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	return ip("netns", "del", ns)
}

func nsExists(ns string) bool {
	_, err := os.Stat("/run/netns/" + ns)
	return err == nil
}

// ProcessPrefix starts every namespace the drill process pid makes.
func ProcessPrefix(pid int) string { return fmt.Sprintf("%s%d-", NamespacePrefix, pid) }

// Leftovers lists the namespaces whose names start with prefix: a lab's
// Prefix, a drill process's (ProcessPrefix), or NamespacePrefix for those
// of every drill. Other drills running at the same time have their own.
func Leftovers(prefix string) []string {
	entries, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// RemoveLeftovers deletes every drill namespace and what runs in it.
func RemoveLeftovers() error {
	var errs []error
	for _, ns := range Leftovers(NamespacePrefix) {
		if err := deleteNS(ns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
