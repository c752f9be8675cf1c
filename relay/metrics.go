package relay

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the relay's Prometheus metrics. A nil *Metrics records nothing.
type Metrics struct {
	linkUpVec       *prometheus.GaugeVec
	links           prometheus.Gauge
	vipHeld         *prometheus.GaugeVec
	forwardedTotal  prometheus.Counter
	bytesIn         prometheus.Counter
	bytesOut        prometheus.Counter
	noRouteTotal    prometheus.Counter
	droppedTotal    prometheus.Counter
	slowLinksTotal  prometheus.Counter
	handshakeFails  prometheus.Counter
	pending         prometheus.Gauge
	forwardDuration prometheus.Histogram
	batchFrames     prometheus.Histogram
	rttSeconds      *prometheus.GaugeVec
	tlsFailures     prometheus.Counter
}

// NewMetrics registers the relay's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	bytes := f.NewCounterVec(prometheus.CounterOpts{
		Name: "relay_bytes_total",
		Help: "Bytes of link frames received (in) and written (out) by the relay.",
	}, []string{"direction"})
	return &Metrics{
		linkUpVec: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "relay_link_up",
			Help: "1 if the link to the message server is up, 0 if it is down; one series per server the relay remembers (down ones are forgotten after --forget-after).",
		}, []string{"server"}),
		links: f.NewGauge(prometheus.GaugeOpts{
			Name: "relay_links",
			Help: "Number of message server links up now.",
		}),
		vipHeld: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "relay_vip_held",
			Help: "1 if this relay holds the virtual IP (label vip), else 0: one series per VIP the relay watches (--vip).",
		}, []string{"vip"}),
		forwardedTotal: f.NewCounter(prometheus.CounterOpts{
			Name: "relay_frames_forwarded_total",
			Help: "Messages (forward frames) passed to their destination server's link.",
		}),
		bytesIn:  bytes.WithLabelValues("in"),
		bytesOut: bytes.WithLabelValues("out"),
		noRouteTotal: f.NewCounter(prometheus.CounterOpts{
			Name: "relay_no_route_total",
			Help: "Messages answered with a no-route NACK because their destination server had no link.",
		}),
		droppedTotal: f.NewCounter(prometheus.CounterOpts{
			Name: "relay_control_frames_dropped_total",
			Help: "Ack and kick frames dropped because their destination had no link (the origin recovers by its timers).",
		}),
		slowLinksTotal: f.NewCounter(prometheus.CounterOpts{
			Name: "relay_slow_links_total",
			Help: "Links cut because their outbound queue passed its byte limit.",
		}),
		handshakeFails: f.NewCounter(prometheus.CounterOpts{
			Name: "relay_handshake_failures_total",
			Help: "Connections refused during the link handshake (bad secret, bad server id, id already linked, garbage, timeout, over the pending limits).",
		}),
		pending: f.NewGauge(prometheus.GaugeOpts{
			Name: "relay_pending_handshakes",
			Help: "Connections that have not proved the link secret yet (bounded by --max-pending-handshakes).",
		}),
		forwardDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "relay_forward_duration_seconds",
			Help:    "Time from a frame being queued for a link to its write completing (oldest frame of each write).",
			Buckets: prometheus.ExponentialBuckets(10e-6, 4, 10),
		}),
		batchFrames: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "relay_write_batch_frames",
			Help:    "Frames carried by each write to a link: above 1 means writes are coalesced.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 8),
		}),
		rttSeconds: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "relay_link_rtt_seconds",
			Help: "Last measured ping round trip on the link to each message server.",
		}, []string{"server"}),
		tlsFailures: f.NewCounter(prometheus.CounterOpts{
			Name: "relay_tls_handshake_failures_total",
			Help: "Connections to the TLS link port that failed their TLS handshake (plaintext, untrusted or missing certificate, timeout); each is logged at debug level only.",
		}),
	}
}

func (m *Metrics) linkUp(server string, n int) {
	if m == nil {
		return
	}
	m.linkUpVec.WithLabelValues(server).Set(1)
	m.links.Set(float64(n))
}

func (m *Metrics) linkDown(server string, n int) {
	if m == nil {
		return
	}
	m.linkUpVec.WithLabelValues(server).Set(0)
	m.links.Set(float64(n))
}

// SetVIPHeld records whether this relay holds vip.
func (m *Metrics) SetVIPHeld(vip string, held bool) {
	if m == nil {
		return
	}
	v := 0.0
	if held {
		v = 1
	}
	m.vipHeld.WithLabelValues(vip).Set(v)
}

func (m *Metrics) received(n int) {
	if m != nil {
		m.bytesIn.Add(float64(n))
	}
}

func (m *Metrics) flushed(n, frames int, waited time.Duration) {
	if m == nil {
		return
	}
	m.bytesOut.Add(float64(n))
	m.batchFrames.Observe(float64(frames))
	m.forwardDuration.Observe(waited.Seconds())
}

func (m *Metrics) forwardedN(n int) {
	if m != nil && n > 0 {
		m.forwardedTotal.Add(float64(n))
	}
}

func (m *Metrics) noRoute() {
	if m != nil {
		m.noRouteTotal.Inc()
	}
}

func (m *Metrics) dropped() {
	if m != nil {
		m.droppedTotal.Inc()
	}
}

func (m *Metrics) slowLink() {
	if m != nil {
		m.slowLinksTotal.Inc()
	}
}

func (m *Metrics) handshakeFailed() {
	if m != nil {
		m.handshakeFails.Inc()
	}
}

func (m *Metrics) pendingHandshakes(n int) {
	if m != nil {
		m.pending.Set(float64(n))
	}
}

// forget deletes the series of a server the relay no longer remembers.
func (m *Metrics) forget(server string) {
	if m == nil {
		return
	}
	m.linkUpVec.DeleteLabelValues(server)
	m.rttSeconds.DeleteLabelValues(server)
}

func (m *Metrics) rtt(server string, d time.Duration) {
	if m != nil {
		m.rttSeconds.WithLabelValues(server).Set(d.Seconds())
	}
}

func (m *Metrics) tlsHandshakeFailed() {
	if m != nil {
		m.tlsFailures.Inc()
	}
}
