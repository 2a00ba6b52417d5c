package api_test

import (
	"net/http"
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
