package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/chatrelay/chatrelay/internal/version"
)

// Command is the flag set of a command or subcommand ("relay",
// "relay check", "msgserver token") with the one help and error format
// every binary uses:
//
//   - --help (or -h) prints the synopsis and every flag to stdout; exit 0.
//   - --version (main commands) prints one line to stdout; exit 0.
//   - a mistyped flag or a bad value prints one line to stderr saying what
//     is wrong and where the help is; exit 2.
//   - Fail prints "NAME: what is wrong" to stderr; exit 2.
type Command struct {
	*flag.FlagSet
	Name     string // "relay", "relay check": the prefix of every message
	synopsis string
	stdout   io.Writer
	stderr   io.Writer
	env      bool
	version  *bool
}

// Option changes what a Command accepts.
type Option func(*Command)

// FromEnv lets every flag not given on the command line be set by its
// environment variable (EnvName), and lists those in the help.
func FromEnv() Option { return func(c *Command) { c.env = true } }

// WithVersion adds --version.
func WithVersion() Option {
	return func(c *Command) {
		c.version = c.Bool("version", false, "print the version and exit")
	}
}

// NewCommand returns the flag set of the command name; synopsis is the
// help's text above the flags (what it does, "Usage: ..." lines).
func NewCommand(name, synopsis string, stdout, stderr io.Writer, opts ...Option) *Command {
	c := &Command{
		FlagSet:  flag.NewFlagSet(name, flag.ContinueOnError),
		Name:     name,
		synopsis: synopsis,
		stdout:   stdout,
		stderr:   stderr,
	}
	for _, o := range opts {
		o(c)
	}
	c.SetOutput(stderr)
	c.Usage = func() { c.PrintHelp(c.stdout) }
	return c
}

// Parse parses args (and, with FromEnv, the environment). done says the
// command ends here with code: 0 after --help or --version, 2 after a
// mistake, which it has reported in one line.
func (c *Command) Parse(args []string) (code int, done bool) {
	err := parse(c.FlagSet, args, c.env, func() { c.PrintHelp(c.stdout) })
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0, true
	case err != nil:
		fmt.Fprintf(c.stderr, "%s: %v\n", c.Name, err)
		return 2, true
	case c.version != nil && *c.version:
		fmt.Fprintln(c.stdout, version.String(c.Name))
		return 0, true
	}
	return 0, false
}

// Fail prints "NAME: message" to stderr and returns exit code 2.
func (c *Command) Fail(format string, a ...any) int {
	fmt.Fprintf(c.stderr, "%s: %s\n", c.Name, fmt.Sprintf(format, a...))
	return 2
}

// PrintHelp writes the synopsis and the flags to w.
func (c *Command) PrintHelp(w io.Writer) { printHelp(w, c.FlagSet, c.synopsis, c.env) }

// parse is Parse's core, shared with the package-level Parse: the flag
// package says nothing itself; help is printed by help.
func parse(fs *flag.FlagSet, args []string, env bool, help func()) error {
	out, usage := fs.Output(), fs.Usage
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	fs.SetOutput(out)
	fs.Usage = usage
	if errors.Is(err, flag.ErrHelp) {
		help()
		return err
	}
	if err != nil {
		return explain(fs, err)
	}
	var errs []error
	if env {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		fs.VisitAll(func(f *flag.Flag) {
			if set[f.Name] || f.Name == "version" {
				return
			}
			if v, ok := os.LookupEnv(EnvName(f.Name)); ok {
				if err := fs.Set(f.Name, v); err != nil {
					errs = append(errs, fmt.Errorf("%s=%q: %w", EnvName(f.Name), v, err))
				}
			}
		})
	}
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments %q (every option is a --flag); %s --help lists them", fs.Args(), fs.Name()))
	}
	return errors.Join(errs...)
}

// explain turns the flag package's error into one line that says what is
// wrong and where the help is.
func explain(fs *flag.FlagSet, err error) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: "); ok {
		name = strings.TrimLeft(name, "-")
		msg = "unknown flag --" + name
		if near := nearest(fs, name); near != "" {
			msg += " (did you mean --" + near + "?)"
		}
	} else {
		msg = strings.ReplaceAll(msg, "flag -", "flag --")
		msg = strings.ReplaceAll(msg, "argument: -", "argument: --")
		msg = strings.ReplaceAll(msg, " for -", " for --")
	}
	return fmt.Errorf("%s; %s --help lists the flags", msg, fs.Name())
}

// nearest is the defined flag closest to the mistyped name, if one is
// close enough to be a typo.
func nearest(fs *flag.FlagSet, name string) string {
	best, bestD := "", 3
	fs.VisitAll(func(f *flag.Flag) {
		d := distance(name, f.Name)
		if strings.HasPrefix(f.Name, name) && len(name) >= 3 {
			d = min(d, 1)
		}
		if d < bestD {
			best, bestD = f.Name, d
		}
	})
	return best
}

// distance is the Levenshtein distance of a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// printHelp is the one help format: the synopsis, then each flag with its
// value type, environment variable (when flags come from the environment),
// description and default.
func printHelp(w io.Writer, fs *flag.FlagSet, synopsis string, env bool) {
	fmt.Fprintln(w, strings.TrimRight(synopsis, "\n"))
	if env {
		fmt.Fprintln(w, "\nFlags (each can also be set by the environment variable shown):")
	} else {
		fmt.Fprintln(w, "\nFlags:")
	}
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if typ != "" {
			line += " " + typ
		}
		if env && f.Name != "version" {
			line += " (" + EnvName(f.Name) + ")"
		}
		fmt.Fprintln(w, line)
		fmt.Fprintf(w, "    \t%s", strings.ReplaceAll(usage, "\n", "\n    \t"))
		switch {
		case f.DefValue == "" || f.DefValue == "false" || f.DefValue == "0" || f.DefValue == "0s": // zero values, as the flag package leaves them out
		case typ == "string":
			fmt.Fprintf(w, " (default %q)", f.DefValue)
		default:
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}

// VersionArg prints prog's version to stdout and reports true when args
// are just --version (or -version): for the binaries whose first argument
// is a mode (chatbench, drill) or that parse with Parse.
func VersionArg(prog string, args []string, stdout io.Writer) bool {
	if len(args) != 1 || (args[0] != "--version" && args[0] != "-version") {
		return false
	}
	fmt.Fprintln(stdout, version.String(prog))
	return true
}
