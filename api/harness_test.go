package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/corralhq/corral/api"
	"github.com/corralhq/corral/internal/enginetest"
	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/store"
	"github.com/corralhq/corral/workspace"

	_ "github.com/corralhq/corral/runtime/docker"
	_ "github.com/corralhq/corral/runtime/podman"
	_ "github.com/corralhq/corral/runtime/process"
)

// backend is a runtime the HTTP scenarios run against.
type backend struct {
	name    string // test name
	runtime string // driver name
	image   string
	options func(t testing.TB) map[string]string // skips or fails if unavailable
}

var processBackend = backend{name: "process", runtime: "process", options: func(testing.TB) map[string]string { return nil }}

// env is a running server on a real SQLite file and a real runtime, with
// two users, alice and bob.
type env struct {
	t        testing.TB
	dataDir  string
	url      string
	db       *store.DB
	mgr      *workspace.Manager
	rt       runtime.Runtime
	alice    string // API keys
	bob      string
	be       backend
	serverID string
	close    func()
}

func newEnv(t testing.TB, be backend) *env {
	t.Helper()
	return openEnv(t, be, t.TempDir(), "srv_test_"+store.NewID("x")[2:])
}

// openEnv starts a server on dataDir; a second call on the same dataDir and
// serverID is a restart.
func openEnv(t testing.TB, be backend, dataDir, serverID string) *env {
	t.Helper()
	ctx := context.Background()
	opts := be.options(t)
	db, err := store.Open(ctx, filepath.Join(dataDir, "corral.db"))
	if err != nil {
		t.Fatal(err)
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "test", Level: hclog.Warn, Output: io.Discard})
	if testing.Verbose() {
		log.SetLevel(hclog.Info)
	}
	rt, err := runtime.Open(be.runtime, runtime.Config{
		DataDir: filepath.Join(dataDir, "runtime"), ServerID: serverID, InitPath: testbin.Corral(t), Options: opts, Logger: log,
	})
	if err != nil {
		db.Close()
		t.Fatal(err)
	}
	pol := policy.DefaultConfig()
	pol.Max.Upload = 4 << 20
	mgr := workspace.New(workspace.Config{DB: db, Runtime: rt, Policy: pol, Logger: log, DefaultImage: be.image})
	if err := mgr.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.New(api.Config{DB: db, Workspaces: mgr, Logger: log}).Handler())
	e := &env{t: t, dataDir: dataDir, url: srv.URL, db: db, mgr: mgr, rt: rt, be: be, serverID: serverID}
	e.alice = e.key("alice")
	e.bob = e.key("bob")
	closed := false
	e.close = func() {
		if closed {
			return
		}
		closed = true
		srv.Close()
		mgr.Close()
		rt.Close()
		db.Close()
	}
	t.Cleanup(func() {
		if !closed {
			// Delete what the test left so no sandbox outlives it.
			rows, _ := db.AllWorkspaces(ctx)
			for _, r := range rows {
				_ = mgr.Delete(ctx, r.UserID, r.ID)
			}
		}
		e.close()
	})
	return e
}

// on returns e reporting to t, for use inside a subtest.
func (e *env) on(t testing.TB) *env {
	c := *e
	c.t = t
	return &c
}

func (e *env) key(user string) string {
	e.t.Helper()
	ctx := context.Background()
	u, err := e.db.EnsureUser(ctx, user)
	if err != nil {
		e.t.Fatal(err)
	}
	secret, _, err := e.db.CreateKey(ctx, u.ID)
	if err != nil {
		e.t.Fatal(err)
	}
	return secret
}

// do sends a request with key (none if empty) and returns the response
// with its body read.
func (e *env) do(key, method, path string, body any) (*http.Response, []byte) {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = bytes.NewReader([]byte(b))
	case io.Reader:
		rd = b
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp, data
}

// json sends a request and decodes the answer into out, failing unless the
// status is want.
func (e *env) json(key, method, path string, body any, want int, out any) {
	e.t.Helper()
	resp, data := e.do(key, method, path, body)
	if resp.StatusCode != want {
		e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, want, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			e.t.Fatalf("%s %s: decode %s: %v", method, path, data, err)
		}
	}
}

// wantError checks an error answer's status and stable code.
func (e *env) wantError(key, method, path string, body any, status int, code string) {
	e.t.Helper()
	resp, data := e.do(key, method, path, body)
	var eb api.ErrorBody
	_ = json.Unmarshal(data, &eb)
	if resp.StatusCode != status || eb.Error.Code != code {
		e.t.Fatalf("%s %s: got %d %q (%s), want %d %q", method, path, resp.StatusCode, eb.Error.Code, data, status, code)
	}
	if eb.Error.Message == "" {
		e.t.Fatalf("%s %s: error without a message: %s", method, path, data)
	}
}

func (e *env) createWorkspace(key string, spec map[string]any) workspace.Workspace {
	e.t.Helper()
	if spec == nil {
		spec = map[string]any{}
	}
	if e.be.image != "" {
		if _, ok := spec["image"]; !ok {
			spec["image"] = e.be.image
		}
	}
	var ws workspace.Workspace
	e.json(key, "POST", "/workspaces", spec, http.StatusCreated, &ws)
	return ws
}

func (e *env) execute(key, id string, req map[string]any) workspace.ExecuteResult {
	e.t.Helper()
	var res workspace.ExecuteResult
	e.json(key, "POST", "/workspaces/"+id+"/execute", req, http.StatusOK, &res)
	return res
}

// engineBackends are the container runtimes. Their options skip the test
// when the engine is unreachable, or fail it when CORRAL_REQUIRE_ENGINES is
// set.
var engineBackends = []backend{
	{name: "docker", runtime: "docker", image: enginetest.TestImage, options: enginetest.Docker},
	{name: "podman", runtime: "podman", image: enginetest.TestImage, options: func(t testing.TB) map[string]string { return enginetest.Podman(t, false) }},
	{name: "podman-rootless", runtime: "podman", image: enginetest.TestImage, options: func(t testing.TB) map[string]string { return enginetest.Podman(t, true) }},
}
