package health

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/chatrelay/chatrelay/internal/version"
)

// Report is the /healthz document of either binary.
type Report struct {
	// Service is "relay" or "msgserver"; ID is its configured id.
	Service string `json:"service"`
	ID      string `json:"id"`
	// Version is the build's version (see internal/version); AdminHandler
	// fills it in.
	Version string `json:"version"`
	// Serving is true when the process is up and doing its job; /healthz
	// answers 200 then and 503 otherwise.
	Serving bool   `json:"serving"`
	Reason  string `json:"reason,omitempty"`
	// Role is, on a relay, "master" while it holds a VIP and "backup"
	// otherwise ("standalone" when no VIP is configured). VIP is the VIPs
	// it watches (comma-separated: two when both relays carry traffic) and
	// VIPsHeld those on this host now.
	Role     string   `json:"role,omitempty"`
	VIP      string   `json:"vip,omitempty"`
	VIPsHeld []string `json:"vips_held,omitempty"`
	// Redis is, on a message server, "ok" or "unreachable".
	Redis    string `json:"redis,omitempty"`
	Sessions *int   `json:"sessions,omitempty"`
	// Links are the relay links: one per message server seen on a relay,
	// the uplink on a message server.
	Links []Link `json:"links"`
	// LinksUp counts the links up now (relay only).
	LinksUp int `json:"links_up"`
	// NoLinksSince is, on a relay with no link up, when the last one went
	// down (or when the relay started); absent while any link is up.
	NoLinksSince *time.Time `json:"no_links_since,omitempty"`
	StartedAt    time.Time  `json:"started_at"`
	Time         time.Time  `json:"time"`
}

// NewRegistry returns a Prometheus registry of the project's own with the
// Go runtime and process collectors registered, and chatrelay_build_info.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	v := version.Get()
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "chatrelay_build_info",
		Help: "Always 1; the labels say which build runs: version, VCS revision and Go version.",
	}, []string{"version", "revision", "goversion"})
	build.WithLabelValues(v.Version, v.Revision, v.GoVersion).Set(1)
	reg.MustRegister(build)
	return reg
}

// AdminHandler serves /healthz from report, /metrics from reg, and, when
// withPprof is set, /debug/pprof/.
func AdminHandler(report func() Report, reg *prometheus.Registry, withPprof bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		rep := report()
		rep.Time = time.Now()
		if rep.Version == "" {
			rep.Version = version.Get().Version
		}
		if rep.Links == nil {
			rep.Links = []Link{}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if !rep.Serving {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}
