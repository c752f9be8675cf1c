package relay

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// CheckHeader marks the /healthz requests of `relay check`, so the relay
// can tell that keepalived still runs its vrrp_script.
const CheckHeader = "X-Chatrelay-Check"

// CheckWatch notices keepalived's check runs. keepalived runs `relay check`
// every second on each relay host; when that stops, keepalived is down (or
// its script is broken) on that host, and if that host is the backup,
// nothing else shows that the VIP has no standby any more.
type CheckWatch struct {
	start time.Time
	last  atomic.Int64 // UnixNano of the last check; 0: none yet
}

// NewCheckWatch registers relay_vrrp_check_age_seconds on reg: the time
// since keepalived last ran the check here (since start, before the first).
// Relays run with --vip have it; a standalone relay, which no keepalived
// checks, does not.
func NewCheckWatch(reg prometheus.Registerer) *CheckWatch {
	c := &CheckWatch{start: time.Now()}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "relay_vrrp_check_age_seconds",
		Help: "Seconds since keepalived last ran `relay check` against this relay (since the relay started, before the first run). keepalived runs it every second: a large value means keepalived is down on this host.",
	}, func() float64 { return c.Age(time.Now()).Seconds() }))
	return c
}

// Age is the time since the last check (or since start) at now.
func (c *CheckWatch) Age(now time.Time) time.Duration {
	last := c.start
	if n := c.last.Load(); n != 0 {
		last = time.Unix(0, n)
	}
	return now.Sub(last)
}

// Handler records each check's /healthz request, then serves it with h.
func (c *CheckWatch) Handler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" && r.Header.Get(CheckHeader) != "" {
			c.last.Store(time.Now().UnixNano())
		}
		h.ServeHTTP(w, r)
	})
}
