package msgserver_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/testenv"
)

const hmacKey = "tier-test-hmac-key-0123456789abcdef0123456789abcdef"

// edKeyPair returns an Ed25519 key pair as PEM files hold them.
func edKeyPair(t *testing.T) (pub, priv []byte, key ed25519.PrivateKey) {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pder, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	sder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: sder}), key
}

func jwtSign(t *testing.T, m jwt.SigningMethod, key any, c jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, c).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func claims(sub string, exp time.Duration) jwt.MapClaims {
	return jwt.MapClaims{"sub": sub, "exp": time.Now().Add(exp).Unix()}
}

// A stranger who tries every kind of bad token for a user who is logged in
// (on the same server and on the other one) and for a user with an offline
// message gets auth_failed, always with the same text, and changes
// nothing: the logged-in user keeps its session and presence, the offline
// message waits for the real user's next login.
func TestBadTokensTouchNoOneElse(t *testing.T) {
	edPub, edPriv, edKey := edKeyPair(t)
	_, _, otherEd := edKeyPair(t)
	for _, setup := range []struct {
		name             string
		verify, signWith []byte
		// bad are this key's wrong tokens for victim, besides the
		// common ones below.
		bad func(victim string) map[string]string
	}{
		{"HS256", []byte(hmacKey), []byte(hmacKey), func(victim string) map[string]string {
			return map[string]string{
				"forged (another key)": jwtSign(t, jwt.SigningMethodHS256, []byte(strings.Repeat("x", 40)), claims(victim, time.Hour)),
				"expired":              jwtSign(t, jwt.SigningMethodHS256, []byte(hmacKey), claims(victim, -time.Hour)),
				"no exp":               jwtSign(t, jwt.SigningMethodHS256, []byte(hmacKey), jwt.MapClaims{"sub": victim}),
				"another user's":       jwtSign(t, jwt.SigningMethodHS256, []byte(hmacKey), claims("mallory", time.Hour)),
				"HS512, same key":      jwtSign(t, jwt.SigningMethodHS512, []byte(hmacKey), claims(victim, time.Hour)),
			}
		}},
		{"EdDSA", edPub, edPriv, func(victim string) map[string]string {
			return map[string]string{
				"forged (another key)":         jwtSign(t, jwt.SigningMethodEdDSA, otherEd, claims(victim, time.Hour)),
				"expired":                      jwtSign(t, jwt.SigningMethodEdDSA, edKey, claims(victim, -time.Hour)),
				"no exp":                       jwtSign(t, jwt.SigningMethodEdDSA, edKey, jwt.MapClaims{"sub": victim}),
				"another user's":               jwtSign(t, jwt.SigningMethodEdDSA, edKey, claims("mallory", time.Hour)),
				"HS256 keyed with the pub key": jwtSign(t, jwt.SigningMethodHS256, edPub, claims(victim, time.Hour)),
			}
		}},
	} {
		t.Run(setup.name, func(t *testing.T) {
			key, err := msgserver.ParseAuthKey(setup.verify)
			if err != nil {
				t.Fatal(err)
			}
			signer, err := msgserver.ParseSigningKey(setup.signWith)
			if err != nil {
				t.Fatal(err)
			}
			token := func(name string) string {
				tok, err := signer.Token(name, time.Hour, "", "")
				if err != nil {
					t.Fatal(err)
				}
				return tok
			}
			tr := startTier(t, func(c *msgserver.Config) { c.AuthKey = key; c.InboxTTL = time.Hour })

			alice := testenv.Dial(t, tr.b.Addr)
			aliceLogin := alice.LoginWithToken("alice", token("alice"))
			carol := testenv.Dial(t, tr.a.Addr)
			carol.LoginWithToken("carol", token("carol"))
			carol.Chat("bob", "for bob only")
			carol.Expect(map[string]any{"reply": "chat", "ok": true, "status": msgserver.StatusOffline})
			alicePresence := "msg-b " + aliceLogin.S("session")
			if v, _ := tr.redis.Command("GET", "chatrelay:user:alice"); v != alicePresence {
				t.Fatalf("alice's presence = %q, want %q", v, alicePresence)
			}

			var text string
			for _, attempt := range []struct {
				victim string
				server *testenv.InServer
			}{{"alice", tr.b}, {"alice", tr.a}, {"bob", tr.a}} {
				bad := setup.bad(attempt.victim)
				bad["alg none"] = jwtSign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims(attempt.victim, time.Hour))
				bad["no token"] = ""
				bad["garbage"] = "not.a.token"
				bad["too long"] = strings.Repeat("A", msgserver.MaxTokenLen+1)
				mallory := testenv.Dial(t, attempt.server.Addr)
				for what, tok := range bad {
					mallory.Send(map[string]string{"cmd": "login", "name": attempt.victim, "token": tok})
					m := mallory.Next()
					if m.S("reply") != "login" || m["ok"] != false || m.S("code") != msgserver.CodeAuthFailed {
						t.Fatalf("%s token for %s: %v", what, attempt.victim, m)
					}
					if text == "" {
						text = m.S("error")
					}
					if m.S("error") != text || m.S("session") != "" || m.S("name") != "" {
						t.Fatalf("%s token: reply %v differs from the others (error %q): it must not say what was wrong", what, m, text)
					}
				}
				mallory.Chat("carol", "as "+attempt.victim)
				mallory.Expect(map[string]any{"reply": "chat", "ok": false, "code": msgserver.CodeNotLoggedIn})
			}

			// alice is still logged in, as herself: nothing was sent her
			// before the reply to her ping, and presence names her session.
			alice.SendLine(`{"cmd":"ping"}`)
			if m := alice.Next(); m.S("reply") != "ping" {
				t.Fatalf("alice got %v, want her ping reply", m)
			}
			if v, _ := tr.redis.Command("GET", "chatrelay:user:alice"); v != alicePresence {
				t.Fatalf("alice's presence = %q after the attempts, want %q", v, alicePresence)
			}
			carol.Chat("alice", "still there?")
			alice.Expect(map[string]any{"event": "chat", "from": "carol", "content": "still there?"})
			// bob's message waited for him.
			if v, _ := tr.redis.Command("LLEN", "chatrelay:inbox:bob"); v != ":1" {
				t.Fatalf("bob's inbox LLEN = %s after the attempts, want 1", v)
			}
			bob := testenv.Dial(t, tr.b.Addr)
			bob.LoginWithToken("bob", token("bob"))
			if m := bob.Next(); m.S("event") != "chat" || m.S("content") != "for bob only" || m["offline"] != true {
				t.Fatalf("bob's first line after login = %v, want his offline message", m)
			}
		})
	}
}

// With a key set, a token is checked and the article's name-only login is
// refused; a good token then works on a session that failed before.
func TestSignedLoginAfterFailure(t *testing.T) {
	key, err := msgserver.ParseAuthKey([]byte(hmacKey))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := msgserver.ParseSigningKey([]byte(hmacKey))
	if err != nil {
		t.Fatal(err)
	}
	tr := startTier(t, func(c *msgserver.Config) { c.AuthKey = key })
	c := testenv.Dial(t, tr.a.Addr)
	c.SendLine(`{"cmd":"login","name":"zhima201"}`)
	c.Expect(map[string]any{"reply": "login", "ok": false, "code": msgserver.CodeAuthFailed})
	tok, err := signer.Token("zhima201", time.Minute, "", "")
	if err != nil {
		t.Fatal(err)
	}
	m := c.LoginWithToken("zhima201", tok)
	if m.S("name") != "zhima201" || m.S("server") != "msg-a" {
		t.Fatalf("login reply %v", m)
	}
}
