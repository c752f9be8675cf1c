package testenv

import (
	"context"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/relay"
)

// Secret is the link secret tests use.
var Secret = []byte("test-link-secret-0123456789")

// Logger logs through t at debug level when CHATRELAY_TEST_LOG is set,
// else only warnings and errors.
func Logger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("CHATRELAY_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(b))
	return len(b), nil
}

// InRelay is a relay server running in the test process on 127.0.0.1.
type InRelay struct {
	*relay.Relay
	Addr string
	ln   net.Listener
	done chan struct{}
}

// StartRelay starts a relay on addr ("" for a free port); cfg's ID, Secret
// and Logger are filled in when empty. It is closed at cleanup.
func StartRelay(t testing.TB, addr string, cfg relay.Config) *InRelay {
	t.Helper()
	if cfg.ID == "" {
		cfg.ID = "relay-test"
	}
	if cfg.Secret == nil {
		cfg.Secret = Secret
	}
	if cfg.Logger == nil {
		cfg.Logger = Logger(t)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	srv, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	Eventually(t, 5*time.Second, "relay listen on "+addr, func() bool {
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	r := &InRelay{Relay: srv, Addr: ln.Addr().String(), ln: ln, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		if err := srv.Serve(ln); err != nil {
			t.Errorf("relay serve: %v", err)
		}
	}()
	t.Cleanup(r.Stop)
	return r
}

// Stop closes the relay and its links, as a crash would look to its peers.
func (r *InRelay) Stop() {
	r.Close()
	<-r.done
}

// InServer is a message server running in the test process.
type InServer struct {
	*msgserver.Server
	Addr  string
	Redis redis.UniversalClient
	done  chan struct{}
}

// StartServer starts a message server on a free port, with a Redis client
// for redisAddr; cfg's Logger, Secret and Redis are filled in when empty.
func StartServer(t testing.TB, redisAddr string, cfg msgserver.Config) *InServer {
	t.Helper()
	rdb := redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:        []string{redisAddr},
		DialTimeout:  200 * time.Millisecond,
		ReadTimeout:  500 * time.Millisecond,
		WriteTimeout: 500 * time.Millisecond,
		MaxRetries:   -1,
	})
	t.Cleanup(func() { rdb.Close() })
	if cfg.Redis == nil {
		cfg.Redis = rdb
	}
	if cfg.Secret == nil {
		cfg.Secret = Secret
	}
	if cfg.Logger == nil {
		cfg.Logger = Logger(t)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.AdvertiseAddr = ln.Addr().String()
	srv, err := msgserver.New(cfg)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	s := &InServer{Server: srv, Addr: ln.Addr().String(), Redis: rdb, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		if err := srv.Serve(ln); err != nil {
			t.Errorf("message server serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		srv.Close()
		<-s.done
	})
	return s
}

// WaitLinked waits until every server's relay link is up.
func WaitLinked(t testing.TB, servers ...*InServer) {
	t.Helper()
	for _, s := range servers {
		Eventually(t, 5*time.Second, "relay link up", func() bool {
			l := s.Links()
			return len(l) == 1 && l[0].Up
		})
	}
}

// Shutdown shuts the server down gracefully within d.
func (s *InServer) Shutdown(d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	err := s.Server.Shutdown(ctx)
	<-s.done
	return err
}
