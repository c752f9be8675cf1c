package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"
)

type xnodeConfig struct {
	Servers  []string
	Users    int
	Window   int
	Rate     float64
	Duration time.Duration
	Warmup   time.Duration
	Size     int
	Prefix   string
	Progress io.Writer
	Watch    map[string]int // process name -> pid whose CPU per 1k messages is reported
	TLS      *tls.Config    // if set, the client ports serve TLS (tlsFlag)
	WS       bool           // Servers are web ports: the protocol over WebSocket (ws.go)
}

// parsePids reads "relay=123,msg-1=456".
func parsePids(s string) (map[string]int, error) {
	out := map[string]int{}
	if s == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		name, v, ok := strings.Cut(kv, "=")
		pid, err := strconv.Atoi(v)
		if !ok || err != nil || pid <= 0 {
			return nil, fmt.Errorf("--pids: %q is not name=pid", kv)
		}
		out[name] = pid
	}
	return out, nil
}

func (c *xnodeConfig) validate() error {
	var errs []error
	if len(c.Servers) < 2 {
		errs = append(errs, errors.New("--servers needs at least two addresses: the benchmark is cross-server"))
	}
	if c.Users < 2 || c.Users%2 != 0 {
		errs = append(errs, errors.New("--users must be an even number ≥ 2"))
	}
	if c.Rate == 0 && c.Window < 1 {
		errs = append(errs, errors.New("--window must be ≥ 1"))
	}
	if c.Duration <= 0 || c.Duration > time.Hour {
		errs = append(errs, errors.New("--duration must be in (0, 1h]"))
	}
	if c.Size < 32 || c.Size > 4000 {
		errs = append(errs, errors.New("--size must be 32..4000 bytes"))
	}
	return errors.Join(errs...)
}

// result is what a run reports.
type result struct {
	Mode       string  `json:"mode"`
	Servers    int     `json:"servers"`
	Users      int     `json:"users"`
	Window     int     `json:"window,omitempty"`
	Rate       float64 `json:"rate,omitempty"`
	Seconds    float64 `json:"seconds"`
	Sent       int64   `json:"sent"`
	Delivered  int64   `json:"delivered"`
	MsgsPerSec float64 `json:"msgs_per_sec"`
	P50ms      float64 `json:"p50_ms"`
	P99ms      float64 `json:"p99_ms"`
	P999ms     float64 `json:"p999_ms"`
	MaxMs      float64 `json:"max_ms"`
	Lost       int64   `json:"lost"`
	Duplicated int64   `json:"duplicated"`
	Errors     int64   `json:"errors"`
	Cores      int     `json:"cores"`
	// CPUMsPer1k is each watched process's CPU time (user+system) per
	// 1,000 delivered messages, over the measured window.
	CPUMsPer1k map[string]float64 `json:"cpu_ms_per_1k,omitempty"`
}

func (r *result) table(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tusers\tmsgs/s\tp50 ms\tp99 ms\tp999 ms\tmax ms\tsent\tdelivered\tlost\tdup\terrors\tcores\t")
	fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t%d\t%d\t%d\t%d\t%d\t\n",
		r.Mode, r.Users, r.MsgsPerSec, r.P50ms, r.P99ms, r.P999ms, r.MaxMs, r.Sent, r.Delivered, r.Lost, r.Duplicated, r.Errors, r.Cores)
	tw.Flush()
	if len(r.CPUMsPer1k) > 0 {
		names := make([]string, 0, len(r.CPUMsPer1k))
		for n := range r.CPUMsPer1k {
			names = append(names, n)
		}
		slices.Sort(names)
		fmt.Fprint(w, "CPU ms per 1k delivered:")
		for _, n := range names {
			fmt.Fprintf(w, "  %s %.2f", n, r.CPUMsPer1k[n])
		}
		fmt.Fprintln(w)
	}
}

type benchUser struct {
	name, partner string
	conn          net.Conn
	br            *bufio.Reader
	wbuf          []byte
	seq           uint64 // next sequence number to send (only the writer touches it)

	// receive side, touched only by the user's reader goroutine
	seen      []uint64 // bitset of sequence numbers received from the partner
	received  int64
	dups      int64
	latencies []int64
}

type benchRun struct {
	cfg                xnodeConfig
	size               int
	start, measureFrom time.Time
	measureTo          time.Time
	stopSending        atomic.Bool
	sent, errs         atomic.Int64
	deliveredInWindow  atomic.Int64
	totalReceived      atomic.Int64
	cpuMu              sync.Mutex
	cpuPer1k           map[string]float64
}

func runXnode(cfg xnodeConfig) (*result, error) {
	r := &benchRun{cfg: cfg, size: cfg.Size}
	users, err := r.connect()
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, u := range users {
			u.conn.Close()
		}
	}()

	r.start = time.Now()
	r.measureFrom = r.start.Add(cfg.Warmup)
	cpuAtStart := map[string]time.Duration{}
	cpuTimer := time.AfterFunc(cfg.Warmup, func() {
		for n, pid := range cfg.Watch {
			if c, err := procCPU(pid); err == nil {
				r.cpuMu.Lock()
				cpuAtStart[n] = c
				r.cpuMu.Unlock()
			}
		}
	})
	defer cpuTimer.Stop()
	r.measureTo = r.measureFrom.Add(cfg.Duration)
	// Closed loop: queue each user's first window before its reader starts,
	// so the reader (which sends on every reply) never sends concurrently.
	if cfg.Rate == 0 {
		for _, u := range users {
			for i := 0; i < cfg.Window; i++ {
				if err := r.send(u); err != nil {
					return nil, err
				}
			}
		}
	}
	var readers sync.WaitGroup
	for _, u := range users {
		readers.Add(1)
		go func() {
			defer readers.Done()
			r.readLoop(u)
		}()
	}
	if cfg.Rate > 0 {
		r.pace(users)
	} else {
		r.progressUntil(r.measureTo)
		r.stopSending.Store(true)
	}
	r.cpuMu.Lock()
	for n, pid := range cfg.Watch {
		if c, err := procCPU(pid); err == nil {
			if c0, ok := cpuAtStart[n]; ok && r.deliveredInWindow.Load() > 0 {
				if r.cpuPer1k == nil {
					r.cpuPer1k = map[string]float64{}
				}
				r.cpuPer1k[n] = float64((c - c0).Milliseconds()) / (float64(r.deliveredInWindow.Load()) / 1000)
			}
		}
	}
	r.cpuMu.Unlock()
	// Drain: wait for everything sent to arrive, at most 10 s.
	drainBy := time.Now().Add(10 * time.Second)
	for r.totalReceived.Load() < r.sent.Load()-r.errs.Load() && time.Now().Before(drainBy) {
		time.Sleep(10 * time.Millisecond)
	}
	for _, u := range users {
		_ = u.conn.SetReadDeadline(time.Now())
	}
	readers.Wait()
	return r.result(users), nil
}

// connect opens and logs in every user, 64 at a time.
func (r *benchRun) connect() ([]*benchUser, error) {
	cfg := r.cfg
	users := make([]*benchUser, cfg.Users)
	for k := 0; k < cfg.Users/2; k++ {
		a := &benchUser{name: fmt.Sprintf("%s-%d-a", cfg.Prefix, k)}
		b := &benchUser{name: fmt.Sprintf("%s-%d-b", cfg.Prefix, k)}
		a.partner, b.partner = b.name, a.name
		users[2*k], users[2*k+1] = a, b
	}
	sem := make(chan struct{}, 64)
	errc := make(chan error, len(users))
	var wg sync.WaitGroup
	for i, u := range users {
		addr := cfg.Servers[(i/2+i%2)%len(cfg.Servers)]
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := u.login(addr, cfg.TLS, cfg.WS); err != nil {
				errc <- err
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		for _, u := range users {
			if u.conn != nil {
				u.conn.Close()
			}
		}
		return nil, err
	}
	return users, nil
}

func (u *benchUser) login(addr string, tc *tls.Config, ws bool) error {
	c, err := dialUser(&net.Dialer{Timeout: 5 * time.Second}, addr, tc, ws)
	if err != nil {
		return fmt.Errorf("connect %s: %w", addr, err)
	}
	u.conn = c
	u.br = bufio.NewReaderSize(c, 64<<10)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "{\"cmd\":\"login\",\"name\":%q}\n", u.name); err != nil {
		return fmt.Errorf("login %s: %w", u.name, err)
	}
	line, err := u.br.ReadSlice('\n')
	if err != nil {
		return fmt.Errorf("login %s: %w", u.name, err)
	}
	if !bytes.Contains(line, []byte(`"ok":true`)) {
		return fmt.Errorf("login %s refused: %s", u.name, bytes.TrimSpace(line))
	}
	_ = c.SetDeadline(time.Time{})
	return nil
}

// send writes one chat message: content is "<unix nanos> <seq> " padded.
func (r *benchRun) send(u *benchUser) error {
	b := u.wbuf[:0]
	b = append(b, `{"cmd":"chat","recv":"`...)
	b = append(b, u.partner...)
	b = append(b, `","content":"`...)
	mark := len(b)
	b = strconv.AppendInt(b, time.Now().UnixNano(), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, u.seq, 10)
	b = append(b, ' ')
	for len(b)-mark < r.size {
		b = append(b, 'x')
	}
	b = append(b, "\"}\n"...)
	u.wbuf = b
	u.seq++
	r.sent.Add(1)
	_ = u.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := u.conn.Write(b); err != nil {
		return fmt.Errorf("send as %s: %w", u.name, err)
	}
	return nil
}

var (
	chatEventPrefix = []byte(`{"event":"chat"`)
	chatReplyOK     = []byte(`{"reply":"chat","ok":true`)
	chatReplyPrefix = []byte(`{"reply":"chat"`)
	contentKey      = []byte(`"content":"`)
)

func (r *benchRun) readLoop(u *benchUser) {
	closedLoop := r.cfg.Rate == 0
	for {
		line, err := u.br.ReadSlice('\n')
		if err != nil {
			return
		}
		now := time.Now()
		switch {
		case bytes.HasPrefix(line, chatEventPrefix):
			r.received(u, line, now)
		case bytes.HasPrefix(line, chatReplyPrefix):
			if !bytes.HasPrefix(line, chatReplyOK) {
				r.errs.Add(1)
			}
			if closedLoop && !r.stopSending.Load() {
				if err := r.send(u); err != nil {
					return
				}
			}
		}
	}
}

func (r *benchRun) received(u *benchUser, line []byte, now time.Time) {
	i := bytes.Index(line, contentKey)
	if i < 0 {
		return
	}
	rest := line[i+len(contentKey):]
	sp := bytes.IndexByte(rest, ' ')
	if sp < 0 {
		return
	}
	ts, err1 := strconv.ParseInt(string(rest[:sp]), 10, 64)
	rest = rest[sp+1:]
	sp = bytes.IndexByte(rest, ' ')
	if sp < 0 || err1 != nil {
		return
	}
	seq, err := strconv.ParseUint(string(rest[:sp]), 10, 64)
	if err != nil {
		return
	}
	word, bit := seq/64, seq%64
	for uint64(len(u.seen)) <= word {
		u.seen = append(u.seen, 0)
	}
	if u.seen[word]&(1<<bit) != 0 {
		u.dups++
		return
	}
	u.seen[word] |= 1 << bit
	u.received++
	r.totalReceived.Add(1)
	if !now.Before(r.measureFrom) && now.Before(r.measureTo) {
		r.deliveredInWindow.Add(1)
		u.latencies = append(u.latencies, now.UnixNano()-ts)
	}
}

// pace sends at the aggregate rate, round-robin over senders, in 1 ms steps.
func (r *benchRun) pace(users []*benchUser) {
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	lastProgress := time.Now()
	next := 0
	for now := range t.C {
		if !now.Before(r.measureTo) {
			return
		}
		due := int64(r.cfg.Rate * now.Sub(r.start).Seconds())
		for r.sent.Load() < due {
			if err := r.send(users[next]); err != nil {
				return
			}
			next = (next + 1) % len(users)
		}
		if now.Sub(lastProgress) >= time.Second {
			lastProgress = now
			r.progress(now)
		}
	}
}

func (r *benchRun) progressUntil(end time.Time) {
	for {
		d := time.Until(end)
		if d <= 0 {
			return
		}
		time.Sleep(min(d, time.Second))
		r.progress(time.Now())
	}
}

func (r *benchRun) progress(now time.Time) {
	if r.cfg.Progress == nil {
		return
	}
	phase := "warmup"
	if !now.Before(r.measureFrom) {
		phase = "measuring"
	}
	fmt.Fprintf(r.cfg.Progress, "%5.1fs %-9s sent %d received %d errors %d\n",
		now.Sub(r.start).Seconds(), phase, r.sent.Load(), r.totalReceived.Load(), r.errs.Load())
}

func (r *benchRun) result(users []*benchUser) *result {
	res := &result{
		Mode:    "xnode-window",
		Servers: len(r.cfg.Servers),
		Users:   len(users),
		Window:  r.cfg.Window,
		Seconds: r.cfg.Duration.Seconds(),
		Sent:    r.sent.Load(),
		Errors:  r.errs.Load(),
		Cores:   runtime.NumCPU(),
	}
	res.CPUMsPer1k = r.cpuPer1k
	if r.cfg.Rate > 0 {
		res.Mode, res.Window, res.Rate = "xnode-rate", 0, r.cfg.Rate
	}
	var lat []int64
	var received int64
	for _, u := range users {
		lat = append(lat, u.latencies...)
		received += u.received
		res.Duplicated += u.dups
	}
	res.Delivered = r.deliveredInWindow.Load()
	res.MsgsPerSec = float64(res.Delivered) / r.cfg.Duration.Seconds()
	res.Lost = max(res.Sent-res.Errors-received, 0)
	if len(lat) > 0 {
		slices.Sort(lat)
		q := func(p float64) float64 {
			return float64(lat[min(int(p*float64(len(lat))), len(lat)-1)]) / 1e6
		}
		res.P50ms, res.P99ms, res.P999ms, res.MaxMs = q(0.5), q(0.99), q(0.999), float64(lat[len(lat)-1])/1e6
	}
	return res
}
