package main

// login-floor is the baseline a login is measured against (chatbench idle
// --floor): the least a server that takes one TCP connection per login can
// do. It accepts on a client listener like the message server's
// (netx.Listen), reads the login line, parses it as JSON, answers
// {"event":"login","ok":true,...} and then holds the connection until the
// peer closes it. No token, no Redis, no limits: what a login costs the
// message server above this is what the tier adds.

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/valyala/fastjson"

	"github.com/chatrelay/chatrelay/internal/cli"
	"github.com/chatrelay/chatrelay/internal/netx"
)

func runLoginFloorCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("chatbench login-floor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cli.Usage(fs, "chatbench login-floor: the login baseline (started by chatbench idle --floor).\n"+
		"Prints \"ready ADDR\" on stdout; exits when stdin closes.")
	listen := fs.String("listen", "127.0.0.1:0", "client address")
	lifetime := fs.Duration("lifetime", 10*time.Minute, "exit after this long whatever happens")
	if code, done := parseFlags(fs, args, stderr); done {
		return code
	}
	ln, err := netx.Listen(*listen)
	if err != nil {
		fmt.Fprintln(stderr, "chatbench login-floor:", err)
		return 1
	}
	defer ln.Close()
	fmt.Fprintf(stdout, "ready %s\n", ln.Addr())
	var stopping atomic.Bool
	stop := func() { stopping.Store(true); ln.Close() }
	go func() { // stdin closed (or the lifetime over): stop
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	time.AfterFunc(*lifetime, stop)
	log := slog.New(slog.NewTextHandler(stderr, nil))
	var pp fastjson.ParserPool
	for {
		c, err := netx.Accept(ln, log, stopping.Load) // as the message server: a burst past the descriptor limit is retried
		if err != nil {
			fmt.Fprintln(stderr, "chatbench login-floor:", err)
			return 1
		}
		if c == nil {
			return 0
		}
		go floorSession(c, &pp)
	}
}

// floorSession logs one connection in, then reads until it closes.
func floorSession(c net.Conn, pp *fastjson.ParserPool) {
	defer c.Close()
	var buf [512]byte
	n := 0
	for {
		m, err := c.Read(buf[n:])
		n += m
		if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
			n = i
			break
		}
		if err != nil || n == len(buf) {
			return
		}
	}
	p := pp.Get()
	v, err := p.ParseBytes(buf[:n])
	var name []byte
	if err == nil {
		name = v.GetStringBytes("name")
	}
	reply := append([]byte(`{"event":"login","ok":true,"name":`), strconv.Quote(string(name))...)
	reply = append(reply, "}\n"...)
	pp.Put(p)
	if err != nil || len(name) == 0 {
		return
	}
	if _, err := c.Write(reply); err != nil {
		return
	}
	for {
		if _, err := c.Read(buf[:]); err != nil {
			return
		}
	}
}
