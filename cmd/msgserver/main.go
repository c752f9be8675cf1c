// Command msgserver is a chat message server: clients connect with telnet
// or an app, log in, and chat with users here or, through the relay, on
// other message servers.
//
//	msgserver --id msg-1 --listen :7001 --relay 192.168.56.100:7000 \
//	  --redis redis://127.0.0.1:6379/0 --link-secret-file /etc/chatrelay/link.secret \
//	  --auth-key-file /etc/chatrelay/auth.pub
//	msgserver token --key-file auth.key --name alice --ttl 1h   (a login token, for labs and tests)
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	sockaddr "github.com/hashicorp/go-sockaddr"

	"github.com/chatrelay/chatrelay/health"
	"github.com/chatrelay/chatrelay/internal/certs"
	"github.com/chatrelay/chatrelay/internal/cli"
	"github.com/chatrelay/chatrelay/internal/netx"
	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/store"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "token" {
		os.Exit(tokenMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	host, _ := os.Hostname()
	fs := cli.NewCommand("msgserver", "msgserver: a chat message server.\n\nUsage: msgserver [flags]\n       msgserver token --help   (make a login token)",
		os.Stdout, os.Stderr, cli.FromEnv(), cli.WithVersion())
	var (
		id          = fs.String("id", host, "server id, unique among message servers (letters, digits, . _ -)")
		listen      = fs.String("listen", ":7001", "client address (host:port); one JSON object per line, telnet works")
		httpListen  = fs.String("http-listen", "", "web address (host:port) for the chat page (GET /) and the client protocol over WebSocket (GET /ws); HTTPS with --tls-cert. Empty: off")
		origins     = fs.String("allowed-origins", "", "comma-separated browser origins, besides the page's own, whose pages may open WebSocket sessions: hosts or patterns (chat.example.com, *.example.com, https://chat.example.com)")
		advertise   = fs.String("advertise", "", "client address published in the server registry; default: this host's private IP (go-sockaddr) and the listen port")
		relayAddr   = fs.String("relay", "", "relay link address, normally the VIP (host:port), or both VIPs comma-separated (vipA:7000,vipB:7000) when both relays carry traffic: a link to each; empty runs without a relay")
		redisURL    = fs.String("redis", "redis://127.0.0.1:6379/0", "Redis for presence and offline messages: redis://host:6379/0, rediss://, redis-sentinel://h1:26379,h2:26379/mymaster, redis-cluster://h1:7000,h2:7000; go-redis options as query parameters (?dial_timeout=1s&pool_size=50)")
		secretFile  = fs.String("link-secret-file", "", "file holding the shared link secret (at least 16 bytes); needed with --relay")
		nextFile    = fs.String("link-secret-next-file", "", "file holding a second link secret: a relay proving it is accepted too (the other secret of a rotation in progress)")
		authKeyFile = fs.String("auth-key-file", "", "key that checks login tokens: a PEM public key (Ed25519, RSA, ECDSA: EdDSA, RS256, ES256) or an HS256 shared key (text, at least 32 bytes); empty: logins are not authenticated")
		authLeeway  = fs.Duration("auth-leeway", msgserver.DefaultAuthLeeway, "clock skew allowed when checking a token's exp and nbf")
		authAud     = fs.String("auth-audience", "", "if set, a login token's aud must include it")
		authIss     = fs.String("auth-issuer", "", "if set, a login token's iss must be it")
		tlsCert     = fs.String("tls-cert", "", "certificate (PEM, chain first) for TLS on the client port, with --tls-key; reloaded on SIGHUP or when the file changes. Empty: plaintext")
		tlsKey      = fs.String("tls-key", "", "the key of --tls-cert (PEM)")
		linkCA      = fs.String("link-ca", "", "CA certificates (PEM) that verify the relay's certificate: the link runs over TLS. Empty: plaintext")
		linkName    = fs.String("link-server-name", "", "name the relay's certificate must carry (DNS name or IP); default: the host of --relay")
		linkCert    = fs.String("link-cert", "", "client certificate (PEM) shown to a relay that requires one (relay --link-client-ca), with --link-key; its common name or a DNS name must be --id. Reloaded like --tls-cert")
		linkKey     = fs.String("link-key", "", "the key of --link-cert (PEM)")
		redisCA     = fs.String("redis-ca-file", "", "CA certificates (PEM) that verify a rediss:// Redis's certificate instead of the system's")
		redisPass   = fs.String("redis-password-file", "", "file holding the Redis password (not in --redis then); read again for each new Redis connection, so a rotated password needs no restart")
		admin       = fs.String("admin", "127.0.0.1:9200", "admin HTTP address for /healthz, /metrics and the admin API (/admin/: sessions, kick, drain); empty disables it")
		adminToken  = fs.String("admin-token-file", "", "file holding the admin API's bearer token (at least 16 bytes): with it, /admin/ answers any address that sends the token; without it, loopback clients only")
		presenceTTL = fs.Duration("presence-ttl", msgserver.DefaultPresenceTTL, "TTL of a user's presence record; a crashed server's users vanish after it")
		inboxMax    = fs.Int("inbox-max", msgserver.DefaultInboxMax, "offline messages an inbox holds; more are refused (inbox_full), none dropped")
		unackedMax  = fs.Int("unacked-max", msgserver.DefaultUnackedMax, "events a session with acks may hold unacked beyond --inbox-max; past it the session is closed (too_many_unacked)")
		inboxTTL    = fs.Duration("inbox-ttl", msgserver.DefaultInboxTTL, "how long offline messages are kept")
		offlineMax  = fs.Int64("offline-max-bytes", msgserver.DefaultOfflineMaxBytes, "refuse offline messages (offline_full) while Redis's used_memory is above this (read every second); set it below Redis's maxmemory; negative: no cap")
		offlineRate = fs.Int("offline-rate", msgserver.DefaultOfflineRate, "offline messages one client connection may store per minute, at once or spread out (rate_limited beyond); negative: no limit")
		maxSessions = fs.Int("max-sessions", msgserver.DefaultMaxSessions, "most client connections at once (lowered at start to the descriptor limit less --fd-headroom)")
		fdHeadroom  = fs.Int("fd-headroom", msgserver.DefaultFDHeadroom, "descriptors kept out of the client connections, for Redis, the relay link and the admin port")
		idle        = fs.Duration("idle-timeout", msgserver.DefaultIdleTimeout, "disconnect a client silent for this long (clients send ping)")
		loginTO     = fs.Duration("login-timeout", msgserver.DefaultLoginTimeout, "disconnect a client not logged in this long after connecting")
		lineTO      = fs.Duration("line-timeout", msgserver.DefaultLineTimeout, "disconnect a client whose line is not complete this long after its first byte")
		reqRate     = fs.Float64("request-rate", msgserver.DefaultRequestRate, "requests per second a connection may sustain; over it a request gets rate_limited; negative: no limit")
		reqBurst    = fs.Int("request-burst", msgserver.DefaultRequestBurst, "requests a connection may send at once above --request-rate")
		perIP       = fs.Int("max-conns-per-ip", msgserver.DefaultMaxConnsPerIP, "open client connections per source address (IPv6: per /64); negative: no cap")
		loginRate   = fs.Float64("login-rate-per-ip", msgserver.DefaultLoginRatePerIP, "login requests per second per source address; negative: no limit")
		loginBurst  = fs.Int("login-burst-per-ip", msgserver.DefaultLoginBurstPerIP, "login requests a source address may send at once above --login-rate-per-ip")
		exempt      = fs.String("per-ip-exempt", "127.0.0.0/8,::1/128", "comma-separated networks the per-address limits skip (a local proxy, load tests); empty: none")
		park        = fs.Duration("park-idle-after", msgserver.DefaultParkIdleAfter, "a client silent this long waits in the poller, without a goroutine or read buffer of its own; negative: never")
		maxUnacked  = fs.Int("max-unacked", msgserver.DefaultMaxUnacked, "forwarded messages kept for resending until acked")
		stallAfter  = fs.Duration("stall-after", msgserver.DefaultStallAfter, "with two relays: a link silent this long (or 4x the average ack latency, if longer) while a message sent over it that long ago awaits its ack is presumed stalled, and its messages go over the other link; negative: wait for the link to be declared dead")
		connectTO   = fs.Duration("connect-timeout", msgserver.DefaultConnectTimeout, "each TCP connect to a relay; one not done by then (a SYN lost while a VIP moves) is tried again at once")
		sendWindow  = fs.Int("send-window", msgserver.DefaultSendWindow, "forwarded messages in flight (not yet acked) before the server stops reading from clients that send more, until acks make room")
		noRoute     = fs.Duration("no-route-timeout", msgserver.DefaultNoRouteGiveUp, "keep retrying a message whose destination server has no relay link this long, then store it offline")
		grace       = fs.Duration("shutdown-grace", 5*time.Second, "on SIGTERM, how long to wait for relayed messages to be acked")
		pprofOn     = fs.Bool("pprof", false, "serve /debug/pprof on the admin address")
		logLevel    = fs.String("log-level", "info", "debug, info, warn or error")
		logFormat   = fs.String("log-format", "text", "text or json")
	)
	if code, done := fs.Parse(args); done {
		return code
	}
	log, err := cli.NewLogger(*logLevel, *logFormat)
	if err != nil {
		fmt.Fprintln(os.Stderr, "msgserver:", err)
		return 2
	}
	store.SetLogger(log) // go-redis's own lines too, in --log-format
	var secret, next []byte
	if *relayAddr != "" {
		if secret, next, err = cli.ReadSecrets(*secretFile, *nextFile); err != nil {
			fmt.Fprintln(os.Stderr, "msgserver:", err)
			return 2
		}
	}
	var authKey *msgserver.AuthKey
	if *authKeyFile != "" {
		if authKey, err = readAuthKey(*authKeyFile); err != nil {
			fmt.Fprintln(os.Stderr, "msgserver: --auth-key-file:", err)
			return 2
		}
	}
	var adminTok []byte
	if *adminToken != "" {
		if adminTok, err = readToken(*adminToken); err != nil {
			return fs.Fail("--admin-token-file: %v", err)
		}
	}
	exemptNets, err := parsePrefixes(*exempt)
	if err != nil {
		fmt.Fprintln(os.Stderr, "msgserver: --per-ip-exempt:", err)
		return 2
	}
	ropts, err := store.ParseURL(*redisURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "msgserver: --redis:", err)
		return 2
	}
	if *redisCA != "" {
		if err := ropts.UseCA(*redisCA); err != nil {
			fmt.Fprintln(os.Stderr, "msgserver: --redis-ca-file:", err)
			return 2
		}
	}
	if *redisPass != "" {
		if err := ropts.UsePasswordFile(*redisPass); err != nil {
			return fs.Fail("--redis-password-file: %v", err)
		}
	}
	tlsc, err := loadTLS(tlsFlags{
		cert: *tlsCert, key: *tlsKey, relay: *relayAddr,
		linkCA: *linkCA, linkName: *linkName, linkCert: *linkCert, linkKey: *linkKey,
	}, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "msgserver:", err)
		return 2
	}
	rdb := ropts.NewClient()
	defer rdb.Close()
	var allowed []string
	for _, o := range strings.Split(*origins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			allowed = append(allowed, o)
		}
	}

	ln, err := netx.Listen(*listen)
	if err != nil {
		log.Error("cannot listen for clients", "addr", *listen, "err", err)
		return 1
	}
	adv := *advertise
	if adv == "" {
		adv = defaultAdvertise(ln.Addr())
	}

	reg := health.NewRegistry()
	for i, r := range tlsc.reloaders {
		reg.MustRegister(r.ExpiryGauge(tlsc.uses[i]))
	}
	srv, err := msgserver.New(msgserver.Config{
		ID:             *id,
		AdvertiseAddr:  adv,
		RelayAddr:      *relayAddr,
		StallAfter:     *stallAfter,
		ConnectTimeout: *connectTO,
		Secret:         secret,
		NextSecret:     next,
		Redis:          rdb,
		TLS:            tlsc.client,
		LinkTLS:        tlsc.link,
		AllowedOrigins: allowed,
		PresenceTTL:    *presenceTTL,
		InboxMax:       *inboxMax,
		UnackedMax:     *unackedMax,
		InboxTTL:       *inboxTTL,
		MaxSessions:    *maxSessions,
		FDHeadroom:     *fdHeadroom,
		IdleTimeout:    *idle,
		ParkIdleAfter:  *park,
		MaxUnacked:     *maxUnacked,
		SendWindow:     *sendWindow,
		NoRouteGiveUp:  *noRoute,
		AuthKey:        authKey,
		AuthLeeway:     *authLeeway,
		AuthAudience:   *authAud,
		AuthIssuer:     *authIss,

		LoginTimeout:    *loginTO,
		LineTimeout:     *lineTO,
		RequestRate:     *reqRate,
		RequestBurst:    *reqBurst,
		MaxConnsPerIP:   *perIP,
		LoginRatePerIP:  *loginRate,
		LoginBurstPerIP: *loginBurst,
		PerIPExempt:     exemptNets,

		OfflineMaxBytes: *offlineMax,
		OfflineRate:     *offlineRate,

		Logger:  log,
		Metrics: msgserver.NewMetrics(reg),
	})
	if err != nil {
		ln.Close()
		fmt.Fprintln(os.Stderr, "msgserver:", err)
		return 2
	}
	adminMux := http.NewServeMux()
	adminMux.Handle("/admin/", srv.AdminAPI(adminTok))
	adminMux.Handle("/", health.AdminHandler(srv.Report, reg, *pprofOn))
	adminSrv, _, err := cli.ServeAdmin(*admin, adminMux, log)
	if err != nil {
		log.Error("cannot serve admin address", "err", err)
		srv.Close()
		return 1
	}

	ctx, stop := cli.SignalContext()
	defer stop()
	for _, r := range tlsc.reloaders {
		go r.Watch(ctx, 0)
	}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	if *httpListen != "" {
		hl, err := netx.Listen(*httpListen)
		if err != nil {
			log.Error("cannot listen for the web port", "addr", *httpListen, "err", err)
			srv.Close()
			return 1
		}
		scheme := "http"
		if tlsc.client != nil {
			scheme = "https"
		}
		log.Info("chat page", "url", scheme+"://"+hl.Addr().String()+"/")
		go func() { errc <- srv.ServeWeb(hl) }()
	}
	code := 0
	select {
	case <-ctx.Done():
		log.Info("signal received, shutting down", "grace", *grace)
	case <-srv.Drained():
		log.Info("drain over, shutting down", "grace", *grace)
	case err := <-errc:
		log.Error("message server stopped", "err", err)
		srv.Close()
		code = 1
	}
	if code == 0 {
		sctx, cancel := context.WithTimeout(context.Background(), *grace)
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("shutdown incomplete", "err", err)
		}
		cancel()
	}
	if adminSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = adminSrv.Shutdown(sctx)
	}
	return code
}

// parsePrefixes reads comma-separated networks (10.0.0.0/8) or addresses
// (one address is its own network). Empty is none, not nil: the server's
// default (loopback) applies only to nil.
func parsePrefixes(s string) ([]netip.Prefix, error) {
	out := []netip.Prefix{}
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		if a, err := netip.ParseAddr(f); err == nil {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a network (10.0.0.0/8) nor an address", f)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// tlsFlags are the TLS flags as given.
type tlsFlags struct {
	cert, key, relay                    string
	linkCA, linkName, linkCert, linkKey string
}

// tlsSetup is what the TLS flags make: configs for the client port and the
// relay link (nil: plaintext), and the certificates to keep current.
type tlsSetup struct {
	client, link *tls.Config
	reloaders    []*certs.Reloader
	uses         []string // what each reloader's certificate is for (certs.ExpiryGauge)
}

func loadTLS(f tlsFlags, log *slog.Logger) (tlsSetup, error) {
	var t tlsSetup
	if f.cert != "" || f.key != "" {
		r, err := certs.Load(f.cert, f.key, log)
		if err != nil {
			return t, fmt.Errorf("--tls-cert: %w", err)
		}
		t.client = certs.ServerConfig(r)
		t.reloaders = append(t.reloaders, r)
		t.uses = append(t.uses, "clients")
	}
	if f.linkCA == "" {
		if f.linkName != "" || f.linkCert != "" || f.linkKey != "" {
			return t, errors.New("--link-server-name, --link-cert and --link-key need --link-ca (the link's TLS)")
		}
		return t, nil
	}
	if f.relay == "" {
		return t, errors.New("--link-ca needs --relay")
	}
	pool, err := certs.LoadPool(f.linkCA)
	if err != nil {
		return t, fmt.Errorf("--link-ca: %w", err)
	}
	t.link = &tls.Config{MinVersion: certs.MinVersion, RootCAs: pool, ServerName: f.linkName}
	if f.linkCert != "" || f.linkKey != "" {
		r, err := certs.Load(f.linkCert, f.linkKey, log)
		if err != nil {
			return t, fmt.Errorf("--link-cert: %w", err)
		}
		t.link.GetClientCertificate = r.GetClientCertificate
		t.reloaders = append(t.reloaders, r)
		t.uses = append(t.uses, "link-client")
	}
	return t, nil
}

// defaultAdvertise is this host's private IP (as go-sockaddr finds it) with
// the listen port, or the listen address itself when it is specific.
func defaultAdvertise(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	if !tcp.IP.IsUnspecified() {
		return tcp.String()
	}
	ip, err := sockaddr.GetPrivateIP()
	if err != nil || ip == "" {
		ip = "127.0.0.1"
	}
	return net.JoinHostPort(ip, fmt.Sprint(tcp.Port))
}

// readToken reads a secret token file: surrounding space trimmed, at
// least 16 bytes.
func readToken(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b = []byte(strings.TrimSpace(string(b)))
	if len(b) < 16 {
		return nil, fmt.Errorf("the token in %s is %d bytes; use at least 16 (e.g. openssl rand -hex 32)", path, len(b))
	}
	return b, nil
}
