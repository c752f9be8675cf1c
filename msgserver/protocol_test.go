package msgserver

import (
	"reflect"
	"strings"
	"testing"
)

func TestDecodeRequest(t *testing.T) {
	tests := []struct {
		name     string
		line     string
		want     request // checked when code is ""
		wantCode string
	}{
		{"login", `{"cmd":"login","name":"zhima201"}`, request{Cmd: "login", Name: "zhima201"}, ""},
		{"chat", `{"cmd":"chat","send":"zhima201","recv":"zhima202","content":"how are you"}`,
			request{Cmd: "chat", Send: "zhima201", Recv: "zhima202", Content: "how are you"}, ""},
		{"chat with ref", `{"cmd":"chat","send":"a","recv":"b","content":"","ref":"r1"}`,
			request{Cmd: "chat", Send: "a", Recv: "b", Ref: "r1"}, ""},
		{"ping", `{"cmd":"ping"}`, request{Cmd: "ping"}, ""},
		{"logout", `{"cmd":"logout"}`, request{Cmd: "logout"}, ""},
		{"unknown fields ignored", `{"cmd":"ping","extra":[1,2,{"x":null}]}`, request{Cmd: "ping"}, ""},
		{"surrounding space", " \t{\"cmd\":\"ping\"} \r", request{Cmd: "ping"}, ""},
		{"chinese name", `{"cmd":"login","name":"芝麻201"}`, request{Cmd: "login", Name: "芝麻201"}, ""},
		{"escaped name", `{"cmd":"login","name":"\u829d\u9ebb201"}`, request{Cmd: "login", Name: "芝麻201"}, ""},
		{"surrogate pair", `{"cmd":"login","name":"\ud83d\ude00"}`, request{Cmd: "login", Name: "😀"}, ""},
		{"upper-case surrogate pair", `{"cmd":"login","name":"\uD83D\uDE00"}`, request{Cmd: "login", Name: "😀"}, ""},
		{"escaped backslash before u", `{"cmd":"login","name":"\\ud800"}`, request{Cmd: "login", Name: `\ud800`}, ""},
		{"escaped backslash before a pair", `{"cmd":"login","name":"\\\ud83d\ude00"}`, request{Cmd: "login", Name: `\😀`}, ""},
		{"other escapes", `{"cmd":"chat","recv":"b","content":"\"\\\/\b\f\n\r\t\u0041"}`, request{Cmd: "chat", Recv: "b", Content: "\"\\/\b\f\n\r\tA"}, ""},

		{"empty line", ``, request{}, CodeBadJSON},
		{"not json", `login zhima201`, request{}, CodeBadJSON},
		{"telnet text", "hello\r", request{}, CodeBadJSON},
		{"truncated object", `{"cmd":"login"`, request{}, CodeBadJSON},
		{"trailing garbage", `{"cmd":"ping"} x`, request{}, CodeBadJSON},
		{"two objects", `{"cmd":"ping"}{"cmd":"ping"}`, request{}, CodeBadJSON},
		{"invalid utf-8", "{\"cmd\":\"login\",\"name\":\"\xff\xfe\"}", request{}, CodeBadJSON},
		{"invalid utf-8 outside strings", "\xc3{\"cmd\":\"ping\"}", request{}, CodeBadJSON},
		{"json array", `[{"cmd":"ping"}]`, request{}, CodeBadJSON},
		{"json string", `"ping"`, request{}, CodeBadJSON},
		{"json number", `42`, request{}, CodeBadJSON},
		{"cmd is a number", `{"cmd":123}`, request{}, CodeBadJSON},
		{"name is an object", `{"cmd":"login","name":{}}`, request{}, CodeBadJSON},
		{"lone high surrogate", `{"cmd":"login","name":"\ud800"}`, request{}, CodeBadJSON},
		{"lone low surrogate", `{"cmd":"login","name":"a\udc00"}`, request{}, CodeBadJSON},
		{"high surrogate then a letter", `{"cmd":"login","name":"\ud800x"}`, request{}, CodeBadJSON},
		{"high surrogate then another escape", `{"cmd":"login","name":"\ud800\u0041"}`, request{}, CodeBadJSON},
		{"two high surrogates", `{"cmd":"login","name":"\ud800\ud800"}`, request{}, CodeBadJSON},
		{"reversed pair", `{"cmd":"login","name":"\ude00\ud83d"}`, request{}, CodeBadJSON},
		{"high surrogate at the end", `{"cmd":"login","name":"x\uDBFF"}`, request{}, CodeBadJSON},
		{"lone surrogate in content", `{"cmd":"chat","recv":"b","content":"hi \ud83d"}`, request{}, CodeBadJSON},
		{"lone surrogate in an unknown field", `{"cmd":"ping","x":"\udfff"}`, request{}, CodeBadJSON},
		{"deeply nested", strings.Repeat("[", 20000) + strings.Repeat("]", 20000), request{}, CodeBadJSON},

		{"missing cmd", `{"name":"zhima201"}`, request{}, CodeUnknownCmd},
		{"empty object", `{}`, request{}, CodeUnknownCmd},
		{"json null", `null`, request{}, CodeBadJSON}, // not an object
		{"empty cmd", `{"cmd":""}`, request{}, CodeUnknownCmd},
		{"null cmd", `{"cmd":null}`, request{}, CodeUnknownCmd},
		{"unknown cmd", `{"cmd":"send"}`, request{}, CodeUnknownCmd},
		{"cmd is case sensitive", `{"cmd":"LOGIN","name":"a"}`, request{}, CodeUnknownCmd},
		{"cmd with space", `{"cmd":"ping "}`, request{}, CodeUnknownCmd},
		{"long unknown cmd", `{"cmd":"` + strings.Repeat("x", 1000) + `"}`, request{}, CodeUnknownCmd},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, cerr := decodeRequest([]byte(tt.line))
			if tt.wantCode == "" {
				if cerr != nil {
					t.Fatalf("decodeRequest: %v, want success", cerr)
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("decodeRequest = %+v, want %+v", got, tt.want)
				}
				return
			}
			if cerr == nil {
				t.Fatalf("decodeRequest = %+v, nil; want code %s", got, tt.wantCode)
			}
			if cerr.code != tt.wantCode {
				t.Fatalf("decodeRequest: code %s (%v), want %s", cerr.code, cerr, tt.wantCode)
			}
			if cerr.msg == "" {
				t.Errorf("decodeRequest: code %s without a message", cerr.code)
			}
			// The message echoes at most a bounded part of the request.
			if len(cerr.msg) > 200 {
				t.Errorf("decodeRequest: message is %d bytes: %.80q...", len(cerr.msg), cerr.msg)
			}
		})
	}
}

func TestCheckName(t *testing.T) {
	const max = 16
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"ascii", "zhima201", true},
		{"chinese", "芝麻201", true},
		{"one byte", "a", true},
		{"exactly the limit", strings.Repeat("a", max), true},
		{"limit in bytes, not runes", strings.Repeat("芝", max/3), true}, // 15 bytes
		{"space and punctuation", "Zhi Ma-201_!", true},
		{"latin-1 letter after C1", "Zoë", true},
		{"emoji", "🙂", true},

		{"empty", "", false},
		{"one over the limit", strings.Repeat("a", max+1), false},
		{"over the limit in bytes", strings.Repeat("芝", max/3+1), false}, // 18 bytes, 6 runes
		{"NUL", "a\x00b", false},
		{"newline", "zhima\n201", false},
		{"tab", "\tzhima", false},
		{"unit separator", "a\x1f", false},
		{"DEL", "a\x7fb", false},
		{"C1 control U+0080", "a\u0080", false},
		{"C1 control U+0085 (NEL)", "a\u0085b", false},
		{"C1 control U+009F", "\u009fz", false},
		{"invalid utf-8", "a\xffb", false},
		{"truncated utf-8", "芝"[:2], false},
		{"replacement character", "a\ufffd", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, cerr := normalizeName(tt.in, max)
			if tt.ok && cerr != nil {
				t.Fatalf("normalizeName(%q) = %v, want nil", tt.in, cerr)
			}
			if !tt.ok {
				if cerr == nil {
					t.Fatalf("normalizeName(%q) = nil, want %s", tt.in, CodeBadName)
				}
				if cerr.code != CodeBadName {
					t.Fatalf("normalizeName(%q): code %s, want %s", tt.in, cerr.code, CodeBadName)
				}
			}
		})
	}
}
