// Command relay is the chat relay: message servers dial it (through the
// keepalived VIP) and it passes their messages to each other.
//
//	relay --listen :7000 --admin :9100 --link-secret-file /etc/chatrelay/link.secret --vip 192.168.56.100
//	relay check [--admin 127.0.0.1:9100]   (the keepalived vrrp_script check)
//	relay gen-certs --topology keepalived/topology.json --out vagrant/build/pki   (the lab's CA and certificates)
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/chatrelay/chatrelay/health"
	"github.com/chatrelay/chatrelay/internal/certs"
	"github.com/chatrelay/chatrelay/internal/cli"
	"github.com/chatrelay/chatrelay/relay"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "check" {
		os.Exit(relay.CheckMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == "render-keepalived" {
		os.Exit(renderMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == "render-lab" {
		os.Exit(renderLabMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == "hand-back" {
		os.Exit(handBackMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == "gen-certs" {
		os.Exit(genCertsMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	host, _ := os.Hostname()
	fs := cli.NewCommand("relay", "relay: the chat relay between message servers.\n\n"+
		"Usage: relay [flags]\n"+
		"       relay check --help               (health check for keepalived's vrrp_script)\n"+
		"       relay render-keepalived --help   (a relay host's keepalived.conf from the topology)\n"+
		"       relay render-lab --help          (the Vagrant lab's files from the topology)\n"+
		"       relay gen-certs --help           (the lab's CA and certificates)\n"+
		"       relay hand-back --help           (give a VIP back to the peer relay after a failover)",
		os.Stdout, os.Stderr, cli.FromEnv(), cli.WithVersion())
	var (
		listen     = fs.String("listen", relay.DefaultLinkAddr, "link address message servers dial (host:port); listen on all addresses so the VIP is covered")
		admin      = fs.String("admin", relay.DefaultAdminAddr, "admin HTTP address for /healthz and /metrics; empty disables it")
		id         = fs.String("id", host, "relay id shown to message servers and in logs")
		secretFile = fs.String("link-secret-file", "", "file holding the shared link secret (at least 16 bytes)")
		nextFile   = fs.String("link-secret-next-file", "", "file holding a second link secret, also accepted: the other secret of a rotation in progress")
		tlsCert    = fs.String("tls-cert", "", "certificate (PEM, chain first) for TLS on the link port, with --tls-key; it must name the VIP (an IP SAN) or whatever name message servers dial. Reloaded on SIGHUP or when the file changes. Empty: plaintext")
		tlsKey     = fs.String("tls-key", "", "the key of --tls-cert (PEM)")
		clientCA   = fs.String("link-client-ca", "", "CA certificates (PEM): message servers must show a client certificate they signed (mutual TLS), whose common name or a DNS name is the server id they claim; needs --tls-cert")
		vip        = fs.String("vip", "", "the keepalived virtual IP, or both VIPs comma-separated when both relays carry traffic; the relay reports which it holds and drops the links on a VIP when it loses it")
		vipPoll    = fs.Duration("vip-poll", 100*time.Millisecond, "how often to check whether this host holds the VIP")
		maxFrame   = fs.Int("max-frame", relay.DefaultMaxFrame, "largest link frame accepted, bytes")
		maxQueue   = fs.Int("max-queue", relay.DefaultMaxQueueBytes, "outbound bytes queued per link before it is cut as too slow")
		ping       = fs.Duration("ping", relay.DefaultPingInterval, "heartbeat interval on each link")
		deadAfter  = fs.Duration("dead-after", relay.DefaultDeadAfter, "drop a link silent for this long")
		maxPending = fs.Int("max-pending-handshakes", relay.DefaultMaxPending, "connections that have not proved the link secret yet; past it the oldest of them is closed")
		pendingIP  = fs.Int("max-pending-per-ip", relay.DefaultMaxPendingPerIP, "such connections per source address (IPv6: per /64); past it a new one is closed at once")
		forget     = fs.Duration("forget-after", relay.DefaultForgetAfter, "forget a message server whose link has been down this long (it leaves /healthz and /metrics)")
		maxKnown   = fs.Int("max-known-servers", relay.DefaultMaxKnownServers, "message servers remembered; past it those down longest are forgotten")
		pprofOn    = fs.Bool("pprof", false, "serve /debug/pprof on the admin address")
		logLevel   = fs.String("log-level", "info", "debug, info, warn or error")
		logFormat  = fs.String("log-format", "text", "text or json")
	)
	if code, done := fs.Parse(args); done {
		return code
	}
	log, err := cli.NewLogger(*logLevel, *logFormat)
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		return 2
	}
	secret, next, err := cli.ReadSecrets(*secretFile, *nextFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		return 2
	}
	var vipIPs []net.IP
	if *vip != "" {
		for _, v := range strings.Split(*vip, ",") {
			ip := net.ParseIP(strings.TrimSpace(v))
			if ip == nil {
				fmt.Fprintf(os.Stderr, "relay: --vip %q: %q is not an IP address\n", *vip, v)
				return 2
			}
			vipIPs = append(vipIPs, ip)
		}
	}

	tlsConf, reloader, err := linkTLS(*tlsCert, *tlsKey, *clientCA, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		return 2
	}

	reg := health.NewRegistry()
	metrics := relay.NewMetrics(reg)
	if reloader != nil {
		reg.MustRegister(reloader.ExpiryGauge("link"))
	}
	srv, err := relay.New(relay.Config{
		ID:            *id,
		Secret:        secret,
		TLS:           tlsConf,
		MaxFrame:      *maxFrame,
		MaxQueueBytes: *maxQueue,
		PingInterval:  *ping,
		DeadAfter:     *deadAfter,
		Logger:        log,
		Metrics:       metrics,

		NextSecret:           next,
		MaxPendingHandshakes: *maxPending,
		MaxPendingPerIP:      *pendingIP,
		ForgetAfter:          *forget,
		MaxKnownServers:      *maxKnown,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		return 2
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Error("cannot listen for links", "addr", *listen, "err", err)
		return 1
	}

	ctx, stop := cli.SignalContext()
	defer stop()
	if reloader != nil {
		go reloader.Watch(ctx, 0)
	}
	for _, ip := range vipIPs {
		srv.WatchVIP(ip, *vipPoll)
	}
	adminH := health.AdminHandler(srv.Report, reg, *pprofOn)
	if len(vipIPs) > 0 {
		adminH = relay.NewCheckWatch(reg).Handler(adminH)
	}
	adminSrv, _, err := cli.ServeAdmin(*admin, adminH, log)
	if err != nil {
		log.Error("cannot serve admin address", "err", err)
		return 1
	}

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		log.Info("signal received, closing links")
	case err := <-errc:
		log.Error("relay stopped", "err", err)
		srv.Close()
		return 1
	}
	srv.Close()
	if adminSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = adminSrv.Shutdown(sctx)
	}
	return 0
}

// linkTLS is the link port's TLS config from the flags (nil: plaintext) and
// the certificate to keep current.
func linkTLS(certFile, keyFile, clientCA string, log *slog.Logger) (*tls.Config, *certs.Reloader, error) {
	if certFile == "" && keyFile == "" {
		if clientCA != "" {
			return nil, nil, errors.New("--link-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
		}
		return nil, nil, nil
	}
	r, err := certs.Load(certFile, keyFile, log)
	if err != nil {
		return nil, nil, fmt.Errorf("--tls-cert: %w", err)
	}
	tc := certs.ServerConfig(r)
	if clientCA != "" {
		pool, err := certs.LoadPool(clientCA)
		if err != nil {
			return nil, nil, fmt.Errorf("--link-client-ca: %w", err)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, r, nil
}
