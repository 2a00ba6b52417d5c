package api_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// A client that disconnects in the middle of a PUT leaves the file that
// was there whole and no partial file or temporary, whether the body has
// a Content-Length or is chunked.
func TestCutOffUploadKeepsOldFile(t *testing.T) {
	e := newEnv(t, processBackend)
	ws := e.createWorkspace(e.alice, nil)
	path := "/workspaces/" + ws.ID + "/files/d/f"
	e.json(e.alice, "PUT", path, "old", http.StatusCreated, nil)
	st, err := e.rt.Inspect(context.Background(), ws.ID)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(st.Detail["dir"], "d")
	// temps lists what is in d besides f.
	temps := func() []string {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, de := range ents {
			if de.Name() != "f" {
				out = append(out, de.Name())
			}
		}
		return out
	}
	// waitUntil waits for cond; the bound only keeps a broken server from
	// hanging the test.
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("gave up waiting until %s", what)
			}
		}
	}
	u, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	for _, chunked := range []bool{false, true} {
		conn, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		head := "PUT " + path + " HTTP/1.1\r\nHost: " + u.Host + "\r\nAuthorization: Bearer " + e.alice + "\r\n"
		if chunked {
			head += "Transfer-Encoding: chunked\r\n\r\n"
		} else {
			head += "Content-Length: 1000000\r\n\r\n"
		}
		half := strings.Repeat("n", 500000)
		if chunked {
			half = fmt.Sprintf("%x\r\n%s\r\n", len(half), half)
		}
		if _, err := io.WriteString(conn, head+half); err != nil {
			t.Fatal(err)
		}
		// The upload is under way once its temporary exists; then the
		// client goes away.
		waitUntil("the upload's temporary exists", func() bool { return len(temps()) == 1 })
		conn.Close()
		waitUntil("the temporary is gone", func() bool { return len(temps()) == 0 })
		resp, body := e.do(e.alice, "GET", path, nil)
		if resp.StatusCode != http.StatusOK || string(body) != "old" {
			t.Errorf("chunked=%v: after a cut-off upload GET answers %d %.40q, want the old file", chunked, resp.StatusCode, body)
		}
	}
}

// A full disk answers 507 insufficient_storage, not 500.
func TestFullDiskIsInsufficientStorage(t *testing.T) {
	e := newEnv(t, processBackend)
	if !e.rt.Capabilities().Policy.Disk {
		t.Skipf("the process runtime cannot cap disks here: %s", e.rt.Capabilities().Policy.Why["disk"])
	}
	ws := e.createWorkspace(e.alice, map[string]any{"limits": map[string]any{"disk": "2MiB"}})
	path := "/workspaces/" + ws.ID + "/files/f"
	e.json(e.alice, "PUT", path, "old", http.StatusCreated, nil)
	e.wantError(e.alice, "PUT", path, bytes.Repeat([]byte{0}, 4<<20), http.StatusInsufficientStorage, "insufficient_storage")
	resp, body := e.do(e.alice, "GET", path, nil)
	if resp.StatusCode != http.StatusOK || string(body) != "old" {
		t.Errorf("after the failed upload GET answers %d %.40q, want the old file", resp.StatusCode, body)
	}
}
