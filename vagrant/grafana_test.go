package vagrant_test

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chatrelay/chatrelay/health/grafana"
	"github.com/chatrelay/chatrelay/vagrant"
)

// The lab's Grafana provisioning: a datasource at the lab's Prometheus, a
// provider whose folder is where the dashboard is written, and the
// dashboard itself, byte for byte health/grafana/chatrelay.json.
func TestRenderGrafana(t *testing.T) {
	files, err := vagrant.RenderGrafana("/srv/chatrelay/grafana", "")
	if err != nil {
		t.Fatal(err)
	}
	names := []string{}
	for _, f := range files {
		names = append(names, f.Name)
		switch {
		case strings.HasSuffix(f.Name, ".json"):
			if !bytes.Equal(f.Data, grafana.Dashboard) {
				t.Errorf("%s is not health/grafana/chatrelay.json", f.Name)
			}
		default:
			golden(t, filepath.Join("testdata", "grafana", f.Name+".golden"), f.Data)
		}
	}
	if got := strings.Join(names, " "); got != "dashboards/chatrelay.json dashboards/chatrelay.yml datasources/chatrelay.yml" {
		t.Errorf("files %s", got)
	}
	if _, err := vagrant.RenderGrafana("build/grafana", ""); err == nil {
		t.Error("a relative provisioning folder was accepted: the provider would name a path Grafana cannot find")
	}
}
