package store

import (
	"crypto/tls"
	"strings"
	"testing"

	"github.com/chatrelay/chatrelay/internal/certs/certstest"
)

// A TLS URL checks each host it dials (not the first of a list), needs TLS
// 1.2, and takes a private CA; a CA for a plaintext URL is a mistake.
func TestTLSURLs(t *testing.T) {
	for _, u := range []string{"rediss://h1:6379/0", "rediss-sentinel://h1:26379,h2:26379/m", "rediss-cluster://h1:7000,h2:7001"} {
		o, err := ParseURL(u)
		if err != nil {
			t.Fatal(err)
		}
		if tc := o.tlsConfig(); tc == nil || tc.ServerName != "" || tc.MinVersion != tls.VersionTLS12 {
			t.Errorf("%s: TLS config %+v, want no fixed server name and TLS 1.2 at least", u, tc)
		}
	}
	ca := certstest.NewCA(t)
	o, err := ParseURL("redis://h1:6379/0")
	if err != nil {
		t.Fatal(err)
	}
	if err := o.UseCA(ca.File); err == nil || !strings.Contains(err.Error(), "needs a TLS URL") {
		t.Fatalf("CA for a plaintext URL: %v", err)
	}

}
