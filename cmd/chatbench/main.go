// Command chatbench drives a running chat tier through the public client
// protocol and reports throughput, latency, loss and duplicates.
//
//	chatbench xnode --servers 127.0.0.1:7001,127.0.0.1:7002 --users 1000 --window 8 --duration 10s
//	chatbench xnode --servers ... --rate 5000 --duration 10s
//	chatbench idle --server 127.0.0.1:7001 --sessions 20000 --metrics http://127.0.0.1:9200/metrics
//	chatbench direct --users 1000 --window 8 --duration 10s
//	chatbench ws --servers 127.0.0.1:7001,127.0.0.1:7002 --web 127.0.0.1:8001,127.0.0.1:8002 --rounds 3
//
// xnode: users are paired across servers (user 2k on one server, 2k+1 on
// the next); each sends to its partner. Every message carries its send time
// and a per-sender sequence number, so the receiver measures latency and
// counts what was lost or shown twice.
//
// idle: opens many idle logged-in sessions on one message server and
// reports the login rate, the server's CPU per login and its resident
// memory per session; with --floor, the same against the login baseline
// ("login-floor": accept, read the line, parse it, answer, hold).
//
// direct: the baseline the relay tier is measured against. It starts two
// chatbench processes ("direct-node") joined by one direct TCP link, no
// relay and no Redis, and runs the xnode load against them.
package main

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/chatrelay/chatrelay/internal/certs"
	"github.com/chatrelay/chatrelay/internal/cli"
)

func main() {
	if cli.VersionArg("chatbench", os.Args[1:], os.Stdout) {
		return
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: chatbench MODE [flags]   (chatbench MODE --help lists them)

modes:
  xnode    cross-server chat load against running message servers
  idle     many idle sessions on one message server: login rate, RSS per session
  direct   the direct-link baseline: two chatbench nodes, one TCP link, xnode load
  ws       xnode over TCP and over WebSocket (the web ports), alternating rounds, side by side`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	switch args[0] {
	case "xnode":
		return runXnodeCmd(args[1:], stdout, stderr)
	case "idle":
		return runIdleCmd(args[1:], stdout, stderr)
	case "direct":
		return runDirectCmd(args[1:], stdout, stderr)
	case "ws":
		return runTransportsCmd(args[1:], stdout, stderr)
	case "direct-node":
		return runDirectNodeCmd(args[1:], stdout, stderr)
	case "login-floor":
		return runLoginFloorCmd(args[1:], stdout, stderr)
	default:
		fmt.Fprintln(stderr, usage)
		return 2
	}
}

// parseFlags parses args into fs; done is true when the caller must return
// code at once (help, or a bad flag).
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) (code int, done bool) {
	if err := cli.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, true
		}
		fmt.Fprintln(stderr, "chatbench:", err)
		return 2, true
	}
	return 0, false
}

func printJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// loadFlags registers the closed/open-loop load flags xnode and direct share.
func loadFlags(fs *flag.FlagSet, cfg *xnodeConfig) {
	fs.IntVar(&cfg.Users, "users", 1000, "users, spread over the servers, each paired with a user on another server")
	fs.IntVar(&cfg.Window, "window", 8, "closed loop: messages in flight per sender (ignored with --rate)")
	fs.Float64Var(&cfg.Rate, "rate", 0, "open loop: aggregate messages per second (0: closed loop)")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long to send")
	fs.DurationVar(&cfg.Warmup, "warmup", time.Second, "sending before measuring starts")
	fs.IntVar(&cfg.Size, "size", 100, "content bytes per message")
	fs.StringVar(&cfg.Prefix, "prefix", "bench", "user name prefix")
	fs.BoolVar(&cfg.Acks, "acks", false, "users log in with acks on and ack every chat event (one ack line per read)")
	fs.StringVar(&cfg.Closed, "closed", "delivery", "closed loop: free a sender's slot on delivery to the recipient (delivery) or on the sender's reply (reply); a refusal frees it too, and counts as a failure")
}

func runXnodeCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("chatbench xnode", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cli.Usage(fs, "chatbench xnode: cross-server chat load through the client protocol.")
	var cfg xnodeConfig
	var servers string
	fs.StringVar(&servers, "servers", "127.0.0.1:7001,127.0.0.1:7002", "message servers' client addresses, comma-separated")
	loadFlags(fs, &cfg)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	quiet := fs.Bool("quiet", false, "no progress lines")
	pids := fs.String("pids", "", "name=pid,... of the tier's processes: report each one's CPU time per 1,000 delivered messages")
	tlsCA := tlsFlag(fs)
	fs.BoolVar(&cfg.WS, "ws", false, "--servers are web ports (msgserver --http-listen): the load runs over WebSocket")
	if code, done := parseFlags(fs, args, stderr); done {
		return code
	}
	cfg.Servers = strings.Split(servers, ",")
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
	if cfg.Watch, err = parsePids(*pids); err != nil {
		fmt.Fprintln(stderr, "chatbench:", err)
		return 2
	}
	res, err := runXnode(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "chatbench:", err)
		return 1
	}
	return report(stdout, res, *asJSON, res.failed())
}

// failed is whether the run failed its own checks: a message lost or shown
// twice, or (closed loop on delivery) any refusal.
func (r *result) failed() bool {
	return r.Lost > 0 || r.Duplicated > 0 || (r.Closed == "delivery" && r.Errors > 0)
}

// report prints a result as a table or JSON; the exit code is 1 when the
// run failed its own checks (messages lost or duplicated, sessions lost).
func report(w io.Writer, res interface{ table(io.Writer) }, asJSON, failed bool) int {
	if asJSON {
		printJSON(w, res)
	} else {
		res.table(w)
	}
	if failed {
		return 1
	}
	return 0
}

// tlsFlag registers --tls-ca: the message servers' client ports serve TLS,
// verified with these CA certificates.
func tlsFlag(fs *flag.FlagSet) *string {
	return fs.String("tls-ca", "", "the client ports serve TLS: CA certificates (PEM) to verify them with (msgserver --tls-cert)")
}

// clientTLS is the client config for --tls-ca; nil without one.
func clientTLS(caFile string) (*tls.Config, error) {
	if caFile == "" {
		return nil, nil
	}
	pool, err := certs.LoadPool(caFile)
	if err != nil {
		return nil, fmt.Errorf("--tls-ca: %w", err)
	}
	return &tls.Config{MinVersion: certs.MinVersion, RootCAs: pool}, nil
}

// dialClient connects to a message server's client port with d, over TLS
// (handshake done) when tc is set; the server name is the address's host.
func dialClient(d *net.Dialer, addr string, tc *tls.Config) (net.Conn, error) {
	if tc == nil {
		return d.Dial("tcp", addr)
	}
	return tls.DialWithDialer(d, "tcp", addr, tc)
}
