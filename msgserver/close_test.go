package msgserver

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatrelay/chatrelay/internal/tcptest"
)

// Closing a session whose client has reset the connection returns: the
// closing line's write fails inside close, and what the failed write
// calls must not wait for that close itself (it did: a kick or a shutdown
// hung on such a session, and with it the relay link's reader or Close).
func TestCloseAfterClientResetReturns(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 50 * time.Millisecond})
	defer rdb.Close()
	srv, err := New(Config{ID: "t", Redis: rdb, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	conn, client := tcptest.Pair(t)
	sess := newSession(srv, conn)

	if err := client.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	client.Close() // a reset, not a FIN
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil || err == io.EOF {
		t.Fatalf("reading after the client's reset: %v, want a connection reset", err)
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		sess.close(closeKickedRemote)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("close on a reset connection did not return")
	}
	if !sess.isClosed() || sess.q.Err() == nil {
		t.Fatalf("closed=%v write error=%v: want a closed session with its write error", sess.isClosed(), sess.q.Err())
	}
}
