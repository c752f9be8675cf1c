// Command demo runs the whole chat tier on loopback in one process: Redis
// (embedded by default, or a real one given by --redis), one relay and two
// message servers, then prints how to chat across them with telnet.
//
//	go run ./cmd/demo
//	go run ./cmd/demo --auth   (logins need a signed token; it prints one per example user)
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/health"
	"github.com/chatrelay/chatrelay/internal/cli"
	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/relay"
	"github.com/chatrelay/chatrelay/store"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	cli.Usage(fs, "demo: Redis, a relay and two message servers on 127.0.0.1, in one process.\n\nUsage: go run ./cmd/demo [flags]")
	var (
		redisURL  = fs.String("redis", "", "use this Redis (redis://127.0.0.1:6379/0) instead of the embedded one")
		relayPort = fs.Int("relay-port", 7000, "relay link port")
		port1     = fs.Int("port1", 7001, "client port of message server msg-1")
		port2     = fs.Int("port2", 7002, "client port of message server msg-2")
		webPort   = fs.Int("web-port", 8001, "chat page port of msg-1 (http://127.0.0.1:PORT/); msg-2 uses the next; 0: no chat page")
		adminPort = fs.Int("admin-port", 9100, "relay admin port; msg-1 and msg-2 use the next two; 0 picks free ports")
		logLevel  = fs.String("log-level", "info", "debug, info, warn or error")
		auth      = fs.Bool("auth", false, "turn on signed logins: generate an HS256 key, give it to both message servers and print a token for each example user")
	)
	if err := cli.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 2
	}
	log, err := cli.NewLogger(*logLevel, "text")
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 2
	}
	store.SetLogger(log)
	var ropts *store.Options
	if *redisURL != "" {
		if ropts, err = store.ParseURL(*redisURL); err != nil {
			fmt.Fprintln(os.Stderr, "demo: --redis:", err)
			return 2
		}
	}
	if err := demo(log, ropts, *redisURL, *relayPort, *port1, *port2, *adminPort, *webPort, *auth); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	return 0
}

// demo runs until a signal, with the Redis of ropts (described by
// redisDesc), or an embedded one when ropts is nil; with auth, logins
// need a token.
func demo(log *slog.Logger, ropts *store.Options, redisDesc string, relayPort, port1, port2, adminPort, webPort int, auth bool) error {
	ctx, stop := cli.SignalContext()
	defer stop()

	var offlineMax int64 // the message server's default cap
	if ropts == nil {
		// The embedded Redis does not report its memory use, which the
		// offline storage cap reads: no cap for it, and no warning.
		offlineMax = -1
		mr := miniredis.NewMiniRedis()
		if err := mr.StartAddr("127.0.0.1:0"); err != nil {
			return fmt.Errorf("start embedded redis: %w", err)
		}
		defer mr.Close()
		ropts = &store.Options{Single: &redis.Options{Addr: mr.Addr()}}
		redisDesc = "embedded, at " + mr.Addr()
	}

	secret := []byte(randomSecret())
	var demoAuth *demoAuth
	if auth {
		a, err := newDemoAuth()
		if err != nil {
			return err
		}
		defer os.Remove(a.keyFile)
		demoAuth = a
	}
	relayReg := health.NewRegistry()
	rl, err := relay.New(relay.Config{ID: "relay-demo", Secret: secret, Logger: log, Metrics: relay.NewMetrics(relayReg)})
	if err != nil {
		return err
	}
	defer rl.Close()
	relayAddr := fmt.Sprintf("127.0.0.1:%d", relayPort)
	rln, err := net.Listen("tcp", relayAddr)
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	go func() {
		if err := rl.Serve(rln); err != nil {
			log.Error("relay stopped", "err", err)
		}
	}()
	// adminAddr is the i-th admin address: consecutive ports, or free ones.
	adminAddr := func(i int) string {
		if adminPort == 0 {
			return "127.0.0.1:0"
		}
		return fmt.Sprintf("127.0.0.1:%d", adminPort+i)
	}
	var admins [3]net.Addr
	// serveAdmin serves on the i-th admin address, or on a free port when
	// that one is taken (a node exporter often holds 9100): the demo prints
	// where each one ended up.
	serveAdmin := func(i int, h http.Handler) error {
		_, a, err := cli.ServeAdmin(adminAddr(i), h, log)
		if err != nil && adminPort != 0 {
			log.Warn("admin port taken, using a free one", "wanted", adminAddr(i), "err", err)
			_, a, err = cli.ServeAdmin("127.0.0.1:0", h, log)
		}
		admins[i] = a
		return err
	}
	if err := serveAdmin(0, health.AdminHandler(rl.Report, relayReg, false)); err != nil {
		return err
	}

	var servers []*msgserver.Server
	var pages []string
	for i, port := range []int{port1, port2} {
		id := fmt.Sprintf("msg-%d", i+1)
		rdb := ropts.NewClient()
		defer rdb.Close()
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s: %w", id, err)
		}
		reg := health.NewRegistry()
		srv, err := msgserver.New(msgserver.Config{
			ID: id, AdvertiseAddr: addr, RelayAddr: relayAddr, Secret: secret, Redis: rdb,
			AuthKey: demoAuth.verifyKey(), OfflineMaxBytes: offlineMax, Logger: log, Metrics: msgserver.NewMetrics(reg),
		})
		if err != nil {
			ln.Close()
			return err
		}
		servers = append(servers, srv)
		go func() {
			if err := srv.Serve(ln); err != nil {
				log.Error("message server stopped", "server", id, "err", err)
			}
		}()
		if webPort != 0 {
			wl, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", webPort+i))
			if err != nil {
				return fmt.Errorf("%s chat page: %w", id, err)
			}
			pages = append(pages, fmt.Sprintf("http://%s/", wl.Addr()))
			go func() {
				if err := srv.ServeWeb(wl); err != nil {
					log.Error("chat page stopped", "server", id, "err", err)
				}
			}()
		}
		if err := serveAdmin(1+i, health.AdminHandler(srv.Report, reg, false)); err != nil {
			return err
		}
	}

	login1, login2, authNote := `{"cmd":"login","name":"zhima201"}`, `{"cmd":"login","name":"zhima202"}`, ""
	if demoAuth != nil {
		var err error
		if login1, err = demoAuth.login("zhima201"); err != nil {
			return err
		}
		if login2, err = demoAuth.login("zhima202"); err != nil {
			return err
		}
		authNote = fmt.Sprintf(`
Logins need a token signed with the HS256 key in %s (valid %s);
another user's: go run ./cmd/msgserver token --key-file %s --name NAME
`, demoAuth.keyFile, demoTokenTTL, demoAuth.keyFile)
	}
	fmt.Printf(`
chat relay demo is running (Redis: %s)
  relay      127.0.0.1:%d   health: curl http://%s/healthz
  msg-1      127.0.0.1:%d   health: curl http://%s/healthz
  msg-2      127.0.0.1:%d   health: curl http://%s/healthz
%s
In one terminal:   telnet 127.0.0.1 %d
  %s
In another:        telnet 127.0.0.1 %d
  %s
Then, in the first:
  {"cmd":"chat","send":"zhima201","recv":"zhima202","content":"how are you"}
%s
Ctrl-C stops everything.
`, redisDesc, relayPort, admins[0], port1, admins[1], port2, admins[2], authNote, port1, login1, port2, login2, pagesNote(pages, demoAuth != nil))

	<-ctx.Done()
	log.Info("stopping")
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(sctx)
	}
	return nil
}

// pagesNote tells where the chat pages are.
func pagesNote(pages []string, auth bool) string {
	if len(pages) == 0 {
		return ""
	}
	note := "\nOr chat in a browser (or both: telnet and browser users chat together):\n"
	for i, p := range pages {
		note += fmt.Sprintf("  msg-%d chat page  %s\n", i+1, p)
	}
	if auth {
		note += "  (log in with a name and its token, the \"token\" of a login line above)\n"
	}
	return note
}

// demoTokenTTL is how long the demo's tokens are valid.
const demoTokenTTL = 24 * time.Hour

// demoAuth is the demo's signed-login set-up: a random HS256 key, kept in
// a file while the demo runs so that more tokens can be made with
// msgserver token.
type demoAuth struct {
	keyFile string
	verify  *msgserver.AuthKey
	sign    *msgserver.SigningKey
}

func newDemoAuth() (*demoAuth, error) {
	key := []byte(randomSecret() + randomSecret()) // 64 hex digits
	f, err := os.CreateTemp("", "chatrelay-demo-*.key")
	if err != nil {
		return nil, fmt.Errorf("auth key file: %w", err)
	}
	_, err = f.Write(append(key, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, fmt.Errorf("auth key file: %w", err)
	}
	a := &demoAuth{keyFile: f.Name()}
	if a.verify, err = msgserver.ParseAuthKey(key); err == nil {
		a.sign, err = msgserver.ParseSigningKey(key)
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, err
	}
	return a, nil
}

// verifyKey is the message servers' AuthKey: nil (no auth) without --auth.
func (a *demoAuth) verifyKey() *msgserver.AuthKey {
	if a == nil {
		return nil
	}
	return a.verify
}

// login returns the login line for name, with its token.
func (a *demoAuth) login(name string) (string, error) {
	tok, err := a.sign.Token(name, demoTokenTTL, "", "")
	if err != nil {
		return "", err
	}
	return fmt.Sprintf(`{"cmd":"login","name":%q,"token":%q}`, name, tok), nil
}

func randomSecret() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%x", b)
}
