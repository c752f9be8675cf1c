package relay

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/health"
	"github.com/chatrelay/chatrelay/internal/certs"
	"github.com/chatrelay/chatrelay/internal/cli"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/wire"
)

// The check rule, run by keepalived's vrrp_script on each relay host every
// second. It passes (exit 0) or fails (exit 1) and prints one line saying
// why:
//
//  1. The relay's /healthz must answer within the timeout: a dead relay
//     (connection refused) or a wedged one (no answer) fails.
//  2. /healthz must say it is serving (HTTP 200): a relay shutting down fails.
//  3. The link port must answer with the protocol's first frame within the
//     timeout: a relay whose accept loop is stuck fails. A TLS link port
//     is probed over TLS (CheckConfig.LinkTLS).
//  4. A relay that holds the VIP but has had no message server link for
//     longer than the grace period fails, if message servers exist (they
//     are registered in Redis, or, without --redis, the relay has seen one):
//     they could be linked to the peer, which should take over.
//  5. Everything else passes; in particular a backup with no links, which
//     is its normal state (message servers dial the VIP).
//
// keepalived's view: a failing check lowers this relay's priority (or, with
// no weight, faults the instance), so the peer takes the VIP.
//
// The check lives with the relay because rule 4 reads what the relay
// reports about itself (Role, LinksUp, NoLinksSince: see status.go).

// The relay's default addresses, which the check probes on the same host.
const (
	DefaultAdminAddr = "127.0.0.1:9100"
	DefaultLinkAddr  = ":7000"
)

// CheckConfig is what the check needs to know.
type CheckConfig struct {
	Admin   string        // the relay's admin address, host:port
	Link    string        // the relay's link address, host:port; empty skips rule 3
	LinkTLS *tls.Config   // if set, the link port is probed over TLS (ProbeTLS makes it)
	Timeout time.Duration // per probe
	Grace   time.Duration // rule 4's grace period
	// Redis is where message servers register (see store.Servers); nil
	// means "use what the relay has seen". An error makes rule 4 fall back
	// to that too: a Redis outage must not move the VIP.
	Redis redis.UniversalClient
}

// CheckResult is the verdict and its one-line reason.
type CheckResult struct {
	OK     bool
	Reason string
}

// Check applies the rule to the live relay.
func Check(ctx context.Context, cfg CheckConfig) CheckResult {
	rep, err := fetchReport(ctx, cfg.Admin, cfg.Timeout)
	if err != nil {
		return CheckResult{false, fmt.Sprintf("relay admin %s not answering (dead or wedged): %v", cfg.Admin, err)}
	}
	if !rep.Serving {
		return CheckResult{false, "relay not serving: " + rep.Reason}
	}
	if cfg.Link != "" {
		if err := probeLink(ctx, cfg.Link, cfg.LinkTLS, cfg.Timeout); err != nil {
			return CheckResult{false, fmt.Sprintf("relay link port %s not answering: %v", cfg.Link, err)}
		}
	}
	servers, source := len(rep.Links), "seen by this relay"
	if cfg.Redis != nil && rep.Role == "master" && rep.LinksUp == 0 {
		rctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		registered, err := store.Servers(rctx, cfg.Redis)
		cancel()
		if err == nil {
			servers, source = len(registered), "registered in Redis"
		}
	}
	return Evaluate(rep, servers, source, cfg.Grace, time.Now())
}

// Evaluate is rule 4 and 5 on a report from a live, serving relay.
func Evaluate(rep health.Report, servers int, source string, grace time.Duration, now time.Time) CheckResult {
	total := len(rep.Links)
	switch {
	case rep.Role == "master" && rep.LinksUp == 0 && servers > 0:
		var down time.Duration
		if rep.NoLinksSince != nil {
			down = now.Sub(*rep.NoLinksSince)
		}
		if down > grace {
			return CheckResult{false, fmt.Sprintf("holds the VIP but no message server link for %.1fs (grace %s) while %d servers are %s",
				down.Seconds(), grace, servers, source)}
		}
		return CheckResult{true, fmt.Sprintf("master with no links for %.1fs, within grace %s", down.Seconds(), grace)}
	case rep.Role == "master":
		return CheckResult{true, fmt.Sprintf("master, %d/%d links up", rep.LinksUp, total)}
	case rep.Role == "backup" && rep.LinksUp == 0:
		return CheckResult{true, "backup, no links (normal: servers dial the VIP)"}
	default:
		return CheckResult{true, fmt.Sprintf("%s, %d/%d links up", rep.Role, rep.LinksUp, total)}
	}
}

func fetchReport(ctx context.Context, admin string, timeout time.Duration) (health.Report, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/healthz", nil)
	if err != nil {
		return health.Report{}, err
	}
	req.Header.Set(CheckHeader, "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return health.Report{}, err
	}
	defer resp.Body.Close()
	var rep health.Report
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&rep); err != nil {
		return health.Report{}, fmt.Errorf("bad /healthz document (HTTP %d): %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK && rep.Serving {
		return health.Report{}, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return rep, nil
}

// probeLink connects to the link port (over TLS with tc), reads the
// relay's first frame (it must be a valid challenge), then hangs up
// without a word, which the relay recognises as a probe: no warning, no
// handshake failure counted.
func probeLink(ctx context.Context, addr string, tc *tls.Config, timeout time.Duration) error {
	d := net.Dialer{Timeout: timeout}
	tcp, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer tcp.Close()
	_ = tcp.SetDeadline(time.Now().Add(timeout))
	conn := tcp
	if tc != nil {
		t := tls.Client(tcp, tc)
		if err := t.Handshake(); err != nil {
			return fmt.Errorf("TLS handshake: %w", err)
		}
		defer t.Close() // a close_notify: the relay reads a clean end, a probe
		conn = t
	}
	return wire.ReadChallenge(conn)
}

// ProbeTLS is the TLS config of the link probe: it does not verify the
// relay's certificate. The probe asks one thing of the relay on its own
// host (at 127.0.0.1, an address the certificate need not name): does its
// link port answer with a challenge, now? It sends nothing secret and
// believes nothing else it reads. Verifying would also make the VIP follow
// certificate trouble: an expired certificate on both relays would fail
// both checks and take the VIP, and the links that still work, away.
// Certificates are watched by the message servers, which refuse one that
// does not verify, and by whoever renews them. certFile and keyFile, if
// given, are the client certificate shown to a relay that requires one
// (--link-client-ca); the probe never claims a server id with it.
func ProbeTLS(certFile, keyFile string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: certs.MinVersion, InsecureSkipVerify: true}
	if certFile != "" || keyFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("probe client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return tc, nil
}

// CheckMain is the "relay check" command. Exit codes: 0 pass, 1 fail, 2 bad
// flags (an unparsable --redis URL among them).
func CheckMain(args []string, stdout, stderr io.Writer) int {
	fs := cli.NewCommand("relay check", "relay check: keepalived vrrp_script health check; exits 0 (pass) or 1 (fail) and prints why.\n\n"+
		"Usage: relay check [--admin 127.0.0.1:9100] [--link 127.0.0.1:7000] [--redis URL]", stdout, stderr)
	admin := fs.String("admin", DefaultAdminAddr, "the relay's admin address")
	link := fs.String("link", "127.0.0.1"+DefaultLinkAddr, "the relay's link address to probe; empty skips the probe")
	timeout := fs.Duration("timeout", 500*time.Millisecond, "time allowed for each probe")
	grace := fs.Duration("grace", 3*time.Second, "how long a VIP holder may have no links before it fails")
	linkTLS := fs.Bool("link-tls", false, "the link port serves TLS (relay --tls-cert): probe it over TLS, without verifying the certificate (a liveness probe of this host's relay)")
	linkCert := fs.String("link-cert", "", "client certificate (PEM) the probe shows a relay that requires one (relay --link-client-ca); with --link-key")
	linkKey := fs.String("link-key", "", "the key of --link-cert")
	redisURL := fs.String("redis", "", "Redis URL, as msgserver --redis, to count registered message servers in; empty: use the servers the relay has seen")
	redisCA := fs.String("redis-ca-file", "", "CA certificates (PEM) that verify a rediss:// Redis, as msgserver --redis-ca-file")
	redisPass := fs.String("redis-password-file", "", "file holding the Redis password, as msgserver --redis-password-file")
	if code, done := fs.Parse(args); done {
		return code
	}
	cfg := CheckConfig{Admin: *admin, Link: *link, Timeout: *timeout, Grace: *grace}
	if *linkTLS || *linkCert != "" || *linkKey != "" {
		tc, err := ProbeTLS(*linkCert, *linkKey)
		if err != nil {
			return fs.Fail("--link-cert: %v", err)
		}
		cfg.LinkTLS = tc
	}
	if *redisURL != "" {
		opts, err := store.ParseURL(*redisURL)
		if err != nil {
			return fs.Fail("--redis: %v", err)
		}
		if *redisCA != "" {
			if err := opts.UseCA(*redisCA); err != nil {
				return fs.Fail("--redis-ca-file: %v", err)
			}
		}
		if *redisPass != "" {
			if err := opts.UsePasswordFile(*redisPass); err != nil {
				return fs.Fail("--redis-password-file: %v", err)
			}
		}
		cfg.Redis = opts.NewClient()
		defer cfg.Redis.Close()
	} else if *redisCA != "" {
		return fs.Fail("--redis-ca-file needs --redis")
	} else if *redisPass != "" {
		return fs.Fail("--redis-password-file needs --redis")
	}
	res := Check(context.Background(), cfg)
	if res.OK {
		fmt.Fprintln(stdout, "ok:", res.Reason)
		return 0
	}
	fmt.Fprintln(stdout, "FAIL:", res.Reason)
	return 1
}
