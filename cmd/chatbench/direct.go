package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/chatrelay/chatrelay/internal/cli"
)

// direct mode: the baseline. Two direct-node processes (this binary, re-
// executed) joined by one TCP link, under the same xnode load as the tier.

// directResult is an xnode result plus what the nodes cost in CPU.
type directResult struct {
	*result
	// NodeCPUMsPer1k is both nodes' CPU time (user+system) from before the
	// first login to the end of the drain, per 1000 messages delivered.
	NodeCPUMsPer1k float64 `json:"node_cpu_ms_per_1k"`
	// NodeSyscallsPer1k is both nodes' read and write system calls per
	// 1000 messages delivered.
	NodeSyscallsPer1k float64 `json:"node_syscalls_per_1k"`
}

func (r *directResult) table(w io.Writer) {
	r.result.table(w)
	fmt.Fprintf(w, "CPU per 1k messages: nodes %.2f ms (both), load generator %.2f ms; nodes' syscalls per 1k: %.0f\n", r.NodeCPUMsPer1k, r.BenchCPUMsPer1k, r.NodeSyscallsPer1k)
}

func runDirectCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("chatbench direct", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cli.Usage(fs, "chatbench direct: the direct-link baseline. Starts two chatbench direct-node processes joined by\n"+
		"one TCP link (no relay, no Redis) and runs the xnode load against them.")
	var cfg xnodeConfig
	loadFlags(fs, &cfg)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	quiet := fs.Bool("quiet", false, "no progress lines")
	if code, done := parseFlags(fs, args, stderr); done {
		return code
	}
	cfg.Servers = []string{"node-a", "node-b"} // the real addresses come when they listen
	if err := cfg.validate(); err != nil {
		fmt.Fprintln(stderr, "chatbench:", err)
		return 2
	}
	stderr = &lockedWriter{w: stderr} // the nodes' stderr and our progress share it
	if !*quiet {
		cfg.Progress = stderr
	}
	res, err := runDirect(cfg, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "chatbench:", err)
		return 1
	}
	return report(stdout, res, *asJSON, res.failed())
}

func runDirect(cfg xnodeConfig, stderr io.Writer) (*directResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this binary to start the nodes: %w", err)
	}
	lifetime := (cfg.Warmup + cfg.Duration + 2*time.Minute).String()
	a, err := startNode(exe, stderr, "direct-node", "--id", "a", "--peer-id", "b", "--listen", "127.0.0.1:0", "--link-listen", "127.0.0.1:0", "--lifetime", lifetime)
	if err != nil {
		return nil, err
	}
	defer a.stop()
	linkAddr, err := a.waitLine("link ", 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("node a: %w", err)
	}
	b, err := startNode(exe, stderr, "direct-node", "--id", "b", "--peer-id", "a", "--listen", "127.0.0.1:0", "--peer", linkAddr, "--lifetime", lifetime)
	if err != nil {
		return nil, err
	}
	defer b.stop()
	addrA, err := a.waitLine("ready ", 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("node a: %w", err)
	}
	addrB, err := b.waitLine("ready ", 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("node b: %w", err)
	}
	cfg.Servers = []string{addrA, addrB}
	if cfg.Progress != nil {
		fmt.Fprintf(cfg.Progress, "direct nodes: a %s (pid %d), b %s (pid %d), link %s\n", addrA, a.cmd.Process.Pid, addrB, b.cmd.Process.Pid, linkAddr)
	}

	cpuA0, errA := procCPU(a.cmd.Process.Pid)
	cpuB0, errB := procCPU(b.cmd.Process.Pid)
	sysA0, _ := procSyscalls(a.cmd.Process.Pid)
	sysB0, _ := procSyscalls(b.cmd.Process.Pid)
	xres, err := runXnode(cfg)
	if err != nil {
		return nil, err
	}
	cpuA1, errA1 := procCPU(a.cmd.Process.Pid)
	cpuB1, errB1 := procCPU(b.cmd.Process.Pid)
	sysA1, _ := procSyscalls(a.cmd.Process.Pid)
	sysB1, _ := procSyscalls(b.cmd.Process.Pid)
	xres.Mode = strings.Replace(xres.Mode, "xnode", "direct", 1)
	res := &directResult{result: xres}
	if delivered := xres.Sent - xres.Errors - xres.Lost; delivered > 0 {
		if errors.Join(errA, errB, errA1, errB1) == nil {
			res.NodeCPUMsPer1k = (cpuA1 - cpuA0 + cpuB1 - cpuB0).Seconds() * 1e3 / (float64(delivered) / 1e3)
		}
		res.NodeSyscallsPer1k = float64(sysA1-sysA0+sysB1-sysB0) / (float64(delivered) / 1e3)
	}
	return res, nil
}

// childNode is a running chatbench child process: a direct-node, or the
// login-floor.
type childNode struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // its stdout, line by line; closed at EOF
}

func startNode(exe string, stderr io.Writer, mode string, args ...string) (*childNode, error) {
	cmd := exec.Command(exe, append([]string{mode}, args...)...)
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe() // closing it (or our death) stops the node
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", mode, err)
	}
	c := &childNode{cmd: cmd, stdin: stdin, lines: make(chan string, 16)}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case c.lines <- sc.Text():
			default: // nobody waits for more than the first lines
			}
		}
	}()
	return c, nil
}

// waitLine returns the rest of the first stdout line starting with prefix.
func (c *childNode) waitLine(prefix string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				return "", fmt.Errorf("exited before printing %q", prefix)
			}
			if rest, found := strings.CutPrefix(line, prefix); found {
				return rest, nil
			}
		case <-t.C:
			return "", fmt.Errorf("no %q line within %s", prefix, timeout)
		}
	}
}

// stop closes the node's stdin, which ends it; it is killed if it has not
// exited within 3 s.
func (c *childNode) stop() {
	c.stdin.Close()
	done := make(chan struct{})
	go func() {
		for range c.lines {
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
	_ = c.cmd.Wait()
}

// procCPU returns the user+system CPU time of pid (all its threads).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; the rest follows its ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	const clkTck = 100 // USER_HZ: 100 on every Linux architecture Go runs on
	return time.Duration(utime+stime) * time.Second / clkTck, nil
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// lockedWriter serialises writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
