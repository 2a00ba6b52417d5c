package api_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/corralhq/corral/api"
	"github.com/corralhq/corral/workspace"
)

// scenario is the user's whole path through the API, the same on every
// runtime: create, execute, stream an interactive shell, move files, delete.
func scenario(t *testing.T, be backend) {
	e := newEnv(t, be)
	ws := e.createWorkspace(e.alice, map[string]any{"env": map[string]string{"GREETING": "hello"}})
	if ws.State != "running" || ws.Runtime != be.runtime || !strings.HasPrefix(ws.ID, "ws_") {
		t.Fatalf("created workspace = %+v", ws)
	}
	base := "/workspaces/" + ws.ID

	t.Run("execute", func(t *testing.T) {
		e := e.on(t)
		res := e.execute(e.alice, ws.ID, map[string]any{"command": "echo hi; echo $GREETING >&2; exit 3"})
		if res.ExitCode != 3 || res.Stdout != "hi\n" || res.Stderr != "hello\n" || res.TimedOut {
			t.Fatalf("execute = %+v", res)
		}
		res = e.execute(e.alice, ws.ID, map[string]any{"argv": []string{"cat"}, "stdin": "from stdin"})
		if res.ExitCode != 0 || res.Stdout != "from stdin" {
			t.Fatalf("stdin: %+v", res)
		}
		res = e.execute(e.alice, ws.ID, map[string]any{"command": "sleep 30", "timeout": "500ms"})
		if !res.TimedOut {
			t.Fatalf("timeout: %+v", res)
		}
		res = e.execute(e.alice, ws.ID, map[string]any{"command": "mkdir -p sub && cd sub && pwd", "env": map[string]string{"X": "1"}})
		if res.ExitCode != 0 || !strings.HasSuffix(strings.TrimSpace(res.Stdout), "/sub") {
			t.Fatalf("cwd: %+v", res)
		}
		res = e.execute(e.alice, ws.ID, map[string]any{"argv": []string{"pwd"}, "cwd": "sub"})
		if !strings.HasSuffix(strings.TrimSpace(res.Stdout), "/sub") {
			t.Fatalf("cwd field: %+v", res)
		}
	})

	t.Run("stream", func(t *testing.T) {
		e := e.on(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c := dialExec(t, ctx, e.url+base+"/exec", e.alice)
		send(t, ctx, c, map[string]any{"type": "start", "argv": []string{"sh"}})
		send(t, ctx, c, map[string]any{"type": "stdin", "data": []byte("echo interactive $((6*7))\n")})
		out := readUntil(t, ctx, c, "interactive 42")
		if !strings.Contains(out, "interactive 42") {
			t.Fatalf("stdout = %q", out)
		}
		send(t, ctx, c, map[string]any{"type": "stdin", "data": []byte("exit 5\n")})
		f := readExit(t, ctx, c)
		if f.ExitResult == nil || f.ExitCode != 5 {
			t.Fatalf("exit frame = %+v", f)
		}
	})

	t.Run("files", func(t *testing.T) {
		e := e.on(t)
		payload := "line one\nline two\n"
		var info workspace.FileInfo
		e.json(e.alice, "PUT", base+"/files/docs/notes.txt", payload, http.StatusCreated, &info)
		if info.Type != "file" || info.Size != int64(len(payload)) {
			t.Fatalf("put = %+v", info)
		}
		resp, body := e.do(e.alice, "GET", base+"/files/docs/notes.txt", nil)
		if resp.StatusCode != 200 || string(body) != payload {
			t.Fatalf("get = %d %q", resp.StatusCode, body)
		}
		res := e.execute(e.alice, ws.ID, map[string]any{"command": "cat docs/notes.txt | wc -l"})
		if strings.TrimSpace(res.Stdout) != "2" {
			t.Fatalf("file not visible to commands: %+v", res)
		}
		var list struct {
			Entries []workspace.FileInfo `json:"entries"`
		}
		e.json(e.alice, "GET", base+"/files/docs", nil, http.StatusOK, &list)
		if len(list.Entries) != 1 || list.Entries[0].Name != "notes.txt" {
			t.Fatalf("list = %+v", list)
		}
		// Archive out and back in under another name.
		resp, tarball := e.do(e.alice, "GET", base+"/archive?path=docs", nil)
		if resp.StatusCode != 200 || !tarHas(t, tarball, "docs/notes.txt") {
			t.Fatalf("archive: %d", resp.StatusCode)
		}
		resp, body = e.do(e.alice, "PUT", base+"/archive?path=copy", tarball)
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("archive in: %d %s", resp.StatusCode, body)
		}
		resp, body = e.do(e.alice, "GET", base+"/files/copy/docs/notes.txt", nil)
		if string(body) != payload {
			t.Fatalf("archive round trip: %d %q", resp.StatusCode, body)
		}
		// A file where a directory is needed is refused alike on every runtime.
		e.wantError(e.alice, "PUT", base+"/files/docs/notes.txt/child", "x", http.StatusBadRequest, "not_a_directory")
		e.wantError(e.alice, "GET", base+"/files/docs/notes.txt/child", nil, http.StatusNotFound, "not_found")

		resp, _ = e.do(e.alice, "DELETE", base+"/files/docs", nil)
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("delete: %d", resp.StatusCode)
		}
		e.wantError(e.alice, "GET", base+"/files/docs/notes.txt", nil, http.StatusNotFound, "not_found")
	})

	if be.image != "" {
		t.Run("bad image", func(t *testing.T) {
			e := e.on(t)
			e.wantError(e.alice, "POST", "/workspaces", map[string]any{"image": "Not An Image!"}, http.StatusBadRequest, "image_not_found")
		})
	}

	t.Run("delete", func(t *testing.T) {
		e := e.on(t)
		resp, _ := e.do(e.alice, "DELETE", base, nil)
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("delete: %d", resp.StatusCode)
		}
		e.wantError(e.alice, "GET", base, nil, http.StatusNotFound, "not_found")
		list, err := e.rt.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range list {
			if s.ID == ws.ID {
				t.Fatalf("sandbox %s still exists after delete: %+v", ws.ID, s)
			}
		}
	})
}

func tarHas(t *testing.T, data []byte, name string) bool {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return false
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		if strings.TrimPrefix(h.Name, "./") == name {
			return true
		}
	}
}

func dialExec(t *testing.T, ctx context.Context, url, key string) *websocket.Conn {
	t.Helper()
	h := http.Header{}
	if key != "" {
		h.Set("Authorization", "Bearer "+key)
	}
	c, resp, err := websocket.Dial(ctx, strings.Replace(url, "http://", "ws://", 1), &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", url, err, status)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func send(t *testing.T, ctx context.Context, c *websocket.Conn, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	if err := c.Write(ctx, websocket.MessageText, b); err != nil {
		t.Fatalf("send: %v", err)
	}
}

func readFrame(t *testing.T, ctx context.Context, c *websocket.Conn) api.ExecServerFrame {
	t.Helper()
	_, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read frame: %v", err)
	}
	var f api.ExecServerFrame
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("decode frame %s: %v", b, err)
	}
	if f.Type == "error" {
		t.Fatalf("error frame: %+v", f.Error)
	}
	return f
}

// readUntil collects stdout until it contains want.
func readUntil(t *testing.T, ctx context.Context, c *websocket.Conn, want string) string {
	t.Helper()
	var out strings.Builder
	for !strings.Contains(out.String(), want) {
		f := readFrame(t, ctx, c)
		switch f.Type {
		case "stdout", "stderr":
			out.Write(f.Data)
		case "exit":
			t.Fatalf("exited before %q: %+v; output %q", want, f.ExitResult, out.String())
		}
	}
	return out.String()
}

func readExit(t *testing.T, ctx context.Context, c *websocket.Conn) api.ExecServerFrame {
	t.Helper()
	for {
		f := readFrame(t, ctx, c)
		if f.Type == "exit" {
			return f
		}
	}
}
