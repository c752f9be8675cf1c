package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/coder/websocket"

	"github.com/chatrelay/chatrelay/internal/cli"
)

// The client protocol over WebSocket (a message server's --http-listen,
// GET /ws): a text message per JSON object. wsLineConn makes such a
// connection look like the line connection the load code reads and writes,
// so xnode and idle run unchanged over either transport.

// transports holds one HTTP transport per dialer: upgraded connections
// leave its pool, so sharing it costs nothing and saves one per session.
var transports sync.Map // *net.Dialer -> *http.Transport

// dialUser connects to a message server: its client port, or with ws its
// web port's /ws, over TLS when tc is set.
func dialUser(d *net.Dialer, addr string, tc *tls.Config, ws bool) (net.Conn, error) {
	if !ws {
		return dialClient(d, addr, tc)
	}
	t, _ := transports.LoadOrStore(d, &http.Transport{DialContext: d.DialContext, TLSClientConfig: tc})
	url := "ws://" + addr + "/ws"
	if tc != nil {
		url = "wss://" + addr + "/ws"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: &http.Client{Transport: t.(*http.Transport)}})
	if err != nil {
		return nil, err
	}
	c.SetReadLimit(1 << 20)
	return &wsLineConn{c: c}, nil
}

// wsLineConn reads each message as a line (with a newline added) and sends
// each line written as a message. It has no goroutine: Read reads the
// WebSocket. Deadlines: one in the past ends the connection (the load code
// sets one only to stop its readers); later ones are not enforced. Reads
// and writes pass no cancellable context: the library would register one
// per message, a cost the load generator should not carry.
type wsLineConn struct {
	c   *websocket.Conn
	r   io.Reader // the message being read; nil between messages
	nl  bool      // the newline of the message just read is due
	wmu sync.Mutex
}

func (w *wsLineConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if w.nl {
		w.nl = false
		p[0] = '\n'
		return 1, nil
	}
	if w.r == nil {
		typ, r, err := w.c.Reader(context.Background())
		if err != nil {
			return 0, err
		}
		if typ != websocket.MessageText {
			return 0, errors.New("binary message from the server")
		}
		w.r = r
	}
	n, err := w.r.Read(p)
	if errors.Is(err, io.EOF) {
		w.r = nil
		if n == 0 {
			p[0] = '\n'
			return 1, nil
		}
		w.nl = true
		return n, nil
	}
	return n, err
}

func (w *wsLineConn) Write(p []byte) (int, error) {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	ctx := context.Background()
	for rest := p; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			return len(p) - len(rest), errors.New("a write must end in a newline")
		}
		if err := w.c.Write(ctx, websocket.MessageText, rest[:i]); err != nil {
			return len(p) - len(rest), err
		}
		rest = rest[i+1:]
	}
	return len(p), nil
}

func (w *wsLineConn) Close() error { return w.c.CloseNow() }

func (w *wsLineConn) LocalAddr() net.Addr  { return wsAddr{} }
func (w *wsLineConn) RemoteAddr() net.Addr { return wsAddr{} }

func (w *wsLineConn) SetDeadline(t time.Time) error { return w.SetReadDeadline(t) }

func (w *wsLineConn) SetReadDeadline(t time.Time) error {
	if !t.IsZero() && !t.After(time.Now()) {
		_ = w.c.CloseNow() // the reader ends
	}
	return nil
}

func (w *wsLineConn) SetWriteDeadline(time.Time) error { return nil }

type wsAddr struct{}

func (wsAddr) Network() string { return "websocket" }
func (wsAddr) String() string  { return "websocket" }

// ws mode: the xnode load over TCP and over WebSocket against the same
// servers, in alternating rounds, reported side by side (medians).

type transportRow struct {
	Transport  string             `json:"transport"`
	MsgsPerSec float64            `json:"msgs_per_sec"`
	P50ms      float64            `json:"p50_ms"`
	P99ms      float64            `json:"p99_ms"`
	CPUMsPer1k map[string]float64 `json:"cpu_ms_per_1k,omitempty"`
	Lost       int64              `json:"lost"`
	Errors     int64              `json:"errors"`
}

type transportsResult struct {
	Rounds int            `json:"rounds"`
	Users  int            `json:"users"`
	Window int            `json:"window,omitempty"`
	Rate   float64        `json:"rate,omitempty"`
	Rows   []transportRow `json:"rows"` // medians over the rounds: tcp, then ws
}

func (r *transportsResult) table(w io.Writer) {
	var names []string
	for n := range r.Rows[0].CPUMsPer1k {
		names = append(names, n)
	}
	slices.Sort(names)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := "transport\tmsgs/s\tp50 ms\tp99 ms\t"
	for _, n := range names {
		head += "CPU ms/1k " + n + "\t"
	}
	fmt.Fprintln(tw, head+"lost\terrors\t")
	for _, row := range r.Rows {
		line := fmt.Sprintf("%s\t%.0f\t%.2f\t%.2f\t", row.Transport, row.MsgsPerSec, row.P50ms, row.P99ms)
		for _, n := range names {
			line += fmt.Sprintf("%.2f\t", row.CPUMsPer1k[n])
		}
		fmt.Fprintln(tw, line+fmt.Sprintf("%d\t%d\t", row.Lost, row.Errors))
	}
	if len(r.Rows) == 2 && r.Rows[0].MsgsPerSec > 0 {
		tcp, ws := r.Rows[0], r.Rows[1]
		line := fmt.Sprintf("ws/tcp\t%.2f\t%.2f\t%.2f\t", ws.MsgsPerSec/tcp.MsgsPerSec, ratio(ws.P50ms, tcp.P50ms), ratio(ws.P99ms, tcp.P99ms))
		for _, n := range names {
			line += fmt.Sprintf("%.2f\t", ratio(ws.CPUMsPer1k[n], tcp.CPUMsPer1k[n]))
		}
		fmt.Fprintln(tw, line+"\t\t")
	}
	tw.Flush()
	fmt.Fprintf(w, "medians of %d rounds per transport, alternating (tcp, ws, ws, tcp, ...); %d users\n", r.Rounds, r.Users)
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func runTransportsCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("chatbench ws", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cli.Usage(fs, "chatbench ws: the xnode load over TCP and over WebSocket against the same servers, alternating rounds, medians side by side.")
	var cfg xnodeConfig
	var servers, web string
	fs.StringVar(&servers, "servers", "127.0.0.1:7001,127.0.0.1:7002", "message servers' client addresses (TCP), comma-separated")
	fs.StringVar(&web, "web", "127.0.0.1:8001,127.0.0.1:8002", "the same servers' web addresses (--http-listen), in the same order")
	rounds := fs.Int("rounds", 3, "rounds per transport")
	loadFlags(fs, &cfg)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	quiet := fs.Bool("quiet", false, "no progress lines")
	pids := fs.String("pids", "", "name=pid,... of the tier's processes: report each one's CPU time per 1,000 delivered messages")
	tlsCA := tlsFlag(fs)
	if code, done := parseFlags(fs, args, stderr); done {
		return code
	}
	var err error
	if cfg.TLS, err = clientTLS(*tlsCA); err != nil {
		fmt.Fprintln(stderr, "chatbench:", err)
		return 2
	}
	if cfg.Watch, err = parsePids(*pids); err != nil {
		fmt.Fprintln(stderr, "chatbench:", err)
		return 2
	}
	tcpServers, webServers := strings.Split(servers, ","), strings.Split(web, ",")
	if len(tcpServers) != len(webServers) || *rounds < 1 {
		fmt.Fprintln(stderr, "chatbench: --servers and --web must list the same servers; --rounds ≥ 1")
		return 2
	}
	cfg.Servers = tcpServers
	if err := cfg.validate(); err != nil {
		fmt.Fprintln(stderr, "chatbench:", err)
		return 2
	}
	if !*quiet {
		cfg.Progress = stderr
	}
	type samples struct {
		rate, p50, p99 []float64
		cpu            map[string][]float64
		lost, errs     int64
	}
	got := map[bool]*samples{false: {cpu: map[string][]float64{}}, true: {cpu: map[string][]float64{}}}
	prefix := cfg.Prefix
	for i := 0; i < *rounds; i++ {
		order := []bool{false, true}
		if i%2 == 1 {
			order = []bool{true, false}
		}
		for _, ws := range order {
			c := cfg
			c.WS = ws
			c.Servers = tcpServers
			name := "tcp"
			if ws {
				c.Servers, name = webServers, "ws"
			}
			c.Prefix = fmt.Sprintf("%s-%s-%d", prefix, name, i)
			if c.Progress != nil {
				fmt.Fprintf(c.Progress, "round %d: %s\n", i+1, name)
			}
			res, err := runXnode(c)
			if err != nil {
				fmt.Fprintf(stderr, "chatbench: %s round %d: %v\n", name, i+1, err)
				return 1
			}
			s := got[ws]
			s.rate = append(s.rate, res.MsgsPerSec)
			s.p50 = append(s.p50, res.P50ms)
			s.p99 = append(s.p99, res.P99ms)
			for n, v := range res.CPUMsPer1k {
				s.cpu[n] = append(s.cpu[n], v)
			}
			s.lost += res.Lost + res.Duplicated
			s.errs += res.Errors
		}
	}
	out := &transportsResult{Rounds: *rounds, Users: cfg.Users, Window: cfg.Window, Rate: cfg.Rate}
	for _, ws := range []bool{false, true} {
		s := got[ws]
		row := transportRow{Transport: "tcp", MsgsPerSec: median(s.rate), P50ms: median(s.p50), P99ms: median(s.p99), Lost: s.lost, Errors: s.errs}
		if ws {
			row.Transport = "ws"
		}
		if len(s.cpu) > 0 {
			row.CPUMsPer1k = map[string]float64{}
			for n, v := range s.cpu {
				row.CPUMsPer1k[n] = median(v)
			}
		}
		out.Rows = append(out.Rows, row)
	}
	return report(stdout, out, *asJSON, out.Rows[0].Lost > 0 || out.Rows[1].Lost > 0)
}
