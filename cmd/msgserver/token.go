package main

import (
	"errors"
	"flag"
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
	fs := flag.NewFlagSet("msgserver token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cli.Usage(fs, "msgserver token: print a login token for --name, for labs and tests.\n\n"+
		"Usage: msgserver token --key-file FILE --name NAME [--ttl 1h]\n\n"+
		"The key file is the HS256 key the servers hold, or the PEM private key whose public key they hold.")
	var (
		keyFile  = fs.String("key-file", "", "signing key: the HS256 shared key file, or a PEM private key (Ed25519, RSA, ECDSA)")
		name     = fs.String("name", "", "the user the token is for (its sub)")
		ttl      = fs.Duration("ttl", time.Hour, "how long the token is valid")
		audience = fs.String("audience", "", "aud claim, for servers run with --auth-audience")
		issuer   = fs.String("issuer", "", "iss claim, for servers run with --auth-issuer")
	)
	if err := cli.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "msgserver token:", err)
		return 2
	}
	if *keyFile == "" || *name == "" {
		fmt.Fprintln(stderr, "msgserver token: --key-file and --name are required")
		return 2
	}
	data, err := os.ReadFile(*keyFile)
	if err != nil {
		fmt.Fprintln(stderr, "msgserver token:", err)
		return 2
	}
	key, err := msgserver.ParseSigningKey(data)
	if err != nil {
		fmt.Fprintf(stderr, "msgserver token: --key-file %s: %v\n", *keyFile, err)
		return 2
	}
	tok, err := key.Token(*name, *ttl, *issuer, *audience)
	if err != nil {
		fmt.Fprintln(stderr, "msgserver token:", err)
		return 2
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
