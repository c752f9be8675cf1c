package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/chatrelay/chatrelay/internal/cli"
	"github.com/chatrelay/chatrelay/msgserver"
)

// idle mode: open many logged-in, idle sessions on one message server and
// measure what they cost it (resident memory) and how fast it logs them in.

type idleConfig struct {
	Server      string
	Sessions    int
	Metrics     string // the server's /metrics URL (RSS from process_resident_memory_bytes)
	PID         int    // or its pid (RSS from /proc/<pid>/status)
	Concurrency int
	Hold        time.Duration
	Settle      time.Duration
	PingEvery   time.Duration
	OpenTimeout time.Duration
	Prefix      string
	SourceIPs   string        // "auto", "none" or a comma-separated list
	KeyFile     string        // signs a token for each login (as msgserver token does); empty: name-only logins
	TLS         *tls.Config   // if set, the client port serves TLS (tlsFlag)
	WS          bool          // Server is a web port: the sessions are WebSockets (ws.go)
	Tail        time.Duration // CPU per login counts this long past the last login
	RedisPID    int           // if set, Redis's CPU per login is read from /proc/<pid> too
	Floor       bool          // measure the login baseline (loginfloor.go) instead of Server
	Progress    io.Writer
}

// perSourceIP is how many connections one source address opens to one
// destination: the ephemeral port range (32768..60999 by default) leaves
// about 28k, and a margin keeps a few for everything else on the box.
const perSourceIP = 25000

// maxIdleFailures stops opening sessions after this many failures.
const maxIdleFailures = 100

func (c *idleConfig) validate() error {
	var errs []error
	if c.Server == "" && !c.Floor {
		errs = append(errs, errors.New("--server is required (or --floor)"))
	}
	if c.Sessions < 1 || c.Sessions > 2_000_000 {
		errs = append(errs, errors.New("--sessions must be in 1..2000000"))
	}
	if c.Metrics == "" && c.PID == 0 && !c.Floor {
		errs = append(errs, errors.New("give --metrics URL or --pid to read the server's RSS"))
	}
	if c.Concurrency < 1 || c.Concurrency > 10000 {
		errs = append(errs, errors.New("--concurrency must be in 1..10000"))
	}
	if c.Hold < 0 || c.Hold > 24*time.Hour {
		errs = append(errs, errors.New("--hold must be in [0, 24h]"))
	}
	if c.Settle < 0 || c.Settle > time.Minute {
		errs = append(errs, errors.New("--settle must be in [0, 1m]"))
	}
	if c.Tail < 0 {
		errs = append(errs, errors.New("--tail must not be negative"))
	}
	if c.PingEvery < time.Second {
		errs = append(errs, errors.New("--ping-every must be at least 1s"))
	}
	if c.OpenTimeout <= 0 || c.OpenTimeout > time.Hour {
		errs = append(errs, errors.New("--open-timeout must be in (0, 1h]"))
	}
	return errors.Join(errs...)
}

type idleResult struct {
	Mode            string   `json:"mode"`
	Server          string   `json:"server"`
	Sessions        int      `json:"sessions"`
	LoggedIn        int64    `json:"logged_in"`
	Failed          int64    `json:"failed"`
	FirstError      string   `json:"first_error,omitempty"`
	OpenSeconds     float64  `json:"open_seconds"`
	LoginsPerSec    float64  `json:"logins_per_sec"`
	RSSSource       string   `json:"rss_source"`
	RSSBeforeBytes  int64    `json:"rss_before_bytes"`
	RSSAfterBytes   int64    `json:"rss_after_bytes"`
	RSSPerSessionKB float64  `json:"rss_per_session_kb"`
	ServerSessions  *int64   `json:"server_sessions,omitempty"` // msgserver_sessions after opening, when --metrics is given
	HoldSeconds     float64  `json:"hold_seconds"`
	Dropped         int64    `json:"dropped"` // sessions the server closed while held
	Concurrency     int      `json:"concurrency"`
	SourceIPs       int      `json:"source_ips"`
	NoFileLimit     uint64   `json:"nofile_limit"`
	Notes           []string `json:"notes,omitempty"`
	Cores           int      `json:"cores"`

	// ServerCPUMsPer1k is the server's CPU time (user+system) from the
	// first connection to TailSeconds after the last login, per 1 000
	// logins (ms per 1 000 = µs per login). The tail takes in what a login
	// sets off for later: parking the idle session, the second inbox read.
	ServerCPUMsPer1k float64 `json:"server_cpu_ms_per_1k_logins"`
	RedisCPUMsPer1k  float64 `json:"redis_cpu_ms_per_1k_logins,omitempty"` // the same for Redis (--redis-pid)
	TailSeconds      float64 `json:"tail_seconds"`
	Tokens           string  `json:"tokens,omitempty"` // the tokens' algorithm, when logins carry them
}

func (r *idleResult) table(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tsessions\tlogged in\tfailed\topen s\tlogins/s\tserver CPU µs/login\tRedis CPU µs/login\tRSS before MiB\tRSS after MiB\tKB/session\tdropped\tcores\t")
	fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%.2f\t%.0f\t%.0f\t%.0f\t%.1f\t%.1f\t%.2f\t%d\t%d\t\n",
		r.Mode, r.Sessions, r.LoggedIn, r.Failed, r.OpenSeconds, r.LoginsPerSec, r.ServerCPUMsPer1k, r.RedisCPUMsPer1k,
		float64(r.RSSBeforeBytes)/(1<<20), float64(r.RSSAfterBytes)/(1<<20), r.RSSPerSessionKB,
		r.Dropped, r.Cores)
	tw.Flush()
	if r.Tokens != "" {
		fmt.Fprintf(w, "every login carried a %s token\n", r.Tokens)
	}
	if r.ServerSessions != nil {
		fmt.Fprintf(w, "server reports msgserver_sessions %d after opening\n", *r.ServerSessions)
	}
	if r.FirstError != "" {
		fmt.Fprintf(w, "first error: %s\n", r.FirstError)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

func runIdleCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("chatbench idle", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cli.Usage(fs, "chatbench idle: open many idle logged-in sessions; report login rate, the server's CPU per login and RSS per session.\n"+
		"With --floor, the same against the login baseline: a bare server that accepts, reads the login, answers and holds.")
	var cfg idleConfig
	fs.StringVar(&cfg.Server, "server", "127.0.0.1:7001", "message server client address")
	fs.IntVar(&cfg.Sessions, "sessions", 10000, "sessions to open and log in")
	fs.StringVar(&cfg.Metrics, "metrics", "", "the server's /metrics URL, for process_resident_memory_bytes (e.g. http://127.0.0.1:9200/metrics)")
	fs.IntVar(&cfg.PID, "pid", 0, "the server's pid: read VmRSS from /proc/<pid>/status instead of /metrics")
	fs.IntVar(&cfg.Concurrency, "concurrency", 256, "logins in progress at once")
	fs.DurationVar(&cfg.Hold, "hold", 5*time.Second, "how long to hold the sessions open after measuring")
	fs.DurationVar(&cfg.Settle, "settle", 2*time.Second, "wait after the last login before reading RSS")
	fs.DurationVar(&cfg.PingEvery, "ping-every", 30*time.Second, "each held session sends {\"cmd\":\"ping\"} this often")
	fs.DurationVar(&cfg.OpenTimeout, "open-timeout", 5*time.Minute, "give up opening sessions after this long")
	fs.StringVar(&cfg.Prefix, "prefix", "idle", "user name prefix (a random run id is added)")
	fs.StringVar(&cfg.KeyFile, "key-file", "", "sign a login token for each session with this key (msgserver token's --key-file), for servers run with --auth-key-file")
	fs.StringVar(&cfg.SourceIPs, "source-ips", "auto", `local addresses to dial from, round-robin: comma-separated, "none", or "auto" (127.0.0.2, .3, ... one per 25000 sessions when the server is on loopback and one address would run out of ports)`)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	quiet := fs.Bool("quiet", false, "no progress lines")
	tlsCA := tlsFlag(fs)
	fs.BoolVar(&cfg.WS, "ws", false, "--server is a web port (msgserver --http-listen): open WebSocket sessions")
	fs.DurationVar(&cfg.Tail, "tail", 2*time.Second, "CPU per login counts this long past the last login (at most --settle): a login's later work, parking and the second inbox read, is in it")
	fs.IntVar(&cfg.RedisPID, "redis-pid", 0, "Redis's pid: report its CPU per login too, over the same time")
	fs.BoolVar(&cfg.Floor, "floor", false, "start the login baseline (chatbench login-floor) and measure it instead of --server")
	if code, done := parseFlags(fs, args, stderr); done {
		return code
	}
	var err error
	if cfg.TLS, err = clientTLS(*tlsCA); err != nil {
		fmt.Fprintln(stderr, "chatbench:", err)
		return 2
	}
	if err := cfg.validate(); err != nil {
		fmt.Fprintln(stderr, "chatbench:", err)
		return 2
	}
	if !*quiet {
		cfg.Progress = stderr
	}
	if cfg.Floor {
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintln(stderr, "chatbench:", err)
			return 1
		}
		life := cfg.OpenTimeout + cfg.Settle + cfg.Hold + time.Minute // outlives the run
		floor, err := startNode(exe, stderr, "login-floor", "--lifetime", life.String())
		if err != nil {
			fmt.Fprintln(stderr, "chatbench:", err)
			return 1
		}
		defer floor.stop()
		if cfg.Server, err = floor.waitLine("ready ", 10*time.Second); err != nil {
			fmt.Fprintln(stderr, "chatbench: login-floor:", err)
			return 1
		}
		cfg.PID, cfg.Metrics, cfg.KeyFile, cfg.TLS, cfg.WS = floor.cmd.Process.Pid, "", "", nil, false
	}
	res, err := runIdle(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "chatbench:", err)
		return 1
	}
	return report(stdout, res, *asJSON, res.Failed > 0 || res.Dropped > 0)
}

// raiseNoFile raises this process's open-file soft limit to its hard limit
// and returns the limit now in force.
func raiseNoFile() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return rl.Cur, err
		}
	}
	return rl.Cur, nil
}

// sourceIPs resolves the --source-ips setting to the addresses to dial from
// (nil: let the kernel choose).
func sourceIPs(setting, server string, sessions int) ([]net.IP, error) {
	switch setting {
	case "", "none":
		return nil, nil
	case "auto":
		host, _, err := net.SplitHostPort(server)
		if err != nil {
			return nil, err
		}
		ip := net.ParseIP(host)
		if ip == nil || ip.To4() == nil || !ip.IsLoopback() || sessions <= perSourceIP {
			return nil, nil
		}
		n := (sessions + perSourceIP - 1) / perSourceIP
		if n > 250 {
			return nil, fmt.Errorf("%d sessions need more than 250 loopback source addresses", sessions)
		}
		ips := make([]net.IP, n)
		for i := range ips {
			ips[i] = net.IPv4(127, 0, 0, byte(2+i))
		}
		return ips, nil
	}
	var ips []net.IP
	for _, s := range strings.Split(setting, ",") {
		ip := net.ParseIP(strings.TrimSpace(s))
		if ip == nil {
			return nil, fmt.Errorf("--source-ips: %q is not an IP address", s)
		}
		ips = append(ips, ip)
	}
	return ips, nil
}

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (linux/in.h): with a source
// address bound, the port is chosen at connect time per 4-tuple, so each
// source address can reach ~28k connections per destination rather than
// sharing one bind-time port pool.
const ipBindAddressNoPort = 24

func noPortControl(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	})
	if err != nil {
		return err
	}
	_ = serr // an old kernel without it still works, with fewer ports
	return nil
}

type idleRun struct {
	cfg     idleConfig
	dialers []*net.Dialer
	runID   string
	tokens  []string // session i's login token, when KeyFile is set

	mu    sync.Mutex
	conns []net.Conn
	first string // first error

	loggedIn, failed, dropped atomic.Int64
	lastLogin                 atomic.Int64 // unix nanos of the latest login reply
	closing                   atomic.Bool
	readers                   sync.WaitGroup
}

func runIdle(cfg idleConfig) (*idleResult, error) {
	mode := "idle"
	if cfg.Floor {
		mode = "floor"
	}
	res := &idleResult{
		Mode:        mode,
		Server:      cfg.Server,
		Sessions:    cfg.Sessions,
		Concurrency: cfg.Concurrency,
		HoldSeconds: cfg.Hold.Seconds(),
		Cores:       runtime.NumCPU(),
	}
	limit, err := raiseNoFile()
	res.NoFileLimit = limit
	if err != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("could not raise the open-file limit: %v", err))
	}
	if limit < uint64(cfg.Sessions)+100 {
		res.Notes = append(res.Notes, fmt.Sprintf("open-file limit %d (raised to the hard limit) is below sessions+100 = %d: expect failed sessions; raise the hard limit (ulimit -Hn) first", limit, cfg.Sessions+100))
	}
	ips, err := sourceIPs(cfg.SourceIPs, cfg.Server, cfg.Sessions)
	if err != nil {
		return nil, err
	}
	r := &idleRun{cfg: cfg, runID: randomRunID()}
	if cfg.KeyFile != "" {
		// Made before the clock starts: signing is the issuer's cost, not the server's.
		if res.Tokens, err = r.makeTokens(); err != nil {
			return nil, err
		}
	}
	if len(ips) == 0 {
		r.dialers = []*net.Dialer{{Timeout: 5 * time.Second}}
		if cfg.Sessions > perSourceIP {
			res.Notes = append(res.Notes, fmt.Sprintf("%d sessions from one source address: past ~28k per destination the ephemeral ports run out; use --source-ips", cfg.Sessions))
		}
	} else {
		for _, ip := range ips {
			r.dialers = append(r.dialers, &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: ip}, Control: noPortControl})
		}
	}
	res.SourceIPs = len(ips)

	rss := r.rssReader()
	res.RSSSource = rss.source
	before, err := rss.read()
	if err != nil {
		return nil, fmt.Errorf("read the server's RSS before opening: %w", err)
	}
	res.RSSBeforeBytes = before

	defer r.closeAll()
	cpu := r.cpuReader()
	cpu0, cpuErr := cpu()
	var redis0 time.Duration
	if cfg.RedisPID != 0 {
		redis0, err = procCPU(cfg.RedisPID)
		cpuErr = errors.Join(cpuErr, err)
	}
	start := time.Now()
	r.open()
	res.LoggedIn, res.Failed = r.loggedIn.Load(), r.failed.Load()
	tail := min(cfg.Tail, cfg.Settle) // within the settle
	time.Sleep(tail)
	res.TailSeconds = tail.Seconds()
	perLogin := func(d time.Duration) float64 { return d.Seconds() * 1e3 / (float64(res.LoggedIn) / 1e3) }
	cpu1, err := cpu()
	var redis1 time.Duration
	if cfg.RedisPID != 0 {
		var rerr error
		redis1, rerr = procCPU(cfg.RedisPID)
		err = errors.Join(err, rerr)
	}
	if err = errors.Join(cpuErr, err); err != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("CPU not read: %v", err))
	} else if res.LoggedIn > 0 {
		res.ServerCPUMsPer1k = perLogin(cpu1 - cpu0)
		if cfg.RedisPID != 0 {
			res.RedisCPUMsPer1k = perLogin(redis1 - redis0)
		}
	}
	if last := r.lastLogin.Load(); last > 0 {
		res.OpenSeconds = time.Unix(0, last).Sub(start).Seconds()
		if res.OpenSeconds > 0 {
			res.LoginsPerSec = float64(res.LoggedIn) / res.OpenSeconds
		}
	}
	r.mu.Lock()
	res.FirstError = r.first
	r.mu.Unlock()
	r.progressf("opened %d sessions (%d failed) in %.2fs; settling %s", res.LoggedIn, res.Failed, res.OpenSeconds, cfg.Settle)

	time.Sleep(cfg.Settle - tail)
	if after, err := rss.read(); err != nil {
		// A server out of file descriptors cannot read its own /proc to
		// export its RSS; /proc/<pid> read from here still works.
		res.Notes = append(res.Notes, fmt.Sprintf("RSS after opening not read (a server out of file descriptors cannot export it; --pid reads it from outside): %v", err))
	} else {
		res.RSSAfterBytes = after
		if res.LoggedIn > 0 {
			res.RSSPerSessionKB = float64(after-before) / float64(res.LoggedIn) / 1024
		}
	}
	if cfg.Metrics != "" {
		if v, ok, err := scrapeMetric(cfg.Metrics, "msgserver_sessions"); err == nil && ok {
			n := int64(v)
			res.ServerSessions = &n
		}
	}

	r.progressf("holding %d sessions for %s", res.LoggedIn, cfg.Hold)
	r.hold(cfg.Hold)
	res.Dropped = r.dropped.Load()
	return res, nil
}

// name is session i's user name.
func (r *idleRun) name(i int) string { return fmt.Sprintf("%s-%s-%d", r.cfg.Prefix, r.runID, i) }

// makeTokens signs a login token for every session with KeyFile and
// returns their algorithm.
func (r *idleRun) makeTokens() (string, error) {
	data, err := os.ReadFile(r.cfg.KeyFile)
	if err != nil {
		return "", err
	}
	key, err := msgserver.ParseSigningKey(data)
	if err != nil {
		return "", fmt.Errorf("--key-file %s: %w", r.cfg.KeyFile, err)
	}
	r.tokens = make([]string, r.cfg.Sessions)
	for i := range r.tokens {
		if r.tokens[i], err = key.Token(r.name(i), r.cfg.OpenTimeout+r.cfg.Settle+time.Hour, "", ""); err != nil {
			return "", err
		}
	}
	return key.Algorithm(), nil
}

// cpuReader returns how to read the server's CPU time: from /proc with
// --pid, else process_cpu_seconds_total from --metrics.
func (r *idleRun) cpuReader() func() (time.Duration, error) {
	if pid := r.cfg.PID; pid != 0 {
		return func() (time.Duration, error) { return procCPU(pid) }
	}
	url := r.cfg.Metrics
	return func() (time.Duration, error) {
		v, ok, err := scrapeMetric(url, "process_cpu_seconds_total")
		if err == nil && !ok {
			err = fmt.Errorf("%s has no process_cpu_seconds_total", url)
		}
		return time.Duration(v * float64(time.Second)), err
	}
}

func randomRunID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (r *idleRun) progressf(format string, args ...any) {
	if r.cfg.Progress != nil {
		fmt.Fprintf(r.cfg.Progress, format+"\n", args...)
	}
}

// open dials and logs in every session, Concurrency at a time, until all
// are in, OpenTimeout passes, or maxIdleFailures have failed.
func (r *idleRun) open() {
	cfg := r.cfg
	deadline := time.Now().Add(cfg.OpenTimeout)
	sem := make(chan struct{}, cfg.Concurrency)
	var wg sync.WaitGroup
	stopProgress := make(chan struct{})
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				r.progressf("  %d/%d logged in, %d failed", r.loggedIn.Load(), cfg.Sessions, r.failed.Load())
			case <-stopProgress:
				return
			}
		}
	}()
	for i := 0; i < cfg.Sessions; i++ {
		if r.failed.Load() >= maxIdleFailures || time.Now().After(deadline) {
			r.fail(fmt.Errorf("stopped opening after %d of %d sessions (%d failed)", i, cfg.Sessions, r.failed.Load()))
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := r.login(i); err != nil {
				r.fail(err)
			}
		}()
	}
	wg.Wait()
	close(stopProgress)
	<-progressDone
}

func (r *idleRun) fail(err error) {
	r.failed.Add(1)
	r.mu.Lock()
	if r.first == "" {
		r.first = err.Error()
	}
	r.mu.Unlock()
}

var loginOK = []byte(`"ok":true`)

// login opens session i and logs it in; on success the connection is kept
// and a reader goroutine drains what the server sends.
func (r *idleRun) login(i int) error {
	d := r.dialers[i%len(r.dialers)]
	c, err := dialUser(d, r.cfg.Server, r.cfg.TLS, r.cfg.WS)
	if err != nil {
		return fmt.Errorf("connect %s: %w", r.cfg.Server, err)
	}
	name := r.name(i)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if r.tokens != nil {
		_, err = fmt.Fprintf(c, "{\"cmd\":\"login\",\"name\":%q,\"token\":%q}\n", name, r.tokens[i])
	} else {
		_, err = fmt.Fprintf(c, "{\"cmd\":\"login\",\"name\":%q}\n", name)
	}
	if err != nil {
		c.Close()
		return fmt.Errorf("login %s: %w", name, err)
	}
	// One reply line; read it with a small buffer (no bufio: 100k sessions
	// of 4 KiB buffers would weigh on the box the server runs on).
	var buf [512]byte
	n := 0
	for !bytes.Contains(buf[:n], []byte{'\n'}) {
		if n == len(buf) {
			c.Close()
			return fmt.Errorf("login %s: reply longer than %d bytes", name, len(buf))
		}
		m, err := c.Read(buf[n:])
		n += m
		if err != nil && !bytes.Contains(buf[:n], []byte{'\n'}) {
			c.Close()
			return fmt.Errorf("login %s: %w", name, err)
		}
	}
	now := time.Now().UnixNano()
	line, _, _ := bytes.Cut(buf[:n], []byte{'\n'})
	if !bytes.Contains(line, loginOK) {
		c.Close()
		return fmt.Errorf("login %s refused: %s", name, bytes.TrimSpace(line))
	}
	_ = c.SetDeadline(time.Time{})
	for {
		last := r.lastLogin.Load()
		if now <= last || r.lastLogin.CompareAndSwap(last, now) {
			break
		}
	}
	r.mu.Lock()
	r.conns = append(r.conns, c)
	r.mu.Unlock()
	r.loggedIn.Add(1)
	r.readers.Add(1)
	go r.drain(c)
	return nil
}

// drain reads and discards what the server sends (pong replies) until the
// connection ends; an end we did not cause counts as dropped.
func (r *idleRun) drain(c net.Conn) {
	defer r.readers.Done()
	var buf [256]byte
	for {
		if _, err := c.Read(buf[:]); err != nil {
			if !r.closing.Load() {
				r.dropped.Add(1)
			}
			return
		}
	}
}

// hold keeps the sessions open for d, pinging each every PingEvery.
func (r *idleRun) hold(d time.Duration) {
	end := time.Now().Add(d)
	t := time.NewTicker(r.cfg.PingEvery)
	defer t.Stop()
	ping := []byte("{\"cmd\":\"ping\"}\n")
	for {
		left := time.Until(end)
		if left <= 0 {
			return
		}
		select {
		case <-t.C:
			r.mu.Lock()
			conns := r.conns
			r.mu.Unlock()
			for _, c := range conns {
				if time.Now().After(end) {
					break
				}
				_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
				_, _ = c.Write(ping) // a failure shows up in drain as dropped
			}
			r.progressf("  pinged %d sessions, %d dropped so far", len(conns), r.dropped.Load())
		case <-time.After(left):
			return
		}
	}
}

func (r *idleRun) closeAll() {
	r.closing.Store(true)
	r.mu.Lock()
	conns := r.conns
	r.conns = nil
	r.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	r.readers.Wait()
}

type rssReader struct {
	source string
	read   func() (int64, error)
}

func (r *idleRun) rssReader() rssReader {
	if r.cfg.PID != 0 {
		pid := r.cfg.PID
		return rssReader{source: fmt.Sprintf("/proc/%d/status VmRSS", pid), read: func() (int64, error) { return procRSS(pid) }}
	}
	url := r.cfg.Metrics
	return rssReader{source: url + " process_resident_memory_bytes", read: func() (int64, error) {
		v, ok, err := scrapeMetric(url, "process_resident_memory_bytes")
		if err != nil {
			return 0, err
		}
		if !ok {
			return 0, fmt.Errorf("%s has no process_resident_memory_bytes", url)
		}
		return int64(v), nil
	}}
}

// procRSS reads VmRSS of pid from /proc, in bytes.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) < 1 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmRSS of %d: %w", pid, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// scrapeMetric fetches a Prometheus text page and returns the value of the
// unlabelled sample name.
func scrapeMetric(url, name string) (float64, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, false, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, false, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	prefix := name + " "
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				return 0, false, fmt.Errorf("%s in %s has no value", name, url)
			}
			v, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				return 0, false, fmt.Errorf("%s in %s: %w", name, url, err)
			}
			return v, true, nil
		}
	}
	return 0, false, sc.Err()
}
