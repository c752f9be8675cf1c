package testenv

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// Client is a chat client speaking the line protocol, as telnet would.
type Client struct {
	t    testing.TB
	Name string
	conn net.Conn
	br   *bufio.Reader
}

// Msg is one line received from the server, decoded.
type Msg map[string]any

// S returns field k as a string ("" if absent).
func (m Msg) S(k string) string { s, _ := m[k].(string); return s }

// Dial connects to a message server's client port.
func Dial(t testing.TB, addr string) *Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	return newClient(t, conn)
}

func newClient(t testing.TB, conn net.Conn) *Client {
	t.Cleanup(func() { conn.Close() })
	return &Client{t: t, conn: conn, br: bufio.NewReaderSize(conn, 1<<16)}
}

// Conn is the underlying connection.
func (c *Client) Conn() net.Conn { return c.conn }

// SendLine writes one raw line (a newline is added).
func (c *Client) SendLine(line string) {
	c.t.Helper()
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.conn.Write([]byte(line + "\n")); err != nil {
		c.t.Fatalf("%s: write: %v", c.Name, err)
	}
}

// Send writes v as one JSON line.
func (c *Client) Send(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.SendLine(string(b))
}

// Read returns the next line, or an error (io.EOF when the server closed).
func (c *Client) Read(timeout time.Duration) (Msg, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	line, err := c.br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	var m Msg
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		return nil, fmt.Errorf("server sent a line that is not JSON: %q: %w", line, err)
	}
	return m, nil
}

// Next returns the next line, failing the test if none comes in 5s.
func (c *Client) Next() Msg {
	c.t.Helper()
	m, err := c.Read(5 * time.Second)
	if err != nil {
		c.t.Fatalf("%s: waiting for a line: %v", c.Name, err)
	}
	return m
}

// Expect reads lines until one has every key/value in want, failing after
// 5s. Lines skipped on the way are returned too, for tests that care.
func (c *Client) Expect(want map[string]any) (Msg, []Msg) {
	c.t.Helper()
	var skipped []Msg
	deadline := time.Now().Add(5 * time.Second)
	for {
		m, err := c.Read(time.Until(deadline))
		if err != nil {
			c.t.Fatalf("%s: waiting for %v: %v (skipped %v)", c.Name, want, err, skipped)
		}
		if matches(m, want) {
			return m, skipped
		}
		skipped = append(skipped, m)
	}
}

func matches(m Msg, want map[string]any) bool {
	for k, v := range want {
		if fmt.Sprint(m[k]) != fmt.Sprint(v) {
			return false
		}
	}
	return true
}

// Login logs in as name and waits for the ok reply.
func (c *Client) Login(name string) Msg {
	c.t.Helper()
	return c.LoginWithToken(name, "")
}

// LoginWithToken logs in as name with a signed token (none if token is
// empty) and waits for the ok reply.
func (c *Client) LoginWithToken(name, token string) Msg {
	c.t.Helper()
	c.Name = name
	req := map[string]string{"cmd": "login", "name": name}
	if token != "" {
		req["token"] = token
	}
	c.Send(req)
	m := c.Next()
	if m["ok"] != true || m.S("reply") != "login" {
		c.t.Fatalf("login %s: %v", name, m)
	}
	return m
}

// Chat sends a message in the article's format.
func (c *Client) Chat(to, content string) {
	c.t.Helper()
	c.Send(map[string]string{"cmd": "chat", "send": c.Name, "recv": to, "content": content})
}

// ExpectClosed reads until the server closes the connection, failing if
// it stays open for 5s; it returns the lines read before the close.
func (c *Client) ExpectClosed() []Msg {
	c.t.Helper()
	var got []Msg
	deadline := time.Now().Add(5 * time.Second)
	for {
		m, err := c.Read(time.Until(deadline))
		if err == nil {
			got = append(got, m)
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) {
			c.t.Fatalf("%s: connection still open after 5s; got %v", c.Name, got)
		}
		if strings.Contains(err.Error(), "not JSON") {
			c.t.Fatalf("%s: %v", c.Name, err)
		}
		return got
	}
}
