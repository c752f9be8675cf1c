package certs

import "github.com/prometheus/client_golang/prometheus"

// ExpiryGauge is chatrelay_cert_expiry_timestamp_seconds for the
// certificate r serves: when the one in use now expires (Unix seconds), so
// an alert can fire days before it does. use says which certificate it is
// ("link", "clients", "link-client"); file is its path. A renewal picked up
// by Watch moves the gauge.
func (r *Reloader) ExpiryGauge(use string) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "chatrelay_cert_expiry_timestamp_seconds",
		Help:        "When the TLS certificate in use expires, in Unix seconds (use: which port or link it serves; file: its path).",
		ConstLabels: prometheus.Labels{"use": use, "file": r.certFile},
	}, func() float64 {
		t := r.notAfter()
		if t.IsZero() {
			return 0
		}
		return float64(t.Unix())
	})
}
