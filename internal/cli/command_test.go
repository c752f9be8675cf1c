package cli

import (
	"bytes"
	"strings"
	"testing"
)

func TestCommand(t *testing.T) {
	newCmd := func() (*Command, *bytes.Buffer, *bytes.Buffer, *string) {
		var stdout, stderr bytes.Buffer
		c := NewCommand("prog sub", "prog sub: does things.", &stdout, &stderr, FromEnv(), WithVersion())
		listen := c.String("listen", ":7000", "where to listen")
		c.Duration("ping", 0, "heartbeat")
		return c, &stdout, &stderr, listen
	}

	c, _, _, listen := newCmd()
	t.Setenv("CHATRELAY_LISTEN", ":9000")
	t.Setenv("CHATRELAY_VERSION", "true") // must not turn --version on
	if code, done := c.Parse(nil); done || code != 0 || *listen != ":9000" {
		t.Errorf("from the environment: done %v code %d listen %q", done, code, *listen)
	}
	c, _, _, listen = newCmd()
	if _, done := c.Parse([]string{"--listen", ":1"}); done || *listen != ":1" {
		t.Errorf("the command line wins over the environment: %q", *listen)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--lisen", "x"}, "prog sub: unknown flag --lisen (did you mean --listen?); prog sub --help lists the flags\n"},
		{[]string{"-zzz"}, "prog sub: unknown flag --zzz; prog sub --help lists the flags\n"},
		{[]string{"--ping", "x"}, "prog sub: invalid value \"x\" for flag --ping: parse error; prog sub --help lists the flags\n"},
		{[]string{"extra"}, "prog sub: unexpected arguments [\"extra\"] (every option is a --flag); prog sub --help lists them\n"},
	} {
		c, stdout, stderr, _ := newCmd()
		if code, done := c.Parse(tc.args); !done || code != 2 || stdout.Len() != 0 || stderr.String() != tc.want {
			t.Errorf("%q: done %v code %d stdout %q stderr %q; want %q", tc.args, done, code, stdout, stderr, tc.want)
		}
	}

	c, stdout, stderr, _ := newCmd()
	if code, done := c.Parse([]string{"--help"}); !done || code != 0 || stderr.Len() != 0 {
		t.Fatalf("--help: done %v code %d stderr %q", done, code, stderr)
	}
	want := "prog sub: does things.\n\nFlags (each can also be set by the environment variable shown):\n" +
		"  --listen string (CHATRELAY_LISTEN)\n    \twhere to listen (default \":7000\")\n" +
		"  --ping duration (CHATRELAY_PING)\n    \theartbeat\n" +
		"  --version\n    \tprint the version and exit\n"
	if stdout.String() != want {
		t.Errorf("help:\n%s\nwant:\n%s", stdout, want)
	}

	c, stdout, _, _ = newCmd()
	if code, done := c.Parse([]string{"--version"}); !done || code != 0 || !strings.HasPrefix(stdout.String(), "prog sub devel (revision ") {
		t.Errorf("--version: %v %d %q", done, code, stdout)
	}
	if code := c.Fail("--x: %s", "bad"); code != 2 {
		t.Errorf("Fail: %d", code)
	}
}
