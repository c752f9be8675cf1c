// Package certs loads the TLS material the binaries are given on the command
// line and keeps a certificate current: a renewed pair is picked up on SIGHUP
// or when its files change, so renewals need no restart. Every TLS config it
// builds requires TLS 1.2 or later and otherwise keeps Go's defaults.
package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// MinVersion is the oldest TLS version any port accepts.
const MinVersion = tls.VersionTLS12

// DefaultPoll is how often Watch looks at the files' modification times.
const DefaultPoll = 5 * time.Second

// Reloader holds a certificate and its key, read from two PEM files, and
// serves the newest good pair to TLS handshakes.
type Reloader struct {
	certFile, keyFile string
	log               *slog.Logger
	cur               atomic.Pointer[tls.Certificate]

	mu   sync.Mutex // serialises Reload
	seen [2]time.Time
}

// Load reads the pair once; an unreadable or mismatched pair is an error.
func Load(certFile, keyFile string, log *slog.Logger) (*Reloader, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("a TLS certificate needs both a certificate file and a key file")
	}
	if log == nil {
		log = slog.Default()
	}
	r := &Reloader{certFile: certFile, keyFile: keyFile, log: log}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Reload reads the files again. On error the previous pair stays in use.
func (r *Reloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := [2]time.Time{modTime(r.certFile), modTime(r.keyFile)}
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("load TLS certificate %s: %w", r.certFile, err)
	}
	r.seen = seen
	r.cur.Store(&c)
	return nil
}

// GetCertificate serves the pair in use to a TLS server (tls.Config.GetCertificate).
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cur.Load(), nil
}

// GetClientCertificate serves the pair in use to a TLS client asked for one
// (tls.Config.GetClientCertificate).
func (r *Reloader) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return r.cur.Load(), nil
}

// Watch reloads the pair on SIGHUP and when either file's modification time
// changes (checked every poll; zero means DefaultPoll), logging each outcome.
// It returns when ctx ends.
func (r *Reloader) Watch(ctx context.Context, poll time.Duration) {
	if poll <= 0 {
		poll = DefaultPoll
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			r.reloadAndLog("SIGHUP")
		case <-t.C:
			r.mu.Lock()
			changed := modTime(r.certFile) != r.seen[0] || modTime(r.keyFile) != r.seen[1]
			r.mu.Unlock()
			if changed {
				r.reloadAndLog("files changed")
			}
		}
	}
}

func (r *Reloader) reloadAndLog(why string) {
	if err := r.Reload(); err != nil {
		r.log.Error("TLS certificate not reloaded; the previous one stays in use", "cause", why, "err", err)
		return
	}
	r.log.Info("TLS certificate reloaded", "cause", why, "cert", r.certFile, "expires", r.notAfter())
}

func (r *Reloader) notAfter() time.Time {
	if c := r.cur.Load(); c != nil && c.Leaf != nil {
		return c.Leaf.NotAfter
	}
	return time.Time{}
}

func modTime(path string) time.Time {
	fi, err := os.Stat(path)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

// ServerConfig is a TLS server config serving r's certificate.
func ServerConfig(r *Reloader) *tls.Config {
	return &tls.Config{MinVersion: MinVersion, GetCertificate: r.GetCertificate}
}

// LoadPool reads a PEM file of CA certificates.
func LoadPool(caFile string) (*x509.CertPool, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", caFile)
	}
	return pool, nil
}
