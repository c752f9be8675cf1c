package store

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
)

// UsePasswordFile makes the client log in to Redis (its data nodes: a
// Sentinel's own password stays the URL's sentinel_password) with the
// password in path, read now and again for every new connection, so a
// rotated password is picked up without a restart; if the file cannot be
// read later, the last password read is used and the next connection
// tries again. Surrounding space (a trailing newline) is trimmed. The
// URL's user name, if any, is kept; a password in the URL too is refused,
// since one of them would be silently ignored.
func (o *Options) UsePasswordFile(path string) error {
	first, err := readPassword(path)
	if err != nil {
		return err
	}
	var user string
	var provider *func() (string, string)
	switch {
	case o.Single != nil:
		if o.Single.Password != "" {
			return errors.New("the Redis URL has a password too: give it in one place")
		}
		user, provider = o.Single.Username, &o.Single.CredentialsProvider
	case o.Sentinel != nil:
		if o.Sentinel.Password != "" {
			return errors.New("the Redis URL has a password too: give it in one place")
		}
		user, provider = o.Sentinel.Username, &o.Sentinel.CredentialsProvider
	case o.Cluster != nil:
		if o.Cluster.Password != "" {
			return errors.New("the Redis URL has a password too: give it in one place")
		}
		user, provider = o.Cluster.Username, &o.Cluster.CredentialsProvider
	default:
		return errors.New("no Redis options")
	}
	var mu sync.Mutex
	last := first
	*provider = func() (string, string) {
		p, err := readPassword(path)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			logger().Warn("Redis password file not read; using the last password read", "err", err)
			return user, last
		}
		last = p
		return user, p
	}
	return nil
}

func readPassword(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read Redis password: %w", err)
	}
	p := strings.TrimSpace(string(b))
	if p == "" {
		return "", fmt.Errorf("the Redis password file %s is empty", path)
	}
	return p, nil
}
