package msgserver

import (
	"bufio"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const testHMACKey = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// keyPEMs is a key pair as the files an operator would hold.
type keyPEMs struct {
	pub, priv []byte // PKIX public key, PKCS#8 private key
	signer    crypto.Signer
}

func newKeyPEMs(t testing.TB, signer crypto.Signer) keyPEMs {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	pder, err := x509.MarshalPKCS8PrivateKey(signer)
	if err != nil {
		t.Fatal(err)
	}
	return keyPEMs{
		pub:    pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		priv:   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pder}),
		signer: signer,
	}
}

func ed25519Keys(t testing.TB) keyPEMs {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return newKeyPEMs(t, priv)
}

func rsaKeys(t testing.TB, bits int) keyPEMs {
	priv, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return newKeyPEMs(t, priv)
}

func ecdsaKeys(t testing.TB, c elliptic.Curve) keyPEMs {
	priv, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return newKeyPEMs(t, priv)
}

func mustAuthKey(t testing.TB, data []byte) *AuthKey {
	t.Helper()
	k, err := ParseAuthKey(data)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustSigningKey(t testing.TB, data []byte) *SigningKey {
	t.Helper()
	k, err := ParseSigningKey(data)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sign makes a token with any method, key and claims, as an attacker could.
func sign(t testing.TB, m jwt.SigningMethod, key any, c jwt.Claims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, c).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func claimsFor(sub string, exp time.Duration) jwt.MapClaims {
	return jwt.MapClaims{"sub": sub, "exp": time.Now().Add(exp).Unix()}
}

func TestParseAuthKey(t *testing.T) {
	ed := ed25519Keys(t)
	rs := rsaKeys(t, 2048)
	rsaPKCS1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(rs.signer.Public().(*rsa.PublicKey))})
	small := rsaKeys(t, 1024)
	ssh := []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGjvbYyJkLbTQpq user@host\n")
	cert := selfSigned(t, ed.signer)
	for _, tc := range []struct {
		name    string
		data    []byte
		wantAlg string // or
		wantErr string
	}{
		{"hmac text key with newline", []byte(testHMACKey + "\n"), "HS256", ""},
		{"hmac 32 bytes", []byte(testHMACKey[:32]), "HS256", ""},
		{"hmac too short", []byte(testHMACKey[:31] + "\n\n"), "", "use at least 32"},
		{"empty file", nil, "", "use at least 32"},
		{"ed25519 public key", ed.pub, "EdDSA", ""},
		{"rsa public key", rs.pub, "RS256", ""},
		{"rsa PKCS#1 public key", rsaPKCS1, "RS256", ""},
		{"ecdsa P-256", ecdsaKeys(t, elliptic.P256()).pub, "ES256", ""},
		{"ecdsa P-384", ecdsaKeys(t, elliptic.P384()).pub, "ES384", ""},
		{"rsa 1024 bits", small.pub, "", "use at least 2048"},
		{"private key", ed.priv, "", "a message server needs only the public key"},
		{"certificate", cert, "", "give the public key itself"},
		{"broken PEM is not an HMAC key", []byte("-----BEGIN PUBLIC KEY-----\n" + testHMACKey + "\n-----END PUBLIC KEY-----\n"), "", "PEM public key"},
		{"PEM header only", []byte("-----BEGIN PUBLIC KEY-----\n" + testHMACKey), "", "no PEM key block"},
		{"two keys", append(append([]byte(nil), ed.pub...), rs.pub...), "", "more than one PEM block"},
		{"openssh public key", ssh, "", "OpenSSH public key"},
		{"huge file", make([]byte, 1<<20), "", "is it the right file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParseAuthKey(tc.data)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if k.Algorithm() != tc.wantAlg {
				t.Fatalf("algorithm %s, want %s", k.Algorithm(), tc.wantAlg)
			}
		})
	}
}

func selfSigned(t testing.TB, key crypto.Signer) []byte {
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "issuer"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// p256OID is the DER of the P-256 curve's OID, an EC PARAMETERS block's content.
var p256OID = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}

func TestParseSigningKey(t *testing.T) {
	rs := rsaKeys(t, 2048)
	ec := ecdsaKeys(t, elliptic.P256())
	ecDER, err := x509.MarshalECPrivateKey(ec.signer.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		data    []byte
		wantAlg string
		wantErr string
	}{
		{"hmac", []byte(testHMACKey), "HS256", ""},
		{"ed25519 PKCS#8", ed25519Keys(t).priv, "EdDSA", ""},
		{"rsa PKCS#8", rs.priv, "RS256", ""},
		{"rsa PKCS#1", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rs.signer.(*rsa.PrivateKey))}), "RS256", ""},
		{"ecdsa SEC 1", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}), "ES256", ""},
		{"ecdsa after its EC PARAMETERS (openssl ecparam -genkey)", append(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: p256OID}),
			pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})...), "ES256", ""},
		{"public key", rs.pub, "", "needs the private key"},
		{"short hmac", []byte("short"), "", "use at least 32"},
		{"small rsa", rsaKeys(t, 1024).priv, "", "use at least 2048"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParseSigningKey(tc.data)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if k.Algorithm() != tc.wantAlg {
				t.Fatalf("algorithm %s, want %s", k.Algorithm(), tc.wantAlg)
			}
		})
	}
}

// A token from SigningKey.Token verifies with the matching AuthKey, for
// every kind of key, and only for its own name.
func TestTokenRoundTrip(t *testing.T) {
	type pair struct {
		alg       string
		pub, priv []byte
	}
	ed, rs, ec := ed25519Keys(t), rsaKeys(t, 2048), ecdsaKeys(t, elliptic.P521())
	for _, p := range []pair{
		{"HS256", []byte(testHMACKey), []byte(testHMACKey)},
		{"EdDSA", ed.pub, ed.priv},
		{"RS256", rs.pub, rs.priv},
		{"ES512", ec.pub, ec.priv},
	} {
		t.Run(p.alg, func(t *testing.T) {
			sk := mustSigningKey(t, p.priv)
			tok, err := sk.Token("zhima201", time.Minute, "issuer-1", "chat")
			if err != nil {
				t.Fatal(err)
			}
			v := newVerifier(mustAuthKey(t, p.pub), 0, "chat", "issuer-1")
			if ae := v.verify(tok, "zhima201"); ae != nil {
				t.Fatalf("good %s token refused: %v", p.alg, ae)
			}
			if ae := v.verify(tok, "zhima202"); ae == nil || ae.reason != authWrongSubject {
				t.Fatalf("token for zhima201 used by zhima202: %v", ae)
			}
		})
	}
	if _, err := mustSigningKey(t, []byte(testHMACKey)).Token("a", 0, "", ""); err == nil {
		t.Fatal("a token with no lifetime was made")
	}
}

// Every way a token can be wrong is refused, and the reason (for the log
// and the metric) names it.
func TestVerifyRefuses(t *testing.T) {
	hsKey := []byte(testHMACKey)
	ed := ed25519Keys(t)
	rs := rsaKeys(t, 2048)
	hs := newVerifier(mustAuthKey(t, hsKey), 30*time.Second, "", "")
	edv := newVerifier(mustAuthKey(t, ed.pub), 30*time.Second, "", "")
	rsv := newVerifier(mustAuthKey(t, rs.pub), 30*time.Second, "", "")
	scoped := newVerifier(mustAuthKey(t, hsKey), 30*time.Second, "chat", "issuer-1")
	other := ed25519Keys(t)
	pubDER := func(k keyPEMs) []byte { b, _ := pem.Decode(k.pub); return b.Bytes }
	none := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claimsFor("alice", time.Hour))
	good := sign(t, jwt.SigningMethodHS256, hsKey, claimsFor("alice", time.Hour))
	parts := strings.Split(good, ".")
	big := claimsFor("alice", time.Hour)
	big["pad"] = strings.Repeat("x", MaxTokenLen)

	for _, tc := range []struct {
		name   string
		v      *verifier
		token  string
		reason string // "" when accepted
	}{
		{"good HS256", hs, good, ""},
		{"good EdDSA", edv, sign(t, jwt.SigningMethodEdDSA, ed.signer, claimsFor("alice", time.Hour)), ""},
		{"good RS256", rsv, sign(t, jwt.SigningMethodRS256, rs.signer, claimsFor("alice", time.Hour)), ""},
		{"expired within the leeway", hs, sign(t, jwt.SigningMethodHS256, hsKey, claimsFor("alice", -10*time.Second)), ""},
		{"scoped good", scoped, sign(t, jwt.SigningMethodHS256, hsKey, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix(), "aud": []string{"other", "chat"}, "iss": "issuer-1"}), ""},

		{"no token", hs, "", authMissing},
		{"garbage", hs, "not a token", authMalformed},
		{"two parts", hs, parts[0] + "." + parts[1], authMalformed},
		{"padded base64", hs, parts[0] + "=." + parts[1] + "." + parts[2], authMalformed},
		{"too long, even if well signed", hs, sign(t, jwt.SigningMethodHS256, hsKey, big), authTooLong},
		{"forged: another HMAC key", hs, sign(t, jwt.SigningMethodHS256, []byte(strings.Repeat("k", 32)), claimsFor("alice", time.Hour)), authSignature},
		{"forged: another Ed25519 key", edv, sign(t, jwt.SigningMethodEdDSA, other.signer, claimsFor("alice", time.Hour)), authSignature},
		{"claims swapped under a good signature", hs, parts[0] + "." + strings.Split(sign(t, jwt.SigningMethodHS256, hsKey, claimsFor("bob", time.Hour)), ".")[1] + "." + parts[2], authSignature},
		{"expired", hs, sign(t, jwt.SigningMethodHS256, hsKey, claimsFor("alice", -time.Hour)), authExpired},
		{"no exp", hs, sign(t, jwt.SigningMethodHS256, hsKey, jwt.MapClaims{"sub": "alice"}), authNoExpiry},
		{"not yet valid", hs, sign(t, jwt.SigningMethodHS256, hsKey, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(2 * time.Hour).Unix(), "nbf": time.Now().Add(time.Hour).Unix()}), authNotYetValid},
		{"wrong sub", hs, sign(t, jwt.SigningMethodHS256, hsKey, claimsFor("mallory", time.Hour)), authWrongSubject},
		{"no sub", hs, sign(t, jwt.SigningMethodHS256, hsKey, jwt.MapClaims{"exp": time.Now().Add(time.Hour).Unix()}), authWrongSubject},
		{"sub differs by a space", hs, sign(t, jwt.SigningMethodHS256, hsKey, claimsFor("alice ", time.Hour)), authWrongSubject},
		{"sub of the wrong type", hs, sign(t, jwt.SigningMethodHS256, hsKey, jwt.MapClaims{"sub": 7, "exp": time.Now().Add(time.Hour).Unix()}), authMalformed},
		{"alg none", hs, none, authAlgorithm},
		{"alg none against a public key", edv, none, authAlgorithm},
		{"alg missing", hs, "eyJ0eXAiOiJKV1QifQ." + parts[1] + "." + parts[2], authAlgorithm},
		{"HS256 keyed with the Ed25519 public key PEM", edv, sign(t, jwt.SigningMethodHS256, ed.pub, claimsFor("alice", time.Hour)), authAlgorithm},
		{"HS256 keyed with the Ed25519 public key DER", edv, sign(t, jwt.SigningMethodHS256, pubDER(ed), claimsFor("alice", time.Hour)), authAlgorithm},
		{"HS256 keyed with the RSA public key PEM", rsv, sign(t, jwt.SigningMethodHS256, rs.pub, claimsFor("alice", time.Hour)), authAlgorithm},
		{"HS512 with the right HMAC key", hs, sign(t, jwt.SigningMethodHS512, hsKey, claimsFor("alice", time.Hour)), authAlgorithm},
		{"PS256 with the right RSA key", rsv, sign(t, jwt.SigningMethodPS256, rs.signer, claimsFor("alice", time.Hour)), authAlgorithm},
		{"EdDSA where the key is RSA", rsv, sign(t, jwt.SigningMethodEdDSA, ed.signer, claimsFor("alice", time.Hour)), authAlgorithm},
		{"wrong audience", scoped, sign(t, jwt.SigningMethodHS256, hsKey, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix(), "aud": "other", "iss": "issuer-1"}), authWrongAud},
		{"no audience", scoped, sign(t, jwt.SigningMethodHS256, hsKey, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix(), "iss": "issuer-1"}), authWrongAud},
		{"wrong issuer", scoped, sign(t, jwt.SigningMethodHS256, hsKey, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix(), "aud": "chat", "iss": "issuer-2"}), authWrongIssuer},
		{"no issuer", scoped, sign(t, jwt.SigningMethodHS256, hsKey, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix(), "aud": "chat"}), authWrongIssuer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ae := tc.v.verify(tc.token, "alice")
			switch {
			case tc.reason == "" && ae != nil:
				t.Fatalf("refused: %v", ae)
			case tc.reason != "" && ae == nil:
				t.Fatalf("accepted, want refused as %s", tc.reason)
			case ae != nil && ae.reason != tc.reason:
				t.Fatalf("refused as %v, want %s", ae, tc.reason)
			}
		})
	}
}

// BenchmarkVerify is the CPU a login's token check adds, per algorithm.
func BenchmarkVerify(b *testing.B) {
	ed, rs, ec := ed25519Keys(b), rsaKeys(b, 2048), ecdsaKeys(b, elliptic.P256())
	for _, p := range []struct {
		alg       string
		pub, priv []byte
	}{
		{"HS256", []byte(testHMACKey), []byte(testHMACKey)},
		{"EdDSA", ed.pub, ed.priv},
		{"RS256", rs.pub, rs.priv},
		{"ES256", ec.pub, ec.priv},
	} {
		b.Run(p.alg, func(b *testing.B) {
			tok, err := mustSigningKey(b, p.priv).Token("zhima201", time.Hour, "", "")
			if err != nil {
				b.Fatal(err)
			}
			v := newVerifier(mustAuthKey(b, p.pub), DefaultAuthLeeway, "", "")
			b.ReportAllocs()
			for b.Loop() {
				if ae := v.verify(tok, "zhima201"); ae != nil {
					b.Fatal(ae)
				}
			}
		})
	}
}

// FuzzVerifyToken feeds arbitrary tokens and names to the token check, on
// an HS256 and an EdDSA verifier. It must not panic, must label every
// refusal with one of the fixed reasons (they are a metric's label
// values), and must accept nothing that a plain reading of the rules
// refuses: exactly three strict base64url parts, the key's alg, a
// signature that verifies over the first two, an exp still ahead (give or
// take the leeway) and a sub equal to the name.
func FuzzVerifyToken(f *testing.F) {
	hsKey := []byte(testHMACKey)
	edPriv := ed25519.NewKeyFromSeed([]byte("fuzz-seed-fuzz-seed-fuzz-seed-32"))
	edPub := edPriv.Public().(ed25519.PublicKey)
	edKey := newKeyPEMs(f, edPriv)
	const leeway = 30 * time.Second
	verifiers := []struct {
		v     *verifier
		alg   string
		check func(input, sig []byte) bool
	}{
		{newVerifier(mustAuthKey(f, hsKey), leeway, "", ""), "HS256", func(input, sig []byte) bool {
			m := hmac.New(sha256.New, hsKey)
			m.Write(input)
			return hmac.Equal(m.Sum(nil), sig)
		}},
		{newVerifier(mustAuthKey(f, edKey.pub), leeway, "", ""), "EdDSA", func(input, sig []byte) bool {
			return len(sig) == ed25519.SignatureSize && ed25519.Verify(edPub, input, sig)
		}},
	}
	reasons := map[string]bool{authMissing: true, authTooLong: true, authMalformed: true, authAlgorithm: true,
		authSignature: true, authExpired: true, authNoExpiry: true, authNotYetValid: true, authWrongSubject: true,
		authWrongAud: true, authWrongIssuer: true, authBadClaims: true}

	year := 365 * 24 * time.Hour
	f.Add(sign(f, jwt.SigningMethodHS256, hsKey, claimsFor("alice", 100*year)), "alice")
	f.Add(sign(f, jwt.SigningMethodEdDSA, edPriv, claimsFor("alice", 100*year)), "alice")
	f.Add(sign(f, jwt.SigningMethodHS256, hsKey, claimsFor("alice", 100*year)), "bob")
	f.Add(sign(f, jwt.SigningMethodHS256, hsKey, claimsFor("alice", -time.Hour)), "alice")
	f.Add(sign(f, jwt.SigningMethodHS256, hsKey, jwt.MapClaims{"sub": "alice"}), "alice")
	f.Add(sign(f, jwt.SigningMethodHS256, hsKey, jwt.MapClaims{"sub": "alice", "exp": 1e300}), "alice")
	f.Add(sign(f, jwt.SigningMethodHS256, edKey.pub, claimsFor("alice", 100*year)), "alice")
	f.Add(sign(f, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claimsFor("alice", 100*year)), "alice")
	f.Add("eyJhbGciOiJIUzI1NiJ9.e30.", "")
	f.Add("..", "alice")
	f.Add("not a token", "alice")

	f.Fuzz(func(t *testing.T, token, name string) {
		for _, vc := range verifiers {
			ae := vc.v.verify(token, name)
			if ae != nil {
				if !reasons[ae.reason] || ae.err == nil {
					t.Fatalf("%s: refusal %q (%v) is not one of the fixed reasons", vc.alg, ae.reason, ae.err)
				}
				continue
			}
			if why := plainRefusal(token, name, vc.alg, vc.check, leeway); why != "" {
				t.Fatalf("%s verifier accepted %q for %q, but %s", vc.alg, token, name, why)
			}
		}
	})
}

// plainRefusal says why the rules refuse token for name, or "" if they
// accept it; written without the JWT library, as the fuzz target's oracle.
func plainRefusal(token, name, alg string, check func(input, sig []byte) bool, leeway time.Duration) string {
	if token == "" || len(token) > MaxTokenLen {
		return "its length is out of bounds"
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "it does not have three parts"
	}
	var raw [3][]byte
	for i, p := range parts {
		b, err := base64.RawURLEncoding.Strict().DecodeString(p)
		if err != nil {
			return fmt.Sprintf("part %d is not strict base64url: %v", i, err)
		}
		raw[i] = b
	}
	var header map[string]any
	if err := json.Unmarshal(raw[0], &header); err != nil {
		return "the header is not a JSON object"
	}
	if header["alg"] != alg {
		return fmt.Sprintf("alg is %v", header["alg"])
	}
	if !check([]byte(parts[0]+"."+parts[1]), raw[2]) {
		return "the signature does not verify"
	}
	var claims struct {
		Sub *string  `json:"sub"`
		Exp *float64 `json:"exp"`
	}
	if err := json.Unmarshal(raw[1], &claims); err != nil {
		return "the claims are not a JSON object"
	}
	if claims.Sub == nil || *claims.Sub != name {
		return "sub is not the name"
	}
	if claims.Exp == nil || float64(time.Now().Add(-leeway).Unix()) >= *claims.Exp {
		return "it has no exp ahead"
	}
	return ""
}

// A refused login is decided before Redis is asked anything: with Redis
// unreachable, bad tokens still get auth_failed (not presence_unavailable),
// and only a good one goes on to fail at the presence store. The metric
// says why each was refused; the client does not.
func TestTokenCheckedBeforeRedis(t *testing.T) {
	hsKey := []byte(testHMACKey)
	_, addr, reg := startBareServer(t, Config{AuthKey: mustAuthKey(t, hsKey)})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	br := bufio.NewReader(c)
	login := func(token string) reply {
		t.Helper()
		b, _ := json.Marshal(map[string]string{"cmd": "login", "name": "alice", "token": token})
		if _, err := c.Write(append(b, '\n')); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := br.ReadBytes('\n')
		if err != nil {
			t.Fatal(err)
		}
		var r reply
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, tok := range []string{
		"",
		sign(t, jwt.SigningMethodHS256, []byte(strings.Repeat("k", 32)), claimsFor("alice", time.Hour)),
		sign(t, jwt.SigningMethodHS256, hsKey, claimsFor("alice", -time.Hour)),
		sign(t, jwt.SigningMethodHS256, hsKey, claimsFor("bob", time.Hour)),
	} {
		if r := login(tok); r.Code != CodeAuthFailed {
			t.Fatalf("bad token %q: reply %+v, want %s", tok, r, CodeAuthFailed)
		}
	}
	good, err := mustSigningKey(t, hsKey).Token("alice", time.Minute, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if r := login(good); r.Code != CodeUnavailable {
		t.Fatalf("good token with Redis down: reply %+v, want %s", r, CodeUnavailable)
	}
	want := map[string]float64{authMissing: 1, authSignature: 1, authExpired: 1, authWrongSubject: 1}
	if got := counters(t, reg, "msgserver_auth_failures_total", "reason"); !maps.Equal(got, want) {
		t.Fatalf("msgserver_auth_failures_total = %v, want %v", got, want)
	}
	if got := counters(t, reg, "msgserver_client_errors_total", "code")[CodeAuthFailed]; got != 4 {
		t.Fatalf("msgserver_client_errors_total{code=auth_failed} = %v, want 4", got)
	}
}

func TestDecodeLoginToken(t *testing.T) {
	r, cerr := decodeRequest([]byte(`{"cmd":"login","name":"alice","token":"a.b.c"}`))
	if cerr != nil || r.Name != "alice" || r.Token != "a.b.c" {
		t.Fatalf("decoded %+v, %v", r, cerr)
	}
	if _, cerr := decodeRequest([]byte(`{"cmd":"login","name":"alice","token":{"sub":"alice"}}`)); cerr == nil || cerr.code != CodeBadJSON {
		t.Fatalf("a token that is not a string: %v, want %s", cerr, CodeBadJSON)
	}
}
