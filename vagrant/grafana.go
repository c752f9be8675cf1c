package vagrant

import (
	"errors"
	"path/filepath"

	"github.com/chatrelay/chatrelay/health/grafana"
)

// DefaultGrafanaPrometheus is the Prometheus the lab's Grafana reads: the
// one vagrant/README.md (step 5) runs on the VM host.
const DefaultGrafanaPrometheus = "http://127.0.0.1:9091"

// RenderGrafana returns Grafana's provisioning files for the lab, to be
// written under dir (Grafana's paths.provisioning): a Prometheus datasource
// at prometheusURL, a dashboard provider, and the chatrelay dashboard
// (health/grafana/chatrelay.json) beside it. dir must be absolute: the
// provider names the dashboard folder by path.
func RenderGrafana(dir, prometheusURL string) ([]File, error) {
	if !filepath.IsAbs(dir) {
		return nil, errors.New("render grafana: the provisioning folder must be an absolute path")
	}
	if prometheusURL == "" {
		prometheusURL = DefaultGrafanaPrometheus
	}
	dashboards := filepath.Join(dir, "dashboards")
	ds, err := execute("grafana-datasource.yml", struct{ PrometheusURL string }{prometheusURL})
	if err != nil {
		return nil, err
	}
	prov, err := execute("grafana-dashboards.yml", struct{ DashboardDir string }{dashboards})
	if err != nil {
		return nil, err
	}
	return []File{
		{Name: "dashboards/chatrelay.json", Data: grafana.Dashboard},
		{Name: "dashboards/chatrelay.yml", Data: prov},
		{Name: "datasources/chatrelay.yml", Data: ds},
	}, nil
}
