package pki_test

import (
	"crypto/x509"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/certs/pki"
)

// A CA written to files and read back issues certificates that verify
// against it, for the names, addresses and uses asked for; a key that is
// not the CA's is refused.
func TestCAFilesIssueVerifiableCertificates(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, err := pki.NewCA("lab CA", now.Add(-time.Hour), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	caCert, caKey := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if err := ca.WriteFiles(caCert, caKey); err != nil {
		t.Fatal(err)
	}
	loaded, err := pki.LoadCA(caCert, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf := pki.Leaf{CommonName: "msg-1", DNSNames: []string{"msg-1"}, IPs: []net.IP{net.ParseIP("192.168.56.21")},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour), Client: true}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := loaded.IssueFiles(leaf, certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	c, err := pki.ReadCert(certFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("client certificate does not verify: %v", err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, DNSName: "192.168.56.21"}); err == nil {
		t.Fatal("a client-only certificate verified as a server's")
	}
	if c.Subject.CommonName != "msg-1" || len(c.IPAddresses) != 1 || !c.IPAddresses[0].Equal(net.ParseIP("192.168.56.21")) {
		t.Fatalf("issued %v %v", c.Subject, c.IPAddresses)
	}

	other, err := pki.NewCA("other", now, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	otherKey := filepath.Join(dir, "other-key.pem")
	if err := other.WriteFiles(filepath.Join(dir, "other.pem"), otherKey); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadCA(caCert, otherKey); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Fatalf("mismatched CA key: %v", err)
	}
	if _, err := pki.LoadCA(certFile, keyFile); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Fatalf("leaf as CA: %v", err)
	}
}
