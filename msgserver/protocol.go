package msgserver

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

// The client protocol: one JSON object per line in each direction.
//
// Requests (from the article, plus ping and logout):
//
//	{"cmd":"login","name":"zhima201"}
//	{"cmd":"login","name":"zhima201","token":"<JWT>"}   when the server checks tokens (auth.go)
//	{"cmd":"chat","send":"zhima201","recv":"zhima202","content":"how are you","ref":"optional"}
//	{"cmd":"ping"}
//	{"cmd":"logout"}
//
// Every request gets exactly one reply, with "reply" naming the request:
//
//	{"reply":"login","ok":true,"name":"zhima201","session":"...","server":"msg-1"}
//	{"reply":"chat","ok":true,"id":"...","status":"delivered|relayed|offline","ref":"optional"}
//	{"reply":"chat","ok":false,"code":"not_logged_in","error":"log in first ..."}
//
// Chat replies can come out of order (a relayed message waits for its
// end-to-end ack); "ref" from the request is echoed to match them.
// Events arrive unasked, with "event" naming them:
//
//	{"event":"chat","id":"...","from":"zhima201","to":"zhima202","content":"how are you","ts":1732000000000}
//	{"event":"kicked","code":"...","reason":"..."}   then the server closes the connection
//	{"event":"closing","code":"...","reason":"..."}   the same, for other reasons
//
// Which close sends which line is in closeRules (session.go).

// Error codes a client can rely on.
const (
	CodeBadJSON        = "bad_json"      // the line is not a JSON object
	CodeUnknownCmd     = "unknown_cmd"   // cmd missing or not one of the above
	CodeLineTooLong    = "line_too_long" // the line exceeds the limit: sent once it does, the line is discarded up to its newline
	CodeNotLoggedIn    = "not_logged_in" // chat before login
	CodeAlreadyIn      = "already_logged_in"
	CodeBadName        = "bad_name"        // not a valid name: see normalizeName
	CodeAuthFailed     = "auth_failed"     // no valid, unexpired token for the name; which part failed is not said
	CodeSenderMismatch = "sender_mismatch" // "send" is not the logged-in name
	CodeBadRecipient   = "bad_recipient"
	CodeContentTooLong = "content_too_long"
	CodeUnavailable    = "presence_unavailable" // Redis unreachable: try again
	CodeBacklogFull    = "backlog_full"         // too many messages await their ack
	CodeInboxFull      = "inbox_full"           // the recipient's offline inbox is full: not stored
	CodeOfflineFull    = "offline_full"         // offline storage (Redis) is over its cap: not stored
	CodeServerFull     = "server_full"
	CodeShuttingDown   = "shutting_down"
	CodeTooManyErrors  = "too_many_errors"
	CodeIdleTimeout    = "idle_timeout"
	CodeRateLimited    = "rate_limited"         // over the connection's request rate, its address's login rate or its offline-message rate
	CodeTooManyConns   = "too_many_connections" // its address has the most connections allowed
	CodeLoginTimeout   = "login_timeout"        // not logged in within the login timeout of connecting
	CodeLineTimeout    = "line_timeout"         // a line not completed within the line timeout of its first byte
	CodeSlowConsumer   = "slow_consumer"
	CodeKicked         = "logged_in_elsewhere"
	CodeInternal       = "internal"
	CodeBadAck         = "bad_ack"          // an ack without acks on, or with an id that is not one
	CodeTooManyUnacked = "too_many_unacked" // close: the session holds the most unacked events it may
)

// Delivery statuses in a chat reply.
const (
	StatusDelivered = "delivered" // written to the recipient on this server
	StatusRelayed   = "relayed"   // taken by the recipient's server through the relay
	StatusOffline   = "offline"   // stored; delivered at the recipient's next login
)

type request struct {
	Cmd     string `json:"cmd"`
	Name    string `json:"name"`
	Token   string `json:"token"`
	Send    string `json:"send"`
	Recv    string `json:"recv"`
	Content string `json:"content"`
	Ref     string `json:"ref"`
	// Acks and Receipts are login options (acks.go); IDs are an ack's
	// message ids ("id" and "ids" both land here).
	Acks     bool     `json:"acks"`
	Receipts bool     `json:"receipts"`
	IDs      []string `json:"ids"`
}

// maxAckIDs is the most ids one ack carries.
const maxAckIDs = 256

// reply is every answer to a request.
type reply struct {
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

// chatEvent is a message as the recipient sees it.
type chatEvent struct {
	Event   string `json:"event"`
	ID      string `json:"id"`
	From    string `json:"from"`
	To      string `json:"to"`
	Content string `json:"content"`
	TS      int64  `json:"ts"` // server time of acceptance, unix milliseconds
	Offline bool   `json:"offline,omitempty"`
	// Redelivered marks an event sent before and not acked (acks.go).
	Redelivered bool `json:"redelivered,omitempty"`
}

type closingEvent struct {
	Event  string `json:"event"`
	Code   string `json:"code"`
	Reason string `json:"reason"`
}

// clientError is a request failure a client sees.
type clientError struct {
	code, msg string
}

func (e *clientError) Error() string { return e.code + ": " + e.msg }

// badRequest says whether the error is the request's fault, counting
// towards too_many_errors. inbox_full and offline_full are about the
// recipient and the server: they neither count nor reset the count.
func (e *clientError) badRequest() bool {
	return e.code != CodeInboxFull && e.code != CodeOfflineFull
}

func errorf(code, format string, args ...any) *clientError {
	return &clientError{code: code, msg: fmt.Sprintf(format, args...)}
}

// parsers are reused across sessions: decoding requests with reflection
// (encoding/json) was the largest single cost of a message in the profile.
var parsers fastjson.ParserPool

// decodeRequest parses one line. It returns a client error for anything
// that is not a JSON object with a known cmd and string fields.
func decodeRequest(line []byte) (request, *clientError) {
	var r request
	if !utf8.Valid(line) {
		return r, errorf(CodeBadJSON, "line is not valid UTF-8 JSON")
	}
	p := parsers.Get()
	defer parsers.Put(p)
	v, err := p.ParseBytes(line)
	if err != nil {
		return r, errorf(CodeBadJSON, "line is not a JSON object: %s", truncate(err.Error(), 120))
	}
	o, err := v.Object()
	if err != nil {
		return r, errorf(CodeBadJSON, "line is not a JSON object: it is %s", v.Type())
	}
	if loneSurrogate(line) {
		return r, errorf(CodeBadJSON, `line has a \u escape of half a UTF-16 surrogate pair (\ud800-\udfff)`)
	}
	var notString string
	o.Visit(func(k []byte, v *fastjson.Value) {
		var dst *string
		switch string(k) {
		case "acks", "receipts":
			if v.Type() == fastjson.TypeNull {
				return
			}
			b, err := v.Bool()
			if err != nil {
				notString = string(k) // reported as the wrong type
				return
			}
			if k[0] == 'a' {
				r.Acks = b
			} else {
				r.Receipts = b
			}
			return
		case "ids":
			if v.Type() == fastjson.TypeNull {
				return
			}
			a, err := v.Array()
			if err != nil || len(a)+len(r.IDs) > maxAckIDs {
				notString = string(k)
				return
			}
			for _, x := range a {
				b, err := x.StringBytes()
				if err != nil {
					notString = string(k)
					return
				}
				r.IDs = append(r.IDs, string(b))
			}
			return
		case "id":
			b, err := v.StringBytes()
			if err != nil || len(r.IDs) >= maxAckIDs {
				notString = string(k)
				return
			}
			r.IDs = append(r.IDs, string(b))
			return
		case "cmd":
			dst = &r.Cmd
		case "name":
			dst = &r.Name
		case "token":
			dst = &r.Token
		case "send":
			dst = &r.Send
		case "recv":
			dst = &r.Recv
		case "content":
			dst = &r.Content
		case "ref":
			dst = &r.Ref
		default:
			return // unknown fields are ignored, as encoding/json does
		}
		if v.Type() == fastjson.TypeNull {
			return // null is absent, as encoding/json has it
		}
		b, err := v.StringBytes()
		if err != nil {
			notString = string(k)
			return
		}
		if dst == &r.Cmd {
			*dst = internCmd(b)
			return
		}
		*dst = string(b)
	})
	if notString != "" {
		return request{}, errorf(CodeBadJSON, "field %q must be %s", truncate(notString, 32), fieldType(notString))
	}
	switch r.Cmd {
	case "login", "chat", "ping", "logout", "ack":
		return r, nil
	case "":
		return r, errorf(CodeUnknownCmd, `missing "cmd": expected login, chat, ack, ping or logout`)
	default:
		return r, errorf(CodeUnknownCmd, "unknown cmd %q: expected login, chat, ack, ping or logout", truncate(r.Cmd, 32))
	}
}

// fieldType says what a field must be, for the error of one that is not.
func fieldType(k string) string {
	switch k {
	case "acks", "receipts":
		return "true or false"
	case "ids":
		return fmt.Sprintf("an array of at most %d strings", maxAckIDs)
	case "id":
		return fmt.Sprintf("a string (at most %d ids in one ack)", maxAckIDs)
	}
	return "a string"
}

// loneSurrogate reports whether line has a \u escape of a UTF-16
// surrogate that is not the first of a high-low pair. fastjson keeps such
// an escape as its six characters, so "\ud800" would name the same user
// as "\\ud800", and it drops a character after a high surrogate without
// its pair; encoding/json would make U+FFFD of either. A backslash outside
// a string is a syntax error, which the parser has refused already, so
// the scan need not know where strings are.
func loneSurrogate(line []byte) bool {
	for i := 0; ; {
		j := bytes.IndexByte(line[i:], '\\')
		if j < 0 {
			return false
		}
		i += j
		u, ok := hexEscape(line[i:])
		switch {
		case !ok || u < 0xd800 || u > 0xdfff:
			i += 2 // any escape is at least two bytes; a \\ is skipped whole
		case u >= 0xdc00:
			return true // a low surrogate first
		default:
			lo, ok := hexEscape(line[i+6:])
			if !ok || lo < 0xdc00 || lo > 0xdfff {
				return true // a high surrogate alone
			}
			i += 12
		}
		if i >= len(line) {
			return false
		}
	}
}

// hexEscape reads the \uXXXX escape b starts with.
func hexEscape(b []byte) (rune, bool) {
	if len(b) < 6 || b[0] != '\\' || b[1] != 'u' {
		return 0, false
	}
	var r rune
	for _, c := range b[2:6] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// internCmd returns the known commands without allocating a string.
func internCmd(b []byte) string {
	switch string(b) {
	case "chat":
		return "chat"
	case "ping":
		return "ping"
	case "login":
		return "login"
	case "logout":
		return "logout"
	case "ack":
		return "ack"
	}
	return string(b)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func appendJSONLine(b []byte, v any) []byte {
	out, err := json.Marshal(v)
	if err != nil {
		// Only strings, numbers and booleans are encoded, so this is a bug;
		// the client still gets a well-formed line.
		out = []byte(`{"event":"error","code":"internal","error":"reply could not be encoded"}`)
	}
	b = append(b, out...)
	return append(b, '\n')
}

// The two lines sent per message, a reply and a chat event, are encoded by
// hand: encoding/json's reflection was a tenth of a message server's CPU.
// The output is byte for byte what encoding/json writes (a test and a fuzz
// target compare them).

// appendLine appends r as one JSON line.
func (r *reply) appendLine(b []byte) []byte {
	b = append(b, `{"reply":`...)
	b = appendJSONString(b, r.Reply)
	if r.OK {
		b = append(b, `,"ok":true`...)
	} else {
		b = append(b, `,"ok":false`...)
	}
	b = appendField(b, `,"code":`, r.Code)
	b = appendField(b, `,"error":`, r.Error)
	b = appendField(b, `,"name":`, r.Name)
	b = appendField(b, `,"session":`, r.Session)
	b = appendField(b, `,"server":`, r.Server)
	b = appendField(b, `,"id":`, r.ID)
	b = appendField(b, `,"status":`, r.Status)
	b = appendField(b, `,"ref":`, r.Ref)
	return append(b, "}\n"...)
}

// appendLine appends e as one JSON line.
func (e *chatEvent) appendLine(b []byte) []byte {
	if e.Event == eventReceipt {
		return appendReceiptLine(b, e)
	}
	b = append(b, `{"event":`...)
	b = appendJSONString(b, e.Event)
	b = append(b, `,"id":`...)
	b = appendJSONString(b, e.ID)
	b = append(b, `,"from":`...)
	b = appendJSONString(b, e.From)
	b = append(b, `,"to":`...)
	b = appendJSONString(b, e.To)
	b = append(b, `,"content":`...)
	b = appendJSONString(b, e.Content)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, e.TS, 10)
	if e.Offline {
		b = append(b, `,"offline":true`...)
	}
	if e.Redelivered {
		b = append(b, `,"redelivered":true`...)
	}
	return append(b, "}\n"...)
}

// appendField appends key and value unless value is empty (omitempty).
func appendField(b []byte, key, value string) []byte {
	if value == "" {
		return b
	}
	return appendJSONString(append(b, key...), value)
}

// appendJSONString appends s as a JSON string. Strings with nothing to
// escape (the usual case: names, ids, ordinary text in any script) are
// copied; anything else goes through encoding/json, so escaping is exactly
// its own (HTML characters, U+2028/2029, invalid UTF-8 included).
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
				return appendJSONStringSlow(b, s)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || r == '\u2028' || r == '\u2029' {
			return appendJSONStringSlow(b, s)
		}
		i += size
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func appendJSONStringSlow(b []byte, s string) []byte {
	out, err := json.Marshal(s)
	if err != nil { // cannot happen for a string
		return append(b, `""`...)
	}
	return append(b, out...)
}
