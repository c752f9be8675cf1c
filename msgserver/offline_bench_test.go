package msgserver_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/testenv"
)

// BenchmarkOfflineStorage is the attack, bounded: two logged-in
// connections send offline messages (100 bytes or 4000 bytes of text) to
// made-up names, each name once. It reports what one offline message costs
// in Redis (used_memory grown per message) and how many bytes the entry of
// a 4 KiB message of '<' takes in its list.
func BenchmarkOfflineStorage(b *testing.B) {
	for _, size := range []int{100, 4000} {
		b.Run(fmt.Sprintf("content=%d", size), func(b *testing.B) { benchmarkOfflineStorage(b, size) })
	}
}

func benchmarkOfflineStorage(b *testing.B, size int) {
	rd := testenv.StartRedis(b)
	srv := testenv.StartServer(b, rd.Addr, msgserver.Config{ID: "msg-a", InboxTTL: time.Hour, OfflineRate: -1, OfflineMaxBytes: -1})
	usedMemory := func() int64 {
		info, err := rd.Command("INFO", "memory")
		if err != nil {
			b.Fatal(err)
		}
		for _, l := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), "used_memory:"); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				return n
			}
		}
		b.Fatalf("no used_memory in INFO: %q", info)
		return 0
	}
	const senders = 2
	conns := make([]net.Conn, senders)
	readers := make([]*bufio.Reader, senders)
	for i := range conns {
		c, err := net.Dial("tcp", srv.Addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		conns[i], readers[i] = c, bufio.NewReader(c)
		fmt.Fprintf(c, `{"cmd":"login","name":"spammer%d"}`+"\n", i)
		if l, err := readers[i].ReadString('\n'); err != nil || !strings.Contains(l, `"ok":true`) {
			b.Fatalf("login: %q %v", l, err)
		}
	}
	content := strings.Repeat("x", size)
	before := usedMemory()
	b.ResetTimer()
	var wg sync.WaitGroup
	refused := make([]map[string]int, senders)
	for i := range conns {
		n := b.N / senders
		if i == 0 {
			n += b.N % senders
		}
		refused[i] = map[string]int{}
		wg.Add(2)
		go func() {
			defer wg.Done()
			w := bufio.NewWriter(conns[i])
			for k := range n {
				fmt.Fprintf(w, `{"cmd":"chat","recv":"ghost-%d-%d","content":"%s"}`+"\n", i, k, content)
			}
			_ = w.Flush()
		}()
		go func() {
			defer wg.Done()
			_ = conns[i].SetReadDeadline(time.Now().Add(time.Minute))
			for range n {
				l, err := readers[i].ReadString('\n')
				if err != nil {
					refused[i]["read error"]++
					return
				}
				var r struct {
					Status, Code string
				}
				_ = json.Unmarshal([]byte(l), &r)
				if r.Status != "offline" {
					refused[i][r.Code]++
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	for _, m := range refused {
		for code, n := range m {
			b.Logf("%d messages refused: %s", n, code)
		}
	}
	b.ReportMetric(float64(usedMemory()-before)/float64(b.N), "redis-B/msg")

	fmt.Fprintf(conns[0], `{"cmd":"chat","recv":"lt-reader","content":"%s"}`+"\n", strings.Repeat("<", 4096))
	if l, err := readers[0].ReadString('\n'); err != nil || !strings.Contains(l, `"status":"offline"`) {
		b.Fatalf("4 KiB of '<': %q %v", l, err)
	}
	entry, err := rd.Command("LINDEX", "chatrelay:inbox:lt-reader", "0")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(len(entry)), "lt4KiB-entry-B")
}
