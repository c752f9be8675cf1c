// Package version says which build of chatrelay is running: the version,
// VCS revision and Go version, for --version, /healthz and the
// chatrelay_build_info metric.
//
// The version comes from the module build info (a tagged `go install`
// gives v1.2.3; a build in a checkout, the VCS pseudo-version or
// "(devel)"). A release sets it explicitly:
//
//	go build -ldflags "-X github.com/chatrelay/chatrelay/internal/version.version=v1.2.3
//	  -X github.com/chatrelay/chatrelay/internal/version.revision=$(git rev-parse HEAD)" ./cmd/...
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
)

// version and revision, when set at link time (-ldflags -X), override the
// build info.
var version, revision string

// Info is what a build knows of itself.
type Info struct {
	Version   string // v1.2.3, a pseudo-version, or "devel"
	Revision  string // VCS commit, with "-dirty" if the tree had changes; "unknown" without VCS info
	GoVersion string // go1.26.8
}

var (
	once sync.Once
	info Info
)

// Get returns this build's Info.
func Get() Info {
	once.Do(func() { info = read() })
	return info
}

func read() Info {
	i := Info{Version: version, Revision: "unknown", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if ok {
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version
		}
		dirty := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				i.Revision = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if dirty && i.Revision != "unknown" {
			i.Revision += "-dirty"
		}
	}
	if i.Version == "" {
		i.Version = "devel"
	}
	if revision != "" {
		i.Revision = revision
	}
	return i
}

// String is the line --version prints for program prog.
func String(prog string) string {
	i := Get()
	return fmt.Sprintf("%s %s (revision %s, %s)", prog, i.Version, i.Revision, i.GoVersion)
}
