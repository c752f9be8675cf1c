package relay

import (
	"net"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/chatrelay/chatrelay/health"
	"github.com/chatrelay/chatrelay/internal/sendq"
	"github.com/chatrelay/chatrelay/wire"
)

// status is what the relay remembers of a message server it has seen: the
// state of its current (or last) link. Guarded by Relay.mu. A server whose
// link has been down for ForgetAfter is forgotten, and so are those down
// longest while more than MaxKnownServers are remembered: the ids a relay
// keeps are bounded, however many a holder of the secret makes up.
type status struct {
	links  int // live links of the server (two while both VIPs are here)
	isUp   bool
	since  time.Time
	remote string
	stats  *wire.LinkStats
	q      *sendq.Queue
}

// up shows l, the server's newest link, and n live links in all; since
// moves only when the server had none.
func (st *status) up(l *link, n int) {
	if !st.isUp {
		st.since = time.Now()
	}
	st.isUp, st.links, st.remote, st.stats, st.q = true, n, l.remote, l.stats, l.q
}

// down keeps the link's counters but not its queue, whose buffer may be
// large: a server remembered while down costs only its status.
func (st *status) down(*link) {
	st.isUp, st.links, st.since, st.q = false, 0, time.Now(), nil
}

// Links returns the state of the link of every message server this relay
// remembers, sorted by server id.
func (r *Relay) Links() []health.Link {
	now := time.Now()
	r.mu.RLock()
	out := make([]health.Link, 0, len(r.seen))
	for id, st := range r.seen {
		l := health.Link{
			Peer:   id,
			Up:     st.isUp,
			Since:  st.since,
			Remote: st.remote,
		}
		if st.stats != nil {
			l.LastHeartbeatAge = health.Seconds(now.Sub(time.Unix(0, st.stats.LastRecv.Load())))
			l.RTT = health.Seconds(time.Duration(st.stats.RTT.Load()))
			l.FramesIn = st.stats.FramesIn.Load()
			l.FramesOut = st.stats.FramesOut.Load()
			l.BytesIn = st.stats.BytesIn.Load()
			l.BytesOut = st.stats.BytesOut.Load()
		}
		l.Links = st.links
		if st.isUp && st.q != nil {
			l.QueueBytes = st.q.Len()
		}
		out = append(out, l)
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Peer < out[j].Peer })
	return out
}

// forgetLocked forgets the servers whose link has been down longer than
// ForgetAfter, then, while more than MaxKnownServers are remembered, those
// down longest. Their metric series go with them, so /healthz and /metrics
// name the same servers. r.mu must be held.
func (r *Relay) forgetLocked(now time.Time) {
	for id, st := range r.seen {
		if !st.isUp && now.Sub(st.since) > r.cfg.ForgetAfter {
			r.forgetID(id)
		}
	}
	for len(r.seen) > r.cfg.MaxKnownServers {
		oldest := ""
		for id, st := range r.seen {
			if !st.isUp && (oldest == "" || st.since.Before(r.seen[oldest].since)) {
				oldest = id
			}
		}
		if oldest == "" {
			return // all up: live links are never forgotten
		}
		r.forgetID(oldest)
	}
}

func (r *Relay) forgetID(id string) {
	delete(r.seen, id)
	r.m.forget(id)
	r.log.Info("server forgotten", "server", id)
}

// forgetLoop forgets servers down past ForgetAfter until Close, checking a
// few times per ForgetAfter (at most every minute).
func (r *Relay) forgetLoop() {
	t := time.NewTicker(min(max(r.cfg.ForgetAfter/4, 10*time.Millisecond), time.Minute))
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			r.mu.Lock()
			r.forgetLocked(now)
			r.mu.Unlock()
		case <-r.ctx.Done():
			return
		}
	}
}

// WatchVIP starts watching whether this host holds vip (polling every
// interval) until Close; the role appears in Report and relay_vip_held.
// Call it once per VIP: a relay pair that both carry traffic has two.
func (r *Relay) WatchVIP(vip net.IP, interval time.Duration) {
	w := &VIPWatcher{VIP: vip, Interval: interval, Server: r}
	r.mu.Lock()
	if r.ctx.Err() != nil {
		r.mu.Unlock()
		return
	}
	r.vips = append(r.vips, w)
	r.wg.Add(1)
	r.mu.Unlock()
	r.m.SetVIPHeld(vip.String(), false)
	go func() {
		defer r.wg.Done()
		w.Run(r.ctx)
	}()
}

// Report is the relay's /healthz document. The relay is serving until it
// is closed; its role is "master" while it holds a VIP (VIPsHeld says
// which), "backup" when it holds none, and "standalone" when no VIP is
// configured.
func (r *Relay) Report() health.Report {
	links := r.Links()
	r.mu.RLock()
	ws, since := slices.Clone(r.vips), r.noLinksSince
	r.mu.RUnlock()
	rep := health.Report{
		Service:   "relay",
		ID:        r.cfg.ID,
		Serving:   r.ctx.Err() == nil,
		Role:      "standalone",
		Links:     links,
		StartedAt: r.started,
	}
	for _, l := range links {
		if l.Up {
			rep.LinksUp++
		}
	}
	var vips []string
	for _, w := range ws {
		vips = append(vips, w.VIP.String())
		if !w.Held() {
			continue
		}
		rep.VIPsHeld = append(rep.VIPsHeld, w.VIP.String())
		// A relay that has just taken a VIP has had no links only since
		// then: the servers are still redialling. Counting from before would
		// fail the check of every fresh master at once.
		if acquired := w.AcquiredAt(); since.Before(acquired) && !since.IsZero() {
			since = acquired
		}
	}
	if !since.IsZero() {
		rep.NoLinksSince = &since
	}
	if !rep.Serving {
		rep.Reason = "relay is shutting down"
	}
	if len(ws) > 0 {
		rep.VIP = strings.Join(vips, ",")
		rep.Role = "backup"
		if len(rep.VIPsHeld) > 0 {
			rep.Role = "master"
		}
	}
	return rep
}
