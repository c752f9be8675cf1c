// Package testenv starts the real parts tests run against: redis-server
// processes, the project's binaries, and in-process servers on loopback;
// and it gives tests a line client and event waits with deadlines.
package testenv

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Need fails the test when tool is not on PATH in CI (where it must run)
// and skips it with the reason elsewhere.
func Need(t testing.TB, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err == nil {
		return p
	}
	msg := fmt.Sprintf("%s not found: install the Debian package %s (scripts/test.sh does)", tool, pkg)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// NeedRoot fails in CI and skips elsewhere when not running as root.
func NeedRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	msg := "needs root: " + why
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// Eventually polls cond every 10ms until it holds or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Redis is a real redis-server process on 127.0.0.1, without persistence.
type Redis struct {
	t    testing.TB
	Port int
	Addr string
	bin  string
	dir  string
	cmd  *exec.Cmd
	out  *bytes.Buffer
	// With TLS (StartRedisTLS): the server's TLS arguments, and the
	// config this package's own connections (PING, Command) use.
	tlsArgs []string
	tls     *tls.Config
}

// StartRedis starts redis-server on a free port and stops it at cleanup.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	return startRedis(t, nil, nil)
}

func startRedis(t testing.TB, tlsArgs []string, tc *tls.Config) *Redis {
	t.Helper()
	bin := Need(t, "redis-server", "redis-server")
	r := &Redis{t: t, bin: bin, dir: t.TempDir(), tlsArgs: tlsArgs, tls: tc}
	for attempt := 0; ; attempt++ {
		r.Port = FreePort(t)
		r.Addr = fmt.Sprintf("127.0.0.1:%d", r.Port)
		err := r.start()
		if err == nil {
			break
		}
		if attempt == 3 {
			t.Fatalf("start redis-server: %v", err)
		}
	}
	t.Cleanup(func() { r.Kill() })
	return r
}

// URL is the redis:// URL of the server (rediss:// with TLS).
func (r *Redis) URL() string {
	if r.tls != nil {
		return "rediss://" + r.Addr + "/0"
	}
	return "redis://" + r.Addr + "/0"
}

func (r *Redis) start() error {
	r.out = &bytes.Buffer{}
	port := []string{"--port", strconv.Itoa(r.Port)}
	if r.tls != nil {
		port = append([]string{"--port", "0", "--tls-port", strconv.Itoa(r.Port)}, r.tlsArgs...)
	}
	r.cmd = exec.Command(r.bin, append(port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir, "--daemonize", "no")...)
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := r.dial(100 * time.Millisecond); err == nil {
			_, _ = c.Write([]byte("PING\r\n"))
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "+PONG") {
				return nil
			}
		}
		if r.cmd.ProcessState != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	return fmt.Errorf("redis-server on %s did not answer PING: %s", r.Addr, r.out.String())
}

// Kill stops the server with SIGKILL (all data is lost: no persistence).
func (r *Redis) Kill() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	_ = r.cmd.Wait()
	r.cmd = nil
}

// Restart kills the server and starts an empty one on the same port.
func (r *Redis) Restart() {
	r.t.Helper()
	r.Kill()
	if err := r.start(); err != nil {
		r.t.Fatalf("restart redis-server: %v", err)
	}
}

// Command runs one redis-cli style command over RESP and returns the raw
// reply line(s), for assertions that must not go through the code under test.
func (r *Redis) Command(args ...string) (string, error) {
	c, err := r.dial(time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	return readRESP(bufio.NewReader(c))
}

// dial connects to the server, over TLS if it serves TLS.
func (r *Redis) dial(timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	if r.tls != nil {
		return tls.DialWithDialer(d, "tcp", r.Addr, r.tls)
	}
	return d.Dial("tcp", r.Addr)
}

func readRESP(br *bufio.Reader) (string, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("empty RESP line")
	}
	switch line[0] {
	case '+', '-', ':':
		return line, nil
	case '$':
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return "(nil)", nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	case '*':
		n, _ := strconv.Atoi(line[1:])
		var parts []string
		for i := 0; i < n; i++ {
			p, err := readRESP(br)
			if err != nil {
				return "", err
			}
			parts = append(parts, p)
		}
		return strings.Join(parts, "\n"), nil
	}
	return line, nil
}

// Build compiles ./cmd/<name> of this module once per test binary and
// returns the executable's path.
func Build(t testing.TB, name string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[name]; ok {
		return p
	}
	root := ModuleRoot(t)
	if buildDir == "" {
		d, err := os.MkdirTemp("", "chatrelay-bin-")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = d
	}
	out := filepath.Join(buildDir, name)
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/"+name)
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/%s: %v\n%s", name, err, b)
	}
	built[name] = out
	return out
}

var (
	buildMu  sync.Mutex
	built    = map[string]string{}
	buildDir string
)

// ModuleRoot is the directory holding go.mod.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), ".."))
}

// Proc is a running binary whose output is kept for failure reports.
type Proc struct {
	t    testing.TB
	Name string
	cmd  *exec.Cmd
	out  LogBuffer // stdout and stderr
	done chan struct{}
}

// Start runs bin with args; its output is logged if the test fails, and
// it is killed at cleanup.
func Start(t testing.TB, name, bin string, args ...string) *Proc {
	t.Helper()
	p := &Proc{t: t, Name: name, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout = &p.out
	p.cmd.Stderr = &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("--- output of %s ---\n%s", name, p.Output())
		}
	})
	return p
}

// Output returns everything the process printed so far.
func (p *Proc) Output() string { return p.out.String() }

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

// Kill sends SIGKILL and waits for the process to end.
func (p *Proc) Kill() {
	p.Signal(syscall.SIGKILL)
	<-p.done
}

// Wait waits up to timeout for the process to exit and returns its exit code.
func (p *Proc) Wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		p.t.Fatalf("%s still running after %s", p.Name, timeout)
		return -1
	}
}

// WaitOutput waits until the output contains s.
func (p *Proc) WaitOutput(s string, timeout time.Duration) {
	p.t.Helper()
	Eventually(p.t, timeout, fmt.Sprintf("%s to print %q", p.Name, s), func() bool {
		return strings.Contains(p.Output(), s)
	})
}

// WaitTCP waits until addr accepts connections.
func WaitTCP(t testing.TB, addr string, timeout time.Duration) {
	t.Helper()
	Eventually(t, timeout, addr+" to accept connections", func() bool {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// WithTimeout returns a context that ends after d or at test cleanup.
func WithTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

var addrAttr = regexp.MustCompile(`addr=(\S+)`)

// WaitAddr waits for the log line containing msg (e.g. "relay listening")
// and returns its addr attribute: servers started on port 0 say where they
// listen, and tests need no free-port guessing.
func (p *Proc) WaitAddr(msg string, timeout time.Duration) string {
	p.t.Helper()
	var addr string
	Eventually(p.t, timeout, fmt.Sprintf("%s to log %q with its address", p.Name, msg), func() bool {
		for _, line := range strings.Split(p.Output(), "\n") {
			if strings.Contains(line, msg) {
				if m := addrAttr.FindStringSubmatch(line); m != nil {
					addr = m[1]
					return true
				}
			}
		}
		return false
	})
	return addr
}
