// Command chatbench drives a running chat tier through the public client
// protocol and reports throughput, latency, loss and duplicates.
//
//	chatbench xnode --servers 127.0.0.1:7001,127.0.0.1:7002 --users 1000 --window 8 --duration 10s
//	chatbench xnode --servers ... --rate 5000 --duration 10s
//
// Users are paired across servers (user 2k on one server, 2k+1 on the
// next); each sends to its partner. Every message carries its send time and
// a per-sender sequence number, so the receiver measures latency and
// counts what was lost or shown twice.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/chatrelay/chatrelay/internal/cli"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "xnode" {
		fmt.Fprintln(stderr, "usage: chatbench xnode [flags]   (chatbench xnode --help lists them)")
		return 2
	}
	fs := flag.NewFlagSet("chatbench xnode", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cli.Usage(fs, "chatbench xnode: cross-server chat load through the client protocol.")
	var cfg xnodeConfig
	var servers string
	fs.StringVar(&servers, "servers", "127.0.0.1:7001,127.0.0.1:7002", "message servers' client addresses, comma-separated")
	fs.IntVar(&cfg.Users, "users", 1000, "users, spread over the servers, each paired with a user on another server")
	fs.IntVar(&cfg.Window, "window", 8, "closed loop: messages in flight per sender (ignored with --rate)")
	fs.Float64Var(&cfg.Rate, "rate", 0, "open loop: aggregate messages per second (0: closed loop)")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long to send")
	fs.DurationVar(&cfg.Warmup, "warmup", time.Second, "sending before measuring starts")
	fs.IntVar(&cfg.Size, "size", 100, "content bytes per message")
	fs.StringVar(&cfg.Prefix, "prefix", "bench", "user name prefix")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	quiet := fs.Bool("quiet", false, "no progress lines")
	if err := cli.Parse(fs, args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "chatbench:", err)
		return 2
	}
	cfg.Servers = strings.Split(servers, ",")
	if err := cfg.validate(); err != nil {
		fmt.Fprintln(stderr, "chatbench:", err)
		return 2
	}
	if !*quiet {
		cfg.Progress = stderr
	}
	res, err := runXnode(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "chatbench:", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(res)
	} else {
		res.table(stdout)
	}
	if res.Lost > 0 || res.Duplicated > 0 {
		return 1
	}
	return 0
}
