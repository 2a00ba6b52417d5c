package api_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"testing"
)

// BenchmarkExecuteTrue measures one `execute` of /bin/true through the whole
// API (auth, store, workspace manager, runtime), next to its baseline, a bare
// net/http handler forking /bin/true, in the same run over the same client.
// The ratio of the two ns/op is Corral's overhead; our bar is 1.3x.
func BenchmarkExecuteTrue(b *testing.B) {
	b.Run("baseline=bare-handler", func(b *testing.B) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			err := exec.Command("/bin/true").Run()
			code := 0
			if err != nil {
				code = 1
			}
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]any{"exit_code": code, "stdout": "", "stderr": ""})
		}))
		defer srv.Close()
		benchPost(b, srv.URL+"/execute", "")
	})
	b.Run("corral=process", func(b *testing.B) {
		e := newEnv(b, processBackend)
		ws := e.createWorkspace(e.alice, nil)
		benchPost(b, e.url+"/workspaces/"+ws.ID+"/execute", e.alice)
	})
}

// BenchmarkEngineExecuteTrue measures one `execute` of /bin/true through
// Corral's API on each container engine. Each driver package benchmarks the
// same exec made straight to the engine's API (BenchmarkEngineExecTrue), the
// baseline for these figures.
func BenchmarkEngineExecuteTrue(b *testing.B) {
	for _, be := range engineBackends {
		b.Run("corral="+be.name, func(b *testing.B) {
			e := newEnv(b, be)
			ws := e.createWorkspace(e.alice, nil)
			benchPost(b, e.url+"/workspaces/"+ws.ID+"/execute", e.alice)
		})
	}
}

func benchPost(b *testing.B, url, key string) {
	body := []byte(`{"argv":["/bin/true"]}`)
	client := &http.Client{}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		var res struct {
			ExitCode int `json:"exit_code"`
		}
		err = json.NewDecoder(resp.Body).Decode(&res)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || res.ExitCode != 0 {
			b.Fatalf("status %d, exit %d, %v", resp.StatusCode, res.ExitCode, err)
		}
	}
}
