package store_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/testenv"
)

// A Redis that requires a password: the password file logs the client in,
// a rotated file is read for new connections, and a file that vanishes
// leaves the last password in use.
func TestPasswordFile(t *testing.T) {
	r := testenv.StartRedis(t)
	if out, err := r.Command("CONFIG", "SET", "requirepass", "first-password-123"); err != nil || !strings.Contains(out, "OK") {
		t.Fatalf("CONFIG SET requirepass: %q %v", out, err)
	}
	ctx := testenv.WithTimeout(t, 20*time.Second)
	file := filepath.Join(t.TempDir(), "redis.password")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	client := func(withFile bool) error {
		o, err := store.ParseURL(r.URL())
		if err != nil {
			t.Fatal(err)
		}
		if withFile {
			if err := o.UsePasswordFile(file); err != nil {
				t.Fatal(err)
			}
		}
		c := o.NewClient()
		defer c.Close()
		return c.Ping(ctx).Err()
	}

	if err := client(false); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("without a password: %v; want NOAUTH (the test's Redis must require one)", err)
	}
	write("first-password-123\n")
	if err := client(true); err != nil {
		t.Fatalf("with the password file: %v", err)
	}

	// Rotation: Redis takes a new password, the file follows; a client made
	// before the change opens its next connection with the new one.
	o, _ := store.ParseURL(r.URL())
	if err := o.UsePasswordFile(file); err != nil {
		t.Fatal(err)
	}
	early := o.NewClient()
	defer early.Close()
	if err := early.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := early.ConfigSet(ctx, "requirepass", "second-password-456").Err(); err != nil {
		t.Fatal(err)
	}
	write("second-password-456")
	if err := early.Do(ctx, "CLIENT", "KILL", "TYPE", "normal").Err(); err != nil {
		t.Fatal(err) // every connection of early's pool is gone: the next is new
	}
	testenv.Eventually(t, 5*time.Second, "a new connection logged in with the rotated password", func() bool {
		return early.Ping(ctx).Err() == nil
	})

	// The file vanishes: new connections keep the last password read.
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	_ = early.Do(ctx, "CLIENT", "KILL", "TYPE", "normal").Err()
	testenv.Eventually(t, 5*time.Second, "a new connection with the last password", func() bool {
		return early.Ping(ctx).Err() == nil
	})
}

func TestPasswordFileRefused(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(good, []byte("pw-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ url, file, want string }{
		{"redis://127.0.0.1:6379/0", filepath.Join(dir, "missing"), "no such file"},
		{"redis://127.0.0.1:6379/0", empty, "is empty"},
		{"redis://:inurl@127.0.0.1:6379/0", good, "password too"},
		{"redis-cluster://:inurl@h1:7000,h2:7000", good, "password too"},
		{"redis-sentinel://:inurl@h1:26379/m", good, "password too"},
	} {
		o, err := store.ParseURL(c.url)
		if err != nil {
			t.Fatal(err)
		}
		if err := o.UsePasswordFile(c.file); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s with %s: %v; want an error saying %q", c.url, filepath.Base(c.file), err, c.want)
		}
	}
}
