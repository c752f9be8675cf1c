package testenv

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RPMContents returns the regular files of the RPM at path, by the path they
// install to, read with rpm2archive (which comes with Debian's rpm package).
func RPMContents(t testing.TB, path string) map[string][]byte {
	t.Helper()
	bin := Need(t, "rpm2archive", "rpm")
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(bin, "-")
	cmd.Stdin = f
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	tgz, err := cmd.Output()
	if err != nil {
		t.Fatalf("rpm2archive %s: %v\n%s", path, err, errOut.Bytes())
	}
	zr, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		t.Fatalf("rpm2archive %s: %v", path, err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatalf("rpm2archive %s: %v", path, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("rpm2archive %s: %v", path, err)
		}
		files[strings.TrimPrefix(h.Name, ".")] = b
	}
}
