package api_test

import (
	"archive/tar"
	"bytes"
	"net/http"
	"strings"
	"testing"
)

// A file name with a percent sign is unescaped once, whatever else the URL
// holds: "a%2541b" names the file "a%41b", never "aAb".
func TestFileNamesArePercentDecodedOnce(t *testing.T) {
	e := newEnv(t, processBackend)
	ws := e.createWorkspace(e.alice, nil)
	base := "/workspaces/" + ws.ID + "/files/"
	for _, c := range []struct{ url, name string }{
		{"a%2541b", "a%41b"},
		{"dir%2Fc%2541d", "dir/c%41d"}, // an escaped slash sets RawPath
		{"100%25 done", "100% done"},
	} {
		var info struct{ Path string }
		e.json(e.alice, "PUT", base+c.url, "x", http.StatusCreated, &info)
		if info.Path != c.name {
			t.Errorf("PUT %s stored %q, want %q", c.url, info.Path, c.name)
		}
		resp, body := e.do(e.alice, "GET", base+c.url, nil)
		if resp.StatusCode != http.StatusOK || string(body) != "x" {
			t.Errorf("GET %s: %d %q", c.url, resp.StatusCode, body)
		}
	}
	e.wantError(e.alice, "GET", base+"aAb", nil, http.StatusNotFound, "not_found")
}

// A tar over the workspace's upload limit is a 413 too_large on every
// runtime, whatever the driver makes of the cut-off stream.
func TestArchiveOverLimitIsTooLarge(t *testing.T) {
	for _, be := range append([]backend{processBackend}, engineBackends...) {
		t.Run(be.name, func(t *testing.T) {
			e := newEnv(t, be)
			ws := e.createWorkspace(e.alice, map[string]any{"limits": map[string]any{"upload": "4KiB"}})
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			data := strings.Repeat("x", 20000)
			if err := tw.WriteHeader(&tar.Header{Name: "big", Size: int64(len(data)), Mode: 0o644, Typeflag: tar.TypeReg}); err != nil {
				t.Fatal(err)
			}
			tw.Write([]byte(data))
			tw.Close()
			e.wantError(e.alice, "PUT", "/workspaces/"+ws.ID+"/archive", buf.Bytes(), http.StatusRequestEntityTooLarge, "too_large")
		})
	}
}
