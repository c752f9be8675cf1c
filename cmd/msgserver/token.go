package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/chatrelay/chatrelay/internal/cli"
	"github.com/chatrelay/chatrelay/msgserver"
)

// tokenMain is `msgserver token`: it prints a login token, for labs and
// tests. In production the application that lets users in issues them.
func tokenMain(args []string, stdout, stderr io.Writer) int {
	fs := cli.NewCommand("msgserver token", "msgserver token: print a login token for --name, for labs and tests.\n\n"+
		"Usage: msgserver token --key-file FILE --name NAME [--ttl 1h]\n\n"+
		"The key file is the HS256 key the servers hold, or the PEM private key whose public key they hold.",
		stdout, stderr, cli.FromEnv())
	var (
		keyFile  = fs.String("key-file", "", "signing key: the HS256 shared key file, or a PEM private key (Ed25519, RSA, ECDSA)")
		name     = fs.String("name", "", "the user the token is for (its sub)")
		ttl      = fs.Duration("ttl", time.Hour, "how long the token is valid")
		audience = fs.String("audience", "", "aud claim, for servers run with --auth-audience")
		issuer   = fs.String("issuer", "", "iss claim, for servers run with --auth-issuer")
	)
	if code, done := fs.Parse(args); done {
		return code
	}
	if *keyFile == "" || *name == "" {
		return fs.Fail("--key-file and --name are required")
	}
	data, err := os.ReadFile(*keyFile)
	if err != nil {
		return fs.Fail("%v", err)
	}
	key, err := msgserver.ParseSigningKey(data)
	if err != nil {
		return fs.Fail("--key-file %s: %v", *keyFile, err)
	}
	tok, err := key.Token(*name, *ttl, *issuer, *audience)
	if err != nil {
		return fs.Fail("%v", err)
	}
	fmt.Fprintln(stdout, tok)
	return 0
}

// readAuthKey reads the key that checks login tokens (--auth-key-file).
func readAuthKey(path string) (*msgserver.AuthKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, err := msgserver.ParseAuthKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return key, nil
}
