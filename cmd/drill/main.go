// Command drill runs the failover drills on one Linux host, as root: the
// lab's hosts as network namespaces, real keepalived, Redis and binaries,
// steady cross-server traffic, one fault per drill, and a report.
//
//	sudo drill --scenario all --repeat 5 --vips both
//	sudo drill --cleanup          remove namespaces left by an interrupted run
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/chatrelay/chatrelay/internal/certs"
	"github.com/chatrelay/chatrelay/internal/cli"
	"github.com/chatrelay/chatrelay/keepalived/drill"
)

func main() {
	if cli.VersionArg("drill", os.Args[1:], os.Stdout) {
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "load" {
		os.Exit(load(os.Args[2:]))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("drill", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cli.Usage(fs, "drill: failover drills in network namespaces (needs root).\n\nScenarios:\n"+scenarioList())
	var (
		scenario = fs.String("scenario", "all", "a scenario, a comma-separated list, or all")
		repeat   = fs.Int("repeat", 1, "runs of each scenario")
		bin      = fs.String("bin", "", "folder with the relay and msgserver binaries (default: beside this one)")
		repo     = fs.String("repo", ".", "the repository, for keepalived/topology.json and the scripts")
		pairs    = fs.Int("pairs", 50, "user pairs chatting across the two message servers")
		ackPairs = fs.Int("ack-pairs", -1, "of the pairs, how many log in with acks on and ack every event (-1: half)")
		rate     = fs.Float64("rate", 1000, "aggregate messages per second")
		before   = fs.Duration("before", 2*time.Second, "traffic before the fault")
		after    = fs.Duration("after", 6*time.Second, "traffic after the fault")
		mode     = fs.String("vips", "topology", "VIPs the lab runs with: topology (as keepalived/topology.json says: two by default), 1 (active-passive), or both (each run in each mode, side by side)")
		asJSON   = fs.Bool("json", false, "print the reports as JSON")
		cleanup  = fs.Bool("cleanup", false, "only remove namespaces left by interrupted drills")
	)
	if err := cli.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "drill:", err)
		return 2
	}
	if *ackPairs < 0 {
		*ackPairs = *pairs / 2
	}
	if *cleanup {
		if err := drill.RemoveLeftovers(); err != nil {
			fmt.Fprintln(stderr, "drill:", err)
			return 1
		}
		return 0
	}
	names := drill.Scenarios
	if *scenario != "all" {
		names = strings.Split(*scenario, ",")
		for _, n := range names {
			if !slices.Contains(drill.Scenarios, n) {
				fmt.Fprintf(stderr, "drill: unknown scenario %q\n", n)
				return 2
			}
		}
	}
	var modes []bool // OneVIP per run
	switch *mode {
	case "topology", "2":
		modes = []bool{false}
	case "1":
		modes = []bool{true}
	case "both":
		modes = []bool{true, false}
	default:
		fmt.Fprintf(stderr, "drill: --vips %q: want topology, 1, 2 or both\n", *mode)
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "drill:", err)
		return 1
	}
	if *bin == "" {
		*bin = filepath.Dir(self)
	}
	// keepalived runs scripts without a working directory: absolute paths only.
	for _, p := range []*string{bin, repo} {
		if *p, err = filepath.Abs(*p); err != nil {
			fmt.Fprintln(stderr, "drill:", err)
			return 2
		}
	}
	cfg := drill.Config{
		RelayBin:     filepath.Join(*bin, "relay"),
		MsgserverBin: filepath.Join(*bin, "msgserver"),
		LoadBin:      self,
		Topology:     filepath.Join(*repo, "keepalived", "topology.json"),
		ScriptsDir:   filepath.Join(*repo, "keepalived"),
		Pairs:        *pairs,
		AckPairs:     *ackPairs,
		Rate:         *rate,
		Before:       *before,
		After:        *after,
		Log:          stderr,
	}
	// Ctrl-C or SIGTERM: the running drill stops and cleans up.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var reports []*drill.Report
	for i := 0; i < *repeat && ctx.Err() == nil; i++ {
		for _, n := range names {
			if ctx.Err() != nil {
				break
			}
			for _, one := range modes {
				if ctx.Err() != nil {
					break
				}
				if one && drill.NeedsTwoVIPs[n] {
					continue
				}
				c := cfg
				c.OneVIP = one
				reports = append(reports, drill.Run(ctx, c, n))
			}
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "drill: interrupted; everything it made is removed")
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(reports)
	} else {
		table(stdout, reports)
	}
	for _, r := range reports {
		if !r.OK() {
			return 1
		}
	}
	return 0
}

func scenarioList() string {
	var b strings.Builder
	for _, n := range drill.Scenarios {
		fmt.Fprintf(&b, "  %-20s %s\n", n, drill.Describe[n])
	}
	return b.String()
}

// table prints one line per drill and, with repeats, median and max per
// scenario and mode (one VIP, two VIPs), side by side.
func table(w io.Writer, reports []*drill.Report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tVIPs\tinterruption s\tresumed after s\tat fault s\tbefore fault s\tsent\tacked\trefused\tlost\tdup\tunacked\tVIP on\texpected\tok")
	type key struct {
		scenario string
		vips     int
	}
	by, atFault := map[key][]float64{}, map[key][]float64{}
	lost, dup := map[key]int64{}, map[key]int64{}
	modes := map[int]bool{}
	var notes []string
	for _, r := range reports {
		ok := "yes"
		if !r.OK() {
			ok = "NO " + r.Err
		}
		on, want := strings.Join(r.VIPHolders, ","), r.ExpectHolder
		if r.ExpectHolderB != "" {
			on += " / " + strings.Join(r.VIPBHolders, ",")
			want += " / " + r.ExpectHolderB
		}
		fmt.Fprintf(tw, "%s\t%d\t%.3f\t%.3f\t%.3f\t%.3f\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\n", r.Scenario, r.VIPs, r.Interruption, r.Resumed,
			r.AtFault, r.Baseline, r.Load.Sent, r.Load.Acked, r.Load.Refused, r.Load.Lost, r.Load.Duplicated, r.Load.Unacked, on, want, ok)
		k := key{r.Scenario, r.VIPs}
		if r.Err == "" {
			by[k] = append(by[k], r.Interruption)
			atFault[k] = append(atFault[k], r.AtFault)
			modes[r.VIPs] = true
		}
		lost[k] += r.Load.Lost
		dup[k] += r.Load.Duplicated
		for _, n := range r.Notes {
			notes = append(notes, r.Scenario+": "+n)
		}
	}
	tw.Flush()
	for _, n := range notes {
		fmt.Fprintln(w, "note:", n)
	}
	if len(reports) <= len(by) {
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	header := "scenario"
	for _, v := range []int{1, 2} {
		if modes[v] {
			header += fmt.Sprintf("\t%d VIP: runs\tmedian s\tmax s\tat fault median s\tmax s\tlost\tdup", v)
		}
	}
	fmt.Fprintln(tw, header)
	for _, n := range drill.Scenarios {
		line, any := n, false
		for _, v := range []int{1, 2} {
			if !modes[v] {
				continue
			}
			k := key{n, v}
			d := by[k]
			if len(d) == 0 {
				line += "\t0\t-\t-\t-\t-\t-\t-"
				continue
			}
			any = true
			sort.Float64s(d)
			f := atFault[k]
			sort.Float64s(f)
			line += fmt.Sprintf("\t%d\t%.3f\t%.3f\t%.3f\t%.3f\t%d\t%d", len(d), d[len(d)/2], d[len(d)-1], f[len(f)/2], f[len(f)-1], lost[k], dup[k])
		}
		if any {
			fmt.Fprintln(tw, line)
		}
	}
	tw.Flush()
}

// load is the traffic generator the drill runs inside the client namespace.
func load(args []string) int {
	fs := flag.NewFlagSet("drill load", flag.ContinueOnError)
	servers := fs.String("servers", "", "message servers, comma-separated")
	pairs := fs.Int("pairs", 50, "user pairs")
	rate := fs.Float64("rate", 1000, "messages per second")
	duration := fs.Duration("duration", 8*time.Second, "sending time")
	ca := fs.String("ca", "", "the client ports serve TLS: CA certificates (PEM) to verify them with")
	ackPairs := fs.Int("ack-pairs", 0, "of the pairs, how many log in with acks on")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg := drill.LoadConfig{
		Servers: strings.Split(*servers, ","), Pairs: *pairs, Rate: *rate, Duration: *duration, Settle: 6 * time.Second, AckPairs: *ackPairs,
	}
	if *ca != "" {
		pool, err := certs.LoadPool(*ca)
		if err != nil {
			fmt.Fprintln(os.Stderr, "load: --ca:", err)
			return 2
		}
		cfg.TLS = &tls.Config{MinVersion: certs.MinVersion, RootCAs: pool}
	}
	res, err := drill.RunLoad(cfg, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		return 1
	}
	b, _ := json.Marshal(res)
	fmt.Printf("\n%s\n", b)
	return 0
}
