package store

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
)

// syncBuffer is a bytes.Buffer safe for go-redis's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// go-redis's own lines come out through slog, so a JSON log stays JSON.
func TestGoRedisLogsThroughSlog(t *testing.T) {
	var buf syncBuffer
	SetLogger(slog.New(slog.NewJSONHandler(&buf, nil)))
	t.Cleanup(func() { SetLogger(slog.Default()) })

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: every dial fails, and go-redis says so
	o, err := ParseURL("redis://" + addr + "?dial_timeout=100ms&max_retries=-1")
	if err != nil {
		t.Fatal(err)
	}
	rdb := o.NewClient()
	defer rdb.Close()
	if err := rdb.Ping(context.Background()).Err(); err == nil {
		t.Fatal("ping to a closed port worked")
	}

	var found bool
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %v\n%s", err, line)
		}
		msg, _ := rec["msg"].(string)
		if strings.Contains(msg, "failed to dial") && rec["level"] == "WARN" && rec["component"] == "redis" {
			found = true
		}
	}
	if !found {
		t.Fatalf("no go-redis dial failure logged as JSON:\n%s", buf.String())
	}
}
