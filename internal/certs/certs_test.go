package certs_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/certs"
	"github.com/chatrelay/chatrelay/internal/certs/certstest"
	"github.com/chatrelay/chatrelay/testenv"
)

// serverName dials a TLS listener using r and returns the common name of
// the certificate it presented.
func serverName(t *testing.T, r *certs.Reloader, pool *x509.CertPool) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", certs.ServerConfig(r))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName
}

func TestRenewedCertificateServedWithoutRestart(t *testing.T) {
	ca := certstest.NewCA(t)
	pool, err := certs.LoadPool(ca.File)
	if err != nil {
		t.Fatal(err)
	}
	oldCert, oldKey := ca.Issue(t, "old", "127.0.0.1")
	newCert, newKey := ca.Issue(t, "new", "127.0.0.1")
	r, err := certs.Load(oldCert, oldKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := serverName(t, r, pool); got != "old" {
		t.Fatalf("served %q, want old", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Watch(ctx, 10*time.Millisecond)

	// A broken renewal keeps the old pair.
	if err := os.WriteFile(oldCert, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(); err == nil {
		t.Fatal("reload of a broken certificate succeeded")
	}
	if got := serverName(t, r, pool); got != "old" {
		t.Fatalf("after a broken renewal served %q, want old", got)
	}

	// The renewed pair is picked up by the watcher.
	for _, f := range [][2]string{{newCert, oldCert}, {newKey, oldKey}} {
		b, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
		later := time.Now().Add(time.Second)
		_ = os.Chtimes(f[1], later, later)
	}
	testenv.Eventually(t, 5*time.Second, "the renewed certificate served", func() bool {
		return serverName(t, r, pool) == "new"
	})
}

func TestLoadRefusesBadInput(t *testing.T) {
	if _, err := certs.Load("", "", nil); err == nil {
		t.Error("Load with no files succeeded")
	}
	if _, err := certs.LoadPool("/nonexistent/ca.pem"); err == nil {
		t.Error("LoadPool of a missing file succeeded")
	}
	f := t.TempDir() + "/empty.pem"
	_ = os.WriteFile(f, []byte("nothing"), 0o600)
	if _, err := certs.LoadPool(f); err == nil {
		t.Error("LoadPool of a file without certificates succeeded")
	}
}
