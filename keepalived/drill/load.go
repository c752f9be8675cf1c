package drill

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"
)

// LoadConfig is the steady cross-server traffic a drill runs under.
type LoadConfig struct {
	Servers  []string      // message servers' client addresses
	Pairs    int           // user pairs, one user of each pair per server
	Rate     float64       // aggregate messages per second
	Duration time.Duration // how long to send
	Settle   time.Duration // after sending stops, wait this long for late acks and deliveries
	TLS      *tls.Config   // if set, the client ports serve TLS (an empty ServerName: each server's host)
	// AckPairs is how many of the pairs log in with acks on: their
	// clients ack every chat event and drop ids they have seen.
	AckPairs int
}

// LoadResult is what the load saw. Counting is per message, by the
// sender's sequence number:
//
//	acked       the sender's server confirmed it (delivered, relayed or offline)
//	refused     the sender's server answered with an error: the user knows
//	unconfirmed no answer at all (the sender's own server died)
//	lost        acked but never shown to the recipient, live or at re-login
//	duplicated  shown to the recipient more than once
//	unacked     acked by the sender's server, to a client with acks on,
//	            and never acked by that client
//	redelivered events marked redelivered (the client had them, or may
//	            have: a client with acks drops the ids it has seen)
type LoadResult struct {
	AckClients       int      `json:"ack_clients"`
	ClientAcks       int64    `json:"client_acks"`
	Unacked          int64    `json:"unacked"`
	Redelivered      int64    `json:"redelivered"`
	Sent             int64    `json:"sent"`
	Acked            int64    `json:"acked"`
	Refused          int64    `json:"refused"`
	Unconfirmed      int64    `json:"unconfirmed"`
	DeliveredLive    int64    `json:"delivered_live"`
	DeliveredOffline int64    `json:"delivered_offline"`
	Lost             int64    `json:"lost"`
	Duplicated       int64    `json:"duplicated"`
	Gaps             []Gap    `json:"gaps"` // the longest pauses in delivery, longest first
	Started          int64    `json:"started_unix_nano"`
	RefusedCodes     []string `json:"refused_codes,omitempty"`
}

// Gap is a pause between two consecutive deliveries (any users).
type Gap struct {
	From int64 `json:"from_unix_nano"`
	To   int64 `json:"to_unix_nano"`
}

// Seconds is the gap's length.
func (g Gap) Seconds() float64 { return float64(g.To-g.From) / 1e9 }

type loadUser struct {
	name, partner, server string
	acks                  bool // logs in with acks on and acks every chat event
	conn                  net.Conn
	br                    *bufio.Reader
	wmu                   sync.Mutex // guards conn writes (sender and relogin)
	dead                  bool       // the connection failed; no more sending

	mu         sync.Mutex
	status     map[uint64]byte // seq -> 'a' acked, 'r' refused
	codes      map[string]bool
	seen       map[uint64]int // from the partner: seq -> times shown
	ackedSeq   map[uint64]bool
	redeliv    int64
	acksSent   int64
	offline    int64
	deliveries []int64 // receive times (unix nanos) of live deliveries
}

// RunLoad drives the traffic and returns the result. It stops by itself.
func RunLoad(cfg LoadConfig, progress io.Writer) (*LoadResult, error) {
	if len(cfg.Servers) < 2 || cfg.Pairs < 1 || cfg.Rate <= 0 || cfg.Duration <= 0 {
		return nil, errors.New("load: need two servers, pairs ≥ 1, rate > 0, duration > 0")
	}
	users := make([]*loadUser, 0, 2*cfg.Pairs)
	for k := 0; k < cfg.Pairs; k++ {
		a := &loadUser{name: fmt.Sprintf("drill-%d-a", k), server: cfg.Servers[0]}
		b := &loadUser{name: fmt.Sprintf("drill-%d-b", k), server: cfg.Servers[1]}
		a.partner, b.partner = b.name, a.name
		a.acks, b.acks = k < cfg.AckPairs, k < cfg.AckPairs
		users = append(users, a, b)
	}
	byName := map[string]*loadUser{}
	for _, u := range users {
		u.status, u.seen, u.codes, u.ackedSeq = map[uint64]byte{}, map[uint64]int{}, map[string]bool{}, map[uint64]bool{}
		byName[u.name] = u
		if err := u.dial(u.server, cfg.TLS); err != nil {
			return nil, err
		}
	}
	defer func() {
		for _, u := range users {
			u.conn.Close()
		}
	}()
	var wg sync.WaitGroup
	for _, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u.read(byName, u.conn, u.br, &u.wmu, false)
		}()
	}

	res := &LoadResult{Started: time.Now().UnixNano()}
	seq := make([]uint64, len(users))
	tick := time.NewTicker(time.Millisecond)
	start := time.Now()
	next, lastReport := 0, start
	for now := range tick.C {
		if now.Sub(start) >= cfg.Duration {
			break
		}
		due := int64(cfg.Rate * now.Sub(start).Seconds())
		for res.Sent < due {
			u := users[next]
			i := next
			next = (next + 1) % len(users)
			if u.isDead() {
				res.Sent++ // counted as sent, never answered: unconfirmed
				continue
			}
			u.send(seq[i])
			seq[i]++
			res.Sent++
		}
		if progress != nil && now.Sub(lastReport) >= time.Second {
			lastReport = now
			fmt.Fprintf(progress, "load: %.0fs sent %d\n", now.Sub(start).Seconds(), res.Sent)
		}
	}
	tick.Stop()
	time.Sleep(cfg.Settle) // late acks and deliveries; bounded
	for _, u := range users {
		_ = u.conn.SetReadDeadline(time.Now())
	}
	wg.Wait()

	// Whatever an acked message's recipient has not seen may be in its
	// offline inbox (stored while it looked offline): log it in again on a
	// live server and collect.
	var relogins sync.WaitGroup
	for _, u := range users {
		partner := byName[u.partner]
		if partner.missingFrom(u) > 0 {
			relogins.Add(1)
			go func() {
				defer relogins.Done()
				partner.collectOffline(byName, cfg.Servers, cfg.TLS)
			}()
		}
	}
	relogins.Wait()

	var times []int64
	for i, u := range users {
		partner := byName[u.partner]
		u.mu.Lock()
		for s := uint64(0); s < seq[i]; s++ {
			st := u.status[s]
			partner.mu.Lock()
			shown := partner.seen[s]
			partner.mu.Unlock()
			switch {
			case st == 'a':
				res.Acked++
				if shown == 0 {
					res.Lost++
				}
				partner.mu.Lock()
				if partner.acks && !partner.ackedSeq[s] {
					res.Unacked++
				}
				partner.mu.Unlock()
			case st == 'r':
				res.Refused++
			default:
				res.Unconfirmed++
			}
			if shown > 1 {
				res.Duplicated += int64(shown - 1)
			}
		}
		for c := range u.codes {
			if !slices.Contains(res.RefusedCodes, c) {
				res.RefusedCodes = append(res.RefusedCodes, c)
			}
		}
		u.mu.Unlock()
		if u.acks {
			res.AckClients++
		}
		res.ClientAcks += u.acksSent
		res.Redelivered += u.redeliv
		res.DeliveredLive += int64(len(u.deliveries))
		res.DeliveredOffline += u.offline
		times = append(times, u.deliveries...)
	}
	// The unsent remainder of dead senders counts as unconfirmed too.
	var sentBySeq int64
	for i := range users {
		sentBySeq += int64(seq[i])
	}
	res.Unconfirmed += res.Sent - sentBySeq
	res.Gaps = longestGaps(times, 50)
	return res, nil
}

func (u *loadUser) dial(addr string, tc *tls.Config) error {
	var c net.Conn
	var err error
	if tc != nil {
		c, err = tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", addr, tc)
	} else {
		c, err = net.DialTimeout("tcp", addr, 3*time.Second)
	}
	if err != nil {
		return fmt.Errorf("load: connect %s: %w", addr, err)
	}
	br := bufio.NewReaderSize(c, 64<<10)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "{\"cmd\":\"login\",\"name\":%q,\"acks\":%t}\n", u.name, u.acks); err != nil {
		c.Close()
		return fmt.Errorf("load: login %s: %w", u.name, err)
	}
	line, err := br.ReadSlice('\n')
	if err != nil || !bytes.Contains(line, []byte(`"ok":true`)) {
		c.Close()
		return fmt.Errorf("load: login %s on %s failed: %q %v", u.name, addr, line, err)
	}
	_ = c.SetDeadline(time.Time{})
	u.conn, u.br = c, br
	return nil
}

func (u *loadUser) isDead() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.dead
}

func (u *loadUser) send(seq uint64) {
	line := fmt.Sprintf(`{"cmd":"chat","recv":%q,"content":"%d %d","ref":"%d"}`+"\n", u.partner, seq, time.Now().UnixNano(), seq)
	u.wmu.Lock()
	_ = u.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, err := u.conn.Write([]byte(line))
	u.wmu.Unlock()
	if err != nil {
		u.mu.Lock()
		u.dead = true
		u.mu.Unlock()
	}
}

type loadLine struct {
	Reply   string `json:"reply"`
	OK      bool   `json:"ok"`
	Code    string `json:"code"`
	Ref     string `json:"ref"`
	Event   string `json:"event"`
	From    string `json:"from"`
	Content string `json:"content"`
	Offline bool   `json:"offline"`
	ID      string `json:"id"`
	Again   bool   `json:"redelivered"`
}

// read handles the lines of one connection of u until it fails; wmu
// guards writes to c (acks).
func (u *loadUser) read(byName map[string]*loadUser, c net.Conn, br *bufio.Reader, wmu *sync.Mutex, offlineOnly bool) {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			var ne net.Error
			if !offlineOnly && !(errors.As(err, &ne) && ne.Timeout()) {
				u.mu.Lock()
				u.dead = true
				u.mu.Unlock()
			}
			return
		}
		now := time.Now().UnixNano()
		var m loadLine
		if json.Unmarshal(line, &m) != nil {
			continue
		}
		switch {
		case m.Reply == "chat":
			seq, err := strconv.ParseUint(m.Ref, 10, 64)
			if err != nil {
				continue
			}
			u.mu.Lock()
			if m.OK {
				u.status[seq] = 'a'
			} else {
				u.status[seq] = 'r'
				u.codes[m.Code] = true
			}
			u.mu.Unlock()
		case m.Event == "chat" && m.From == u.partner:
			var seq uint64
			if _, err := fmt.Sscanf(m.Content, "%d", &seq); err != nil {
				continue
			}
			if u.acks {
				// Every event is acked, one seen before too: its first ack
				// may not have been recorded (its server died). The client
				// shows it once.
				wmu.Lock()
				_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
				_, err := fmt.Fprintf(c, "{\"cmd\":\"ack\",\"id\":%q}\n", m.ID)
				wmu.Unlock()
				u.mu.Lock()
				if err == nil {
					u.acksSent++
					u.ackedSeq[seq] = true
				}
				if m.Again {
					u.redeliv++
					if u.seen[seq] > 0 {
						u.mu.Unlock()
						continue // dropped: shown already
					}
				}
				u.mu.Unlock()
			}
			u.mu.Lock()
			u.seen[seq]++
			if m.Offline || m.Again {
				u.offline++
			} else if !offlineOnly {
				u.deliveries = append(u.deliveries, now)
			}
			u.mu.Unlock()
		}
	}
}

// missingFrom counts messages sender's server acked that u has not seen.
func (u *loadUser) missingFrom(sender *loadUser) int {
	sender.mu.Lock()
	acked := make([]uint64, 0, len(sender.status))
	for s, st := range sender.status {
		if st == 'a' {
			acked = append(acked, s)
		}
	}
	sender.mu.Unlock()
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, s := range acked {
		if u.seen[s] == 0 {
			n++
		}
	}
	return n
}

// collectOffline logs u in again (on the first server that answers) and
// reads what its inbox held.
func (u *loadUser) collectOffline(byName map[string]*loadUser, servers []string, tc *tls.Config) {
	for _, addr := range servers {
		tmp := &loadUser{name: u.name, acks: u.acks}
		if err := tmp.dial(addr, tc); err != nil {
			continue
		}
		_ = tmp.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		u.read(byName, tmp.conn, tmp.br, &tmp.wmu, true)
		tmp.conn.Close()
		return
	}
}

func longestGaps(times []int64, n int) []Gap {
	slices.Sort(times)
	var gaps []Gap
	for i := 1; i < len(times); i++ {
		gaps = append(gaps, Gap{From: times[i-1], To: times[i]})
	}
	slices.SortFunc(gaps, func(a, b Gap) int { return int((b.To - b.From) - (a.To - a.From)) })
	if len(gaps) > n {
		gaps = gaps[:n]
	}
	return gaps
}
