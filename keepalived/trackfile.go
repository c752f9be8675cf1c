package keepalived

import "os"

// WriteTrackFile sets a file keepalived tracks (the track file, a release
// file) to v, "0" or "1". It replaces the file rather than writing into
// it, as relay-supervise.sh does: keepalived may read a file half written.
func WriteTrackFile(path, v string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(v+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
