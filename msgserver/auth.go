package msgserver

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Signed logins. With an auth key configured, a login carries a JWT whose
// sub is the login name; the application that lets users in issues it. The
// key is either a shared HMAC key (HS256) or a public key (EdDSA, RS256,
// ES256/384/512), so that the issuer alone holds what signs. Exactly one
// algorithm is accepted, the one of the key: a token cannot choose how it
// is checked ("none", or HS256 keyed with the public key's bytes, are
// refused before any signature is computed).

// MaxTokenLen bounds a login token. A longer one is refused before it is
// decoded: what a stranger can make the server parse stays small.
const MaxTokenLen = 4 << 10

// MinHMACKeyLen is the shortest HS256 key accepted: the hash's own size.
const MinHMACKeyLen = 32

// maxKeyFileLen bounds a key file: a key is a few hundred bytes, so a larger
// file is the wrong file.
const maxKeyFileLen = 64 << 10

// minRSABits is the smallest RSA modulus accepted.
const minRSABits = 2048

// AuthKey verifies login tokens: an HMAC key or a public key, and the one
// signing algorithm that goes with it.
type AuthKey struct {
	method jwt.SigningMethod
	key    any // []byte, ed25519.PublicKey, *rsa.PublicKey or *ecdsa.PublicKey
}

// Algorithm is the JWT "alg" this key accepts (HS256, EdDSA, RS256, ES256...).
func (k *AuthKey) Algorithm() string { return k.method.Alg() }

// SigningKey signs login tokens (msgserver token, the demo, tests): an HMAC
// key or a private key.
type SigningKey struct {
	method jwt.SigningMethod
	key    any // []byte, ed25519.PrivateKey, *rsa.PrivateKey or *ecdsa.PrivateKey
}

// Algorithm is the JWT "alg" of the tokens this key signs.
func (k *SigningKey) Algorithm() string { return k.method.Alg() }

// ParseAuthKey reads the contents of an auth key file: a PEM public key
// (Ed25519, RSA of at least 2048 bits, or ECDSA P-256/384/521), or anything
// else as an HS256 key, which must be at least MinHMACKeyLen bytes once
// surrounding white space is trimmed (as for the link secret, so that
// `openssl rand -hex 32 >file` works). A file that looks like PEM is never
// taken as an HMAC key: a public key used as an HMAC secret is the classic
// forgery.
func ParseAuthKey(data []byte) (*AuthKey, error) {
	block, err := keyBlock(data)
	if err != nil {
		return nil, err
	}
	if block == nil {
		key, err := hmacKey(data)
		if err != nil {
			return nil, err
		}
		return &AuthKey{method: jwt.SigningMethodHS256, key: key}, nil
	}
	var pub any
	switch block.Type {
	case "PUBLIC KEY":
		if pub, err = x509.ParsePKIXPublicKey(block.Bytes); err != nil {
			return nil, fmt.Errorf("PEM public key: %w", err)
		}
	case "RSA PUBLIC KEY":
		if pub, err = x509.ParsePKCS1PublicKey(block.Bytes); err != nil {
			return nil, fmt.Errorf("PEM RSA public key: %w", err)
		}
	case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY":
		return nil, fmt.Errorf("this is a private key (PEM %q): a message server needs only the public key "+
			"(openssl pkey -in private.pem -pubout -out public.pem); keep the private key with the token issuer", block.Type)
	case "CERTIFICATE":
		return nil, errors.New("this is a certificate: give the public key itself (openssl x509 -in cert.pem -pubkey -noout)")
	default:
		return nil, fmt.Errorf("PEM block %q is not a public key", block.Type)
	}
	method, err := methodFor(pub)
	if err != nil {
		return nil, err
	}
	return &AuthKey{method: method, key: pub}, nil
}

// ParseSigningKey reads the contents of a key file that signs tokens: a PEM
// private key (PKCS#8, PKCS#1 RSA or SEC 1 EC) or an HS256 key, with the
// same rules as ParseAuthKey.
func ParseSigningKey(data []byte) (*SigningKey, error) {
	block, err := keyBlock(data)
	if err != nil {
		return nil, err
	}
	if block == nil {
		key, err := hmacKey(data)
		if err != nil {
			return nil, err
		}
		return &SigningKey{method: jwt.SigningMethodHS256, key: key}, nil
	}
	var priv any
	switch block.Type {
	case "PRIVATE KEY":
		priv, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		priv, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		priv, err = x509.ParseECPrivateKey(block.Bytes)
	case "PUBLIC KEY", "RSA PUBLIC KEY":
		return nil, errors.New("this is a public key: signing a token needs the private key")
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key (want PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("PEM %s: %w", block.Type, err)
	}
	signer, ok := priv.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", priv)
	}
	method, err := methodFor(signer.Public())
	if err != nil {
		return nil, err
	}
	return &SigningKey{method: method, key: priv}, nil
}

// Token returns a token for name, valid from now for ttl; issuer and
// audience are put in when not empty.
func (k *SigningKey) Token(name string, ttl time.Duration, issuer, audience string) (string, error) {
	if ttl <= 0 {
		return "", fmt.Errorf("token lifetime %s must be positive", ttl)
	}
	now := time.Now()
	c := jwt.RegisteredClaims{
		Subject:   name,
		Issuer:    issuer,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}
	if audience != "" {
		c.Audience = jwt.ClaimStrings{audience}
	}
	s, err := jwt.NewWithClaims(k.method, c).SignedString(k.key)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	if len(s) > MaxTokenLen {
		return "", fmt.Errorf("token is %d bytes, over the %d a server accepts", len(s), MaxTokenLen)
	}
	return s, nil
}

// keyBlock returns the PEM block of a key file, or nil when the file is
// not PEM (an HMAC key).
func keyBlock(data []byte) (*pem.Block, error) {
	if len(data) > maxKeyFileLen {
		return nil, fmt.Errorf("key file is %d bytes; a key is at most a few KiB: is it the right file?", len(data))
	}
	t := bytes.TrimSpace(data)
	if bytes.HasPrefix(t, []byte("ssh-")) || bytes.HasPrefix(t, []byte("ecdsa-sha2-")) {
		return nil, errors.New("this is an OpenSSH public key: convert it to PEM (ssh-keygen -e -m PKCS8 -f key.pub)")
	}
	if !bytes.Contains(data, []byte("-----BEGIN ")) {
		return nil, nil
	}
	var block *pem.Block
	for rest := data; ; {
		b, r := pem.Decode(rest)
		if b == nil {
			break
		}
		rest = r
		if b.Type == "EC PARAMETERS" {
			continue // openssl ecparam -genkey writes the curve before the key; the key names it too
		}
		if block != nil {
			return nil, errors.New("key file holds more than one PEM block; give exactly one key")
		}
		block = b
	}
	if block == nil {
		return nil, errors.New("key file looks like PEM but no PEM key block could be read")
	}
	return block, nil
}

func hmacKey(data []byte) ([]byte, error) {
	key := bytes.TrimSpace(data)
	if len(key) < MinHMACKeyLen {
		return nil, fmt.Errorf("HS256 key is %d bytes (after trimming white space); use at least %d (e.g. openssl rand -hex 32), "+
			"or a PEM public key", len(key), MinHMACKeyLen)
	}
	return bytes.Clone(key), nil
}

// methodFor is the one signing algorithm accepted for a public key.
func methodFor(pub any) (jwt.SigningMethod, error) {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return jwt.SigningMethodEdDSA, nil
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < minRSABits {
			return nil, fmt.Errorf("RSA key is %d bits; use at least %d", bits, minRSABits)
		}
		return jwt.SigningMethodRS256, nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return jwt.SigningMethodES256, nil
		case elliptic.P384():
			return jwt.SigningMethodES384, nil
		case elliptic.P521():
			return jwt.SigningMethodES512, nil
		}
		return nil, fmt.Errorf("ECDSA curve %s is not supported (use P-256, P-384 or P-521)", k.Curve.Params().Name)
	}
	return nil, fmt.Errorf("unsupported public key type %T (want Ed25519, RSA or ECDSA)", pub)
}

// Why a token was refused: the label of msgserver_auth_failures_total and
// of the log line. The client is told none of this, only auth_failed.
const (
	authMissing      = "missing"       // no token in the login
	authTooLong      = "too_long"      // over MaxTokenLen
	authMalformed    = "malformed"     // not a JWS in compact form
	authAlgorithm    = "algorithm"     // alg is not the key's
	authSignature    = "signature"     // the signature does not verify
	authExpired      = "expired"       // exp is past (beyond the leeway)
	authNoExpiry     = "no_expiry"     // no exp
	authNotYetValid  = "not_yet_valid" // nbf is ahead (beyond the leeway)
	authWrongSubject = "subject"       // sub is not the login name
	authWrongAud     = "audience"      // aud does not include the configured audience
	authWrongIssuer  = "issuer"        // iss is not the configured issuer
	authBadClaims    = "claims"        // a claim of the wrong type, or another claim check
)

// authError is a refused token: reason is one of the labels above, err the
// detail for the log.
type authError struct {
	reason string
	err    error
}

func (e *authError) Error() string { return e.reason + ": " + e.err.Error() }

// verifier checks login tokens against one key. It is safe for concurrent use.
type verifier struct {
	key    any
	alg    string
	parser *jwt.Parser
}

func newVerifier(k *AuthKey, leeway time.Duration, audience, issuer string) *verifier {
	opts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{k.method.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(leeway),
		jwt.WithStrictDecoding(), // one encoding per token: no padding, no stray bits
	}
	if audience != "" {
		opts = append(opts, jwt.WithAudience(audience))
	}
	if issuer != "" {
		opts = append(opts, jwt.WithIssuer(issuer))
	}
	return &verifier{key: k.key, alg: k.method.Alg(), parser: jwt.NewParser(opts...)}
}

// verify returns nil if token is valid, unexpired and issued for name, or
// why not.
func (v *verifier) verify(token, name string) *authError {
	switch {
	case token == "":
		return &authError{authMissing, errors.New("login has no token")}
	case len(token) > MaxTokenLen:
		return &authError{authTooLong, fmt.Errorf("token is %d bytes, the limit is %d", len(token), MaxTokenLen)}
	}
	var c jwt.RegisteredClaims
	tok, err := v.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return v.key, nil })
	if err != nil {
		reason := authReason(err, &c)
		if reason == authSignature && tok != nil && tok.Method != nil && tok.Method.Alg() != v.alg {
			reason = authAlgorithm // refused by WithValidMethods, before any signature check
		}
		return &authError{reason, err}
	}
	// Compared here, not with jwt.WithSubject: the parser is shared by
	// every login, and the name is each login's own.
	if c.Subject != name {
		return &authError{authWrongSubject, fmt.Errorf("token is for %q", truncate(c.Subject, 80))}
	}
	return nil
}

// authReason sorts a jwt error into one label; c holds the claims as far
// as they were decoded. Several claims can fail at once: the first label
// that applies is taken.
func authReason(err error, c *jwt.RegisteredClaims) string {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return authMalformed
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return authAlgorithm // alg missing or unknown
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return authSignature
	case c.ExpiresAt == nil:
		return authNoExpiry
	case errors.Is(err, jwt.ErrTokenExpired):
		return authExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return authNotYetValid
	case errors.Is(err, jwt.ErrTokenInvalidAudience) || len(c.Audience) == 0 && errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return authWrongAud
	case errors.Is(err, jwt.ErrTokenInvalidIssuer) || c.Issuer == "" && errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return authWrongIssuer
	}
	return authBadClaims
}
