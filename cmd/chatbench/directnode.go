package main

// direct-node is one half of the direct-link baseline (chatbench direct
// starts two of them as processes). It speaks the message server's client
// protocol subset a benchmark needs (login, chat, ping; the same JSON reply
// and event shapes) and passes chats for users it does not hold to its one
// peer over a single TCP link in the relay's frame format (wire). The peer
// acks what it delivered and only then does the sender get its "relayed"
// reply, as through the relay. No relay, no Redis, no authentication, no
// resend: the floor the relay tier is measured against, made as strong as
// the same work allows. It does the tier's JSON work the tier's way
// (fastjson to decode, hand-written encoders), and writes the way the tier
// does at its best (internal/sendq): inline from the producer, a writer
// goroutine only for what the socket does not take at once, and one write
// per connection for everything one read produced (a client's read buffer
// of chats goes to the link in one write; a link read's events go to each
// client in one write).

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/valyala/fastjson"

	"github.com/chatrelay/chatrelay/internal/cli"
	"github.com/chatrelay/chatrelay/internal/netx"
	"github.com/chatrelay/chatrelay/internal/sendq"
	"github.com/chatrelay/chatrelay/wire"
)

// The client protocol's JSON shapes, as msgserver writes them.
type dRequest struct {
	Cmd     string `json:"cmd"`
	Name    string `json:"name"`
	Send    string `json:"send"`
	Recv    string `json:"recv"`
	Content string `json:"content"`
	Ref     string `json:"ref"`
}

type dReply struct {
	Reply   string `json:"reply"`
	OK      bool   `json:"ok"`
	Code    string `json:"code,omitempty"`
	Error   string `json:"error,omitempty"`
	Name    string `json:"name,omitempty"`
	Session string `json:"session,omitempty"`
	Server  string `json:"server,omitempty"`
	ID      string `json:"id,omitempty"`
	Status  string `json:"status,omitempty"`
	Ref     string `json:"ref,omitempty"`
}

type dEvent struct {
	Event   string `json:"event"`
	ID      string `json:"id"`
	From    string `json:"from"`
	To      string `json:"to"`
	Content string `json:"content"`
	TS      int64  `json:"ts"`
}

const (
	dQueueBytes   = 1 << 20  // per client, as msgserver's default
	dLinkQueue    = 64 << 20 // the link, as the relay's default
	dMaxLine      = 8 << 10
	dMaxName      = 64 // bytes, as msgserver's default; names travel as str8
	dWriteTimeout = 10 * time.Second
)

type directNode struct {
	id, peer string
	link     *sendq.Queue
	idBase   [8]byte
	seq      atomic.Uint64
	sessSeq  atomic.Uint64

	mu    sync.Mutex
	users map[string]*dSession

	pmu     sync.Mutex
	pending map[wire.ID]dPending // forwarded, waiting for the peer's ack
}

type dPending struct {
	sender *dSession
	ref    string
}

type dSession struct {
	conn net.Conn
	q    *sendq.Queue
	name string // set by login; touched only by the session's reader
}

// send queues one line made by fn; with b, written at b.Flush.
func (s *dSession) send(b *sendq.Batch, fn func([]byte) []byte) {
	if errors.Is(s.q.AppendTo(b, fn), sendq.ErrFull) {
		s.conn.Close() // slow consumer: cut, as msgserver does
	}
}

func (s *dSession) reply(b *sendq.Batch, r dReply) { s.send(b, r.appendLine) }

func (s *dSession) event(b *sendq.Batch, e *dEvent) { s.send(b, e.appendLine) }

func runDirectNodeCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("chatbench direct-node", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cli.Usage(fs, "chatbench direct-node: one node of the direct-link baseline (started by chatbench direct).\n"+
		"Prints \"link ADDR\" (with --link-listen) and \"ready ADDR\" on stdout; exits when stdin closes.")
	id := fs.String("id", "a", "this node's id")
	peerID := fs.String("peer-id", "b", "the peer node's id")
	listen := fs.String("listen", "127.0.0.1:0", "client address")
	linkListen := fs.String("link-listen", "", "accept the peer's link here (one of --link-listen, --peer)")
	peer := fs.String("peer", "", "dial the peer's link here (one of --link-listen, --peer)")
	lifetime := fs.Duration("lifetime", 10*time.Minute, "exit after this long whatever happens")
	if code, done := parseFlags(fs, args, stderr); done {
		return code
	}
	if (*linkListen == "") == (*peer == "") || *lifetime <= 0 {
		fmt.Fprintln(stderr, "chatbench direct-node: give exactly one of --link-listen and --peer, and a positive --lifetime")
		return 2
	}
	deadline := time.Now().Add(*lifetime)
	fail := func(err error) int {
		fmt.Fprintf(stderr, "chatbench direct-node %s: %v\n", *id, err)
		return 1
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fail(err)
	}
	defer ln.Close()
	var link net.Conn
	if *linkListen != "" {
		lln, err := net.Listen("tcp", *linkListen)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "link %s\n", lln.Addr())
		_ = lln.(*net.TCPListener).SetDeadline(deadline)
		link, err = lln.Accept()
		lln.Close()
		if err != nil {
			return fail(fmt.Errorf("accept the peer's link: %w", err))
		}
	} else {
		link, err = dialRetry(*peer, 10*time.Second)
		if err != nil {
			return fail(err)
		}
	}
	defer link.Close()

	n := &directNode{
		id:      *id,
		peer:    *peerID,
		link:    sendq.New(dLinkQueue, nil),
		users:   make(map[string]*dSession),
		pending: make(map[wire.ID]dPending),
	}
	_, _ = rand.Read(n.idBase[:])
	n.link.Start(link, dWriteTimeout)
	linkErr := make(chan error, 1)
	go func() { linkErr <- n.readLink(link) }()
	go n.accept(ln)
	fmt.Fprintf(stdout, "ready %s\n", ln.Addr())

	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	life := time.NewTimer(time.Until(deadline))
	defer life.Stop()
	select {
	case <-stdinClosed:
		return 0
	case <-life.C:
		return fail(fmt.Errorf("lifetime %s over", *lifetime))
	case err := <-linkErr:
		if errors.Is(err, io.EOF) {
			return 0 // the peer exited first: the run is over
		}
		return fail(fmt.Errorf("link to %s ended: %v", *peerID, err))
	}
}

func dialRetry(addr string, within time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil || time.Now().After(deadline) {
			return c, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// accept serves clients until the listener closes (the process exits).
func (n *directNode) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			return
		}
		go n.serveClient(c)
	}
}

func (n *directNode) serveClient(c net.Conn) {
	s := &dSession{conn: c, q: sendq.NewWriter(dQueueBytes, c, dWriteTimeout)}
	br := bufio.NewReaderSize(netx.NewReader(c), dMaxLine) // reads as msgserver does (netx.NewReader)
	p := new(fastjson.Parser)
	var b sendq.Batch
	for {
		if br.Buffered() == 0 {
			b.Flush() // everything this read produced, one write per connection
		}
		line, err := br.ReadSlice('\n')
		if err != nil {
			break // EOF, a closed connection, or a line over the limit
		}
		if line = bytes.TrimSpace(line); len(line) > 0 {
			n.handle(s, p, &b, line)
		}
	}
	b.Flush()
	n.mu.Lock()
	if s.name != "" && n.users[s.name] == s {
		delete(n.users, s.name)
	}
	n.mu.Unlock()
	s.q.Close()
	<-s.q.Done()
	c.Close()
}

func (n *directNode) handle(s *dSession, p *fastjson.Parser, b *sendq.Batch, line []byte) {
	r, ok := decodeDRequest(p, line)
	if !ok {
		s.reply(b, dReply{Reply: "error", Code: "bad_json", Error: "line is not a JSON object with string fields"})
		return
	}
	switch r.Cmd {
	case "ping":
		s.reply(b, dReply{Reply: "ping", OK: true})
	case "login":
		if s.name != "" || r.Name == "" || len(r.Name) > dMaxName {
			s.reply(b, dReply{Reply: "login", Code: "bad_name", Error: "empty or long name, or already logged in"})
			return
		}
		s.name = r.Name
		n.mu.Lock()
		n.users[r.Name] = s
		n.mu.Unlock()
		s.reply(b, dReply{Reply: "login", OK: true, Name: r.Name, Session: n.id + "-" + strconv.FormatUint(n.sessSeq.Add(1), 10), Server: n.id})
	case "chat":
		switch {
		case s.name == "":
			s.reply(b, dReply{Reply: "chat", Code: "not_logged_in", Error: "log in first", Ref: r.Ref})
		case r.Recv == "" || len(r.Recv) > dMaxName:
			s.reply(b, dReply{Reply: "chat", Code: "bad_recipient", Error: "recv is empty or too long", Ref: r.Ref})
		case r.Send != "" && r.Send != s.name:
			s.reply(b, dReply{Reply: "chat", Code: "sender_mismatch", Error: "send is not the logged-in user", Ref: r.Ref})
		default:
			n.chat(s, b, r)
		}
	default:
		s.reply(b, dReply{Reply: "error", Code: "unknown_cmd", Error: "expected login, chat or ping"})
	}
}

// decodeDRequest parses a request line as msgserver does: valid UTF-8, a
// JSON object, string fields.
func decodeDRequest(p *fastjson.Parser, line []byte) (r dRequest, ok bool) {
	if !utf8.Valid(line) {
		return r, false
	}
	v, err := p.ParseBytes(line)
	if err != nil {
		return r, false
	}
	o, err := v.Object()
	if err != nil {
		return r, false
	}
	ok = true
	o.Visit(func(k []byte, v *fastjson.Value) {
		var dst *string
		switch string(k) {
		case "cmd":
			dst = &r.Cmd
		case "name":
			dst = &r.Name
		case "send":
			dst = &r.Send
		case "recv":
			dst = &r.Recv
		case "content":
			dst = &r.Content
		case "ref":
			dst = &r.Ref
		default:
			return
		}
		sb, err := v.StringBytes()
		if err != nil {
			ok = false
			return
		}
		*dst = string(sb)
	})
	return r, ok
}

func (n *directNode) local(user string) *dSession {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.users[user]
}

func (n *directNode) newID() wire.ID {
	var id wire.ID
	copy(id[:8], n.idBase[:])
	binary.BigEndian.PutUint64(id[8:], n.seq.Add(1))
	return id
}

// chat delivers to a local recipient, or forwards to the peer and replies
// when the peer's ack comes back.
func (n *directNode) chat(s *dSession, b *sendq.Batch, r dRequest) {
	id := n.newID()
	ts := time.Now().UnixMilli()
	if dst := n.local(r.Recv); dst != nil {
		dst.event(b, &dEvent{Event: "chat", ID: id.String(), From: s.name, To: r.Recv, Content: r.Content, TS: ts})
		s.reply(b, dReply{Reply: "chat", OK: true, ID: id.String(), Status: "delivered", Ref: r.Ref})
		return
	}
	n.pmu.Lock()
	n.pending[id] = dPending{sender: s, ref: r.Ref}
	n.pmu.Unlock()
	f := &wire.Forward{ID: id, Origin: n.id, Dest: n.peer, Payload: appendDirectPayload(nil, s.name, r.Recv, ts, r.Content)}
	if err := n.link.AppendTo(b, func(buf []byte) []byte { return wire.AppendForward(buf, f) }); err != nil {
		n.pmu.Lock()
		delete(n.pending, id)
		n.pmu.Unlock()
		s.reply(b, dReply{Reply: "chat", Code: "backlog_full", Error: err.Error(), Ref: r.Ref})
	}
}

// readLink handles the peer's frames: Forward (deliver, then ack) and Ack
// (reply to the sender).
func (n *directNode) readLink(c net.Conn) error {
	fr := wire.NewReader(netx.NewReader(c), wire.DefaultMaxFrame)
	var b sendq.Batch
	defer b.Flush()
	for {
		if !fr.Ready() {
			b.Flush() // one write per connection for what this read produced
		}
		typ, body, _, err := fr.Next()
		if err != nil {
			return err
		}
		switch typ {
		case wire.TypeForward:
			f, err := wire.ParseForward(body)
			if err != nil {
				return err
			}
			from, to, ts, content, err := parseDirectPayload(f.Payload)
			if err != nil {
				return err
			}
			code := wire.AckNotHere
			if dst := n.local(to); dst != nil {
				dst.event(&b, &dEvent{Event: "chat", ID: f.ID.String(), From: from, To: to, Content: content, TS: ts})
				code = wire.AckDelivered
			}
			a := wire.Ack{ID: f.ID, Origin: n.id, Dest: f.Origin, Code: code}
			if err := n.link.AppendTo(&b, func(buf []byte) []byte { return wire.AppendAck(buf, wire.TypeAck, a) }); err != nil {
				return err
			}
		case wire.TypeAck:
			a, err := wire.ParseAck(body)
			if err != nil {
				return err
			}
			n.pmu.Lock()
			p, ok := n.pending[a.ID]
			delete(n.pending, a.ID)
			n.pmu.Unlock()
			if !ok {
				continue
			}
			if a.Code == wire.AckDelivered {
				p.sender.reply(&b, dReply{Reply: "chat", OK: true, ID: a.ID.String(), Status: "relayed", Ref: p.ref})
			} else {
				p.sender.reply(&b, dReply{Reply: "chat", Code: "offline", Error: "recipient is on neither node", ID: a.ID.String(), Ref: p.ref})
			}
		default:
			return fmt.Errorf("unexpected frame type %d on the direct link", typ)
		}
	}
}

// The Forward payload: from str8, to str8, ts int64 big-endian, content:
// the message server's layout.
func appendDirectPayload(b []byte, from, to string, ts int64, content string) []byte {
	b = wire.AppendStr8(b, from)
	b = wire.AppendStr8(b, to)
	b = binary.BigEndian.AppendUint64(b, uint64(ts))
	return append(b, content...)
}

var errDirectPayload = errors.New("malformed direct payload")

func parseDirectPayload(b []byte) (from, to string, ts int64, content string, err error) {
	f, b, ok1 := wire.CutStr8(b)
	t, b, ok2 := wire.CutStr8(b)
	if !ok1 || !ok2 || len(b) < 8 {
		return "", "", 0, "", errDirectPayload
	}
	from, to = string(f), string(t)
	return from, to, int64(binary.BigEndian.Uint64(b)), string(b[8:]), nil
}

// The two lines sent per message are encoded by hand, as msgserver does
// (byte for byte what encoding/json writes for these shapes).

func (r *dReply) appendLine(b []byte) []byte {
	b = append(b, `{"reply":`...)
	b = appendDJSONString(b, r.Reply)
	if r.OK {
		b = append(b, `,"ok":true`...)
	} else {
		b = append(b, `,"ok":false`...)
	}
	b = appendDField(b, `,"code":`, r.Code)
	b = appendDField(b, `,"error":`, r.Error)
	b = appendDField(b, `,"name":`, r.Name)
	b = appendDField(b, `,"session":`, r.Session)
	b = appendDField(b, `,"server":`, r.Server)
	b = appendDField(b, `,"id":`, r.ID)
	b = appendDField(b, `,"status":`, r.Status)
	b = appendDField(b, `,"ref":`, r.Ref)
	return append(b, "}\n"...)
}

func (e *dEvent) appendLine(b []byte) []byte {
	b = append(b, `{"event":`...)
	b = appendDJSONString(b, e.Event)
	b = append(b, `,"id":`...)
	b = appendDJSONString(b, e.ID)
	b = append(b, `,"from":`...)
	b = appendDJSONString(b, e.From)
	b = append(b, `,"to":`...)
	b = appendDJSONString(b, e.To)
	b = append(b, `,"content":`...)
	b = appendDJSONString(b, e.Content)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, e.TS, 10)
	return append(b, "}\n"...)
}

func appendDField(b []byte, key, value string) []byte {
	if value == "" {
		return b
	}
	return appendDJSONString(append(b, key...), value)
}

// appendDJSONString copies a string with nothing to escape and leaves the
// rest to encoding/json, as msgserver's appendJSONString does.
func appendDJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
				out, _ := json.Marshal(s)
				return append(b, out...)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || r == '\u2028' || r == '\u2029' {
			out, _ := json.Marshal(s)
			return append(b, out...)
		}
		i += size
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
