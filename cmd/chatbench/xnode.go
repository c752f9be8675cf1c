package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
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
	// Closed is what frees a closed-loop sender's slot: "delivery" (the
	// partner received the message) or "reply" (the sender's own reply).
	Closed   string
	Progress io.Writer
	Watch    map[string]int // process name -> pid whose CPU per 1k messages is reported
	TLS      *tls.Config    // if set, the client ports serve TLS (tlsFlag)
	WS       bool           // Servers are web ports: the protocol over WebSocket (ws.go)
	// Acks logs every user in with acks on: each acks the chat events it
	// gets, the ids of one read in one ack line.
	Acks bool
}

// procSyscalls returns the read and write system calls pid has made
// (syscr + syscw in /proc/PID/io).
func procSyscalls(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, err
	}
	var n int64
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if ok && (k == "syscr" || k == "syscw") {
			x, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/io: %w", pid, err)
			}
			n += x
		}
	}
	return n, nil
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
	if c.Closed != "delivery" && c.Closed != "reply" {
		errs = append(errs, errors.New("--closed must be delivery or reply"))
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
	Closed     string  `json:"closed,omitempty"`
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
	// Refused counts error replies to chats by code (backlog_full, ...).
	Refused map[string]int64 `json:"refused,omitempty"`
	// ServerMsgsPerSec is what each server's senders got delivered, and
	// Evenness the median, over the measured seconds, of the slowest
	// server's share over the fastest's (1: in step; 0: one stalled);
	// WorstEvenness the lowest second.
	ServerMsgsPerSec []float64 `json:"server_msgs_per_sec,omitempty"`
	Evenness         float64   `json:"evenness"`
	WorstEvenness    float64   `json:"worst_evenness"`
	Cores            int       `json:"cores"`
	// BenchCPUMsPer1k is the load generator's own CPU per 1,000 delivered.
	BenchCPUMsPer1k float64 `json:"bench_cpu_ms_per_1k"`
	// CPUMsPer1k is each watched process's CPU time (user+system) per
	// 1,000 delivered messages, over the measured window.
	CPUMsPer1k map[string]float64 `json:"cpu_ms_per_1k,omitempty"`
	// SyscallsPer1k is each watched process's read and write system calls
	// (/proc/PID/io syscr+syscw) per 1,000 delivered messages.
	SyscallsPer1k map[string]float64 `json:"syscalls_per_1k,omitempty"`
}

func (r *result) table(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tusers\tmsgs/s\tp50 ms\tp99 ms\tp999 ms\tmax ms\tsent\tdelivered\tlost\tdup\terrors\tcores\t")
	fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t%d\t%d\t%d\t%d\t%d\t\n",
		r.Mode, r.Users, r.MsgsPerSec, r.P50ms, r.P99ms, r.P999ms, r.MaxMs, r.Sent, r.Delivered, r.Lost, r.Duplicated, r.Errors, r.Cores)
	tw.Flush()
	if len(r.ServerMsgsPerSec) > 0 {
		fmt.Fprintf(w, "per server msgs/s: %.0f; evenness median %.2f, worst second %.2f\n", r.ServerMsgsPerSec, r.Evenness, r.WorstEvenness)
	}
	if len(r.Refused) > 0 {
		fmt.Fprintf(w, "refused: %v\n", r.Refused)
	}
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
	if len(r.SyscallsPer1k) > 0 {
		fmt.Fprintf(w, "read+write syscalls per 1k delivered: %v\n", r.SyscallsPer1k)
	}
}

type benchUser struct {
	name, partner string
	peer          *benchUser // the partner
	srv           int        // index of the server it is on
	conn          net.Conn
	br            *bufio.Reader

	// The send side: the partner's reader (closed loop on delivery) and
	// the user's own (on a refusal, or on replies) may both send; with
	// acks, the user's reader writes its ack lines too. wmu guards writes.
	wmu  sync.Mutex
	wbuf []byte
	seq  uint64 // next sequence number to send

	acks  []byte // the ack line being gathered (reader only)
	nacks int

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
	sysPer1k           map[string]float64
	benchCPU           time.Duration // this process's CPU over the measured window

	refusedMu sync.Mutex
	refused   map[string]int64
	// perSecond[server][second] counts deliveries, in the measured window,
	// of messages sent by that server's users.
	perSecond [][]atomic.Int64
}

func runXnode(cfg xnodeConfig) (*result, error) {
	r := &benchRun{cfg: cfg, size: cfg.Size, refused: map[string]int64{}}
	secs := int((cfg.Duration + time.Second - 1) / time.Second)
	r.perSecond = make([][]atomic.Int64, len(cfg.Servers))
	for i := range r.perSecond {
		r.perSecond[i] = make([]atomic.Int64, secs)
	}
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
	sysAtStart := map[string]int64{}
	var selfAtStart time.Duration
	cpuTimer := time.AfterFunc(cfg.Warmup, func() {
		r.cpuMu.Lock()
		selfAtStart = selfCPU()
		r.cpuMu.Unlock()
		for n, pid := range cfg.Watch {
			c, err := procCPU(pid)
			sc, err2 := procSyscalls(pid)
			r.cpuMu.Lock()
			if err == nil {
				cpuAtStart[n] = c
			}
			if err2 == nil {
				sysAtStart[n] = sc
			}
			r.cpuMu.Unlock()
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
	if selfAtStart != 0 {
		r.benchCPU = selfCPU() - selfAtStart
	}
	for n, pid := range cfg.Watch {
		if c, err := procCPU(pid); err == nil {
			if c0, ok := cpuAtStart[n]; ok && r.deliveredInWindow.Load() > 0 {
				if r.cpuPer1k == nil {
					r.cpuPer1k = map[string]float64{}
				}
				r.cpuPer1k[n] = float64((c - c0).Milliseconds()) / (float64(r.deliveredInWindow.Load()) / 1000)
			}
		}
		if sc, err := procSyscalls(pid); err == nil {
			if s0, ok := sysAtStart[n]; ok && r.deliveredInWindow.Load() > 0 {
				if r.sysPer1k == nil {
					r.sysPer1k = map[string]float64{}
				}
				r.sysPer1k[n] = float64(sc-s0) / (float64(r.deliveredInWindow.Load()) / 1000)
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
		a.peer, b.peer = b, a
		users[2*k], users[2*k+1] = a, b
	}
	sem := make(chan struct{}, 64)
	errc := make(chan error, len(users))
	var wg sync.WaitGroup
	for i, u := range users {
		u.srv = (i/2 + i%2) % len(cfg.Servers)
		addr := cfg.Servers[u.srv]
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := u.login(addr, cfg.TLS, cfg.WS, cfg.Acks); err != nil {
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

func (u *benchUser) login(addr string, tc *tls.Config, ws, acks bool) error {
	c, err := dialUser(&net.Dialer{Timeout: 5 * time.Second}, addr, tc, ws)
	if err != nil {
		return fmt.Errorf("connect %s: %w", addr, err)
	}
	u.conn = c
	u.br = bufio.NewReaderSize(c, 64<<10)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "{\"cmd\":\"login\",\"name\":%q,\"acks\":%t}\n", u.name, acks); err != nil {
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
	u.wmu.Lock()
	defer u.wmu.Unlock()
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

var idKey = []byte(`"id":"`)

// ack adds the event's id to the ack line; flushAcks writes it.
func (u *benchUser) ack(line []byte) {
	i := bytes.Index(line, idKey)
	if i < 0 {
		return
	}
	rest := line[i+len(idKey):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return
	}
	if u.nacks == 0 {
		u.acks = append(u.acks[:0], `{"cmd":"ack","ids":[`...)
	} else {
		u.acks = append(u.acks, ',')
	}
	u.acks = append(append(append(u.acks, '"'), rest[:j]...), '"')
	u.nacks++
}

func (u *benchUser) flushAcks() error {
	if u.nacks == 0 {
		return nil
	}
	u.acks = append(u.acks, "]}\n"...)
	u.nacks = 0
	u.wmu.Lock()
	_ = u.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := u.conn.Write(u.acks)
	u.wmu.Unlock()
	return err
}

var (
	chatEventPrefix = []byte(`{"event":"chat"`)
	chatReplyOK     = []byte(`{"reply":"chat","ok":true`)
	chatReplyPrefix = []byte(`{"reply":"chat"`)
	contentKey      = []byte(`"content":"`)
	codeKey         = []byte(`"code":"`)
)

// replyCode is the code of an error reply, "?" if it has none.
func replyCode(line []byte) string {
	i := bytes.Index(line, codeKey)
	if i < 0 {
		return "?"
	}
	rest := line[i+len(codeKey):]
	if j := bytes.IndexByte(rest, '"'); j >= 0 {
		return string(rest[:j])
	}
	return "?"
}

// readLoop reads a user's lines. In the closed loop a slot is freed, and
// the next message sent, when the partner's message arrives here (on
// delivery: this reader sends for the partner) or when the user's own reply
// comes (on reply); a refused message never arrives, so its refusal frees
// its slot in either mode.
func (r *benchRun) readLoop(u *benchUser) {
	closedLoop := r.cfg.Rate == 0
	onDelivery := r.cfg.Closed == "delivery"
	for {
		line, err := u.br.ReadSlice('\n')
		if err != nil {
			return
		}
		now := time.Now()
		switch {
		case bytes.HasPrefix(line, chatEventPrefix):
			delivered := r.received(u, line, now)
			if r.cfg.Acks {
				u.ack(line)
				// One ack line per read, at most 200 ids (the server takes 256).
				if u.br.Buffered() == 0 || u.nacks >= 200 {
					if u.flushAcks() != nil {
						return
					}
				}
			}
			if delivered && closedLoop && onDelivery && !r.stopSending.Load() {
				if err := r.send(u.peer); err != nil {
					return
				}
			}
		case bytes.HasPrefix(line, chatReplyPrefix):
			ok := bytes.HasPrefix(line, chatReplyOK)
			if !ok {
				r.errs.Add(1)
				code := replyCode(line)
				r.refusedMu.Lock()
				r.refused[code]++
				r.refusedMu.Unlock()
			}
			if closedLoop && (!ok || !onDelivery) && !r.stopSending.Load() {
				if err := r.send(u); err != nil {
					return
				}
			}
		}
	}
}

// received records a chat event; it reports whether it was a first
// delivery (not a duplicate or a line it could not read).
func (r *benchRun) received(u *benchUser, line []byte, now time.Time) bool {
	i := bytes.Index(line, contentKey)
	if i < 0 {
		return false
	}
	rest := line[i+len(contentKey):]
	sp := bytes.IndexByte(rest, ' ')
	if sp < 0 {
		return false
	}
	ts, err1 := strconv.ParseInt(string(rest[:sp]), 10, 64)
	rest = rest[sp+1:]
	sp = bytes.IndexByte(rest, ' ')
	if sp < 0 || err1 != nil {
		return false
	}
	seq, err := strconv.ParseUint(string(rest[:sp]), 10, 64)
	if err != nil {
		return false
	}
	word, bit := seq/64, seq%64
	for uint64(len(u.seen)) <= word {
		u.seen = append(u.seen, 0)
	}
	if u.seen[word]&(1<<bit) != 0 {
		u.dups++
		return false
	}
	u.seen[word] |= 1 << bit
	u.received++
	r.totalReceived.Add(1)
	if !now.Before(r.measureFrom) && now.Before(r.measureTo) {
		r.deliveredInWindow.Add(1)
		u.latencies = append(u.latencies, now.UnixNano()-ts)
		if sec := int(now.Sub(r.measureFrom) / time.Second); sec < len(r.perSecond[u.peer.srv]) {
			r.perSecond[u.peer.srv][sec].Add(1)
		}
	}
	return true
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
	res.SyscallsPer1k = r.sysPer1k
	if r.cfg.Rate > 0 {
		res.Mode, res.Window, res.Rate = "xnode-rate", 0, r.cfg.Rate
	} else {
		res.Closed = r.cfg.Closed
	}
	if len(r.refused) > 0 {
		res.Refused = r.refused
	}
	r.evenness(res)
	var lat []int64
	var received int64
	for _, u := range users {
		lat = append(lat, u.latencies...)
		received += u.received
		res.Duplicated += u.dups
	}
	res.Delivered = r.deliveredInWindow.Load()
	res.MsgsPerSec = float64(res.Delivered) / r.cfg.Duration.Seconds()
	if res.Delivered > 0 {
		res.BenchCPUMsPer1k = float64(r.benchCPU.Milliseconds()) / (float64(res.Delivered) / 1000)
	}
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

// evenness fills in each server's senders' delivered rate and how evenly
// the servers progressed, second by second.
func (r *benchRun) evenness(res *result) {
	secs := 0
	if len(r.perSecond) > 0 {
		secs = int(r.cfg.Duration / time.Second) // whole seconds only
	}
	var ratios []float64
	totals := make([]float64, len(r.perSecond))
	for sec := 0; sec < secs; sec++ {
		lo, hi := int64(-1), int64(0)
		for i := range r.perSecond {
			n := r.perSecond[i][sec].Load()
			totals[i] += float64(n)
			if lo < 0 || n < lo {
				lo = n
			}
			hi = max(hi, n)
		}
		if hi > 0 {
			ratios = append(ratios, float64(lo)/float64(hi))
		}
	}
	if secs == 0 || len(ratios) == 0 {
		return
	}
	for i := range totals {
		totals[i] /= float64(secs)
	}
	slices.Sort(ratios)
	res.ServerMsgsPerSec = totals
	res.Evenness, res.WorstEvenness = ratios[len(ratios)/2], ratios[0]
}
