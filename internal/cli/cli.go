// Package cli holds what the binaries share: flags from the environment,
// logging set-up, reading the link secrets, serving the admin address and
// running until a signal.
package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/chatrelay/chatrelay/wire"
)

// EnvPrefix is prepended to a flag's upper-cased name to find its
// environment variable: --link-secret-file is CHATRELAY_LINK_SECRET_FILE.
const EnvPrefix = "CHATRELAY_"

// EnvName returns the environment variable that sets flag name.
func EnvName(name string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Parse parses args, then fills every flag not given on the command line
// from its environment variable, if set. --help prints the usage to
// stdout and returns flag.ErrHelp; any other mistake is returned as one
// line saying what is wrong and where the help is (the flag package
// prints nothing). Command does the same with its own writers.
func Parse(fs *flag.FlagSet, args []string) error {
	return parse(fs, args, true, func() {
		out := fs.Output()
		fs.SetOutput(os.Stdout)
		fs.Usage()
		fs.SetOutput(out)
	})
}

// Usage sets a usage text that lists each flag with its environment
// variable, in Command's format.
func Usage(fs *flag.FlagSet, synopsis string) {
	fs.Usage = func() { printHelp(fs.Output(), fs, synopsis, true) }
}

// NewLogger returns a logger writing to stderr at level ("debug", "info",
// "warn", "error"), as text or JSON.
func NewLogger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	default:
		return nil, fmt.Errorf("log format %q: want text or json", format)
	}
}

// ReadSecrets reads the link secret from path (--link-secret-file) and,
// when nextPath (--link-secret-next-file) is given, the other secret of a
// rotation in progress; next is nil without it. Surrounding space is
// trimmed; each must be at least wire.MinSecretLen bytes.
func ReadSecrets(path, nextPath string) (secret, next []byte, err error) {
	if path == "" {
		return nil, nil, errors.New("no link secret file given (--link-secret-file)")
	}
	if secret, err = readSecret(path); err != nil {
		return nil, nil, err
	}
	if nextPath != "" {
		if next, err = readSecret(nextPath); err != nil {
			return nil, nil, fmt.Errorf("--link-secret-next-file: %w", err)
		}
	}
	return secret, next, nil
}

func readSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read link secret: %w", err)
	}
	b = bytes.TrimSpace(b)
	if len(b) < wire.MinSecretLen {
		return nil, fmt.Errorf("link secret in %s is %d bytes; use at least %d (e.g. openssl rand -hex 32)", path, len(b), wire.MinSecretLen)
	}
	return b, nil
}

// ServeAdmin serves h on addr in the background and returns the server and
// its bound address. An empty addr serves nothing.
func ServeAdmin(addr string, h http.Handler, log *slog.Logger) (*http.Server, net.Addr, error) {
	if addr == "" {
		return nil, nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("admin listen: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin server failed", "err", err)
		}
	}()
	log.Info("admin listening", "addr", ln.Addr().String())
	return srv, ln.Addr(), nil
}

// SignalContext returns a context cancelled by SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}
