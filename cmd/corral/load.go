package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/coder/websocket"
)

// The operations of one round of the load workload, in order.
var loadOps = []string{"create", "execute", "upload", "download", "ws_exec", "conversation", "delete"}

type loadSettings struct {
	url       string
	keys      []string
	users     int
	duration  time.Duration
	serverPID int
	jsonOut   string
	fileSize  int
	sample    time.Duration
}

// load runs `corral load`: N concurrent users each repeat a round (create
// a workspace, execute, upload, download, an interactive exec over the
// WebSocket, a conversation followed on its stream if the server has an
// LLM, delete) until the duration is over, then report throughput,
// latency percentiles per operation, errors by code and the server's
// memory and descriptors over time. It works with every runtime: it sends
// no image, so the server's default is used. It exits non-zero if any
// operation failed or a workspace it made is left.
func load(args []string) error {
	var c loadSettings
	var keys string
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.StringVar(&c.url, "url", env("CORRAL_URL", "http://127.0.0.1:8080"), "server URL (env CORRAL_URL)")
	fs.StringVar(&keys, "keys", env("CORRAL_API_KEY", ""), "API keys, comma-separated; user i uses key i mod n (env CORRAL_API_KEY)")
	fs.IntVar(&c.users, "users", 4, "concurrent users")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "how long to run; rounds under way finish")
	fs.IntVar(&c.serverPID, "server-pid", 0, "PID of a local server: sample its RSS and open descriptors from /proc (else from /metrics if it exports them)")
	fs.StringVar(&c.jsonOut, "json", "", "also write the report as JSON to this file")
	fs.IntVar(&c.fileSize, "file-size", 64<<10, "bytes per upload")
	fs.DurationVar(&c.sample, "sample", time.Second, "how often to sample the server's RSS and descriptors")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, k := range strings.Split(keys, ",") {
		if k = strings.TrimSpace(k); k != "" {
			c.keys = append(c.keys, k)
		}
	}
	if len(c.keys) == 0 || c.users < 1 || c.duration <= 0 {
		return errors.New("load: want --keys (or CORRAL_API_KEY), --users >= 1 and --duration > 0")
	}
	c.url = strings.TrimRight(c.url, "/")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := runLoad(ctx, c)
	if err != nil {
		return err
	}
	rep.write(os.Stdout)
	if c.jsonOut != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(c.jsonOut, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("load: write report: %w", err)
		}
	}
	if n := rep.errorCount(); n > 0 || rep.Leftover > 0 {
		return fmt.Errorf("load: %d operations failed, %d workspaces left", n, rep.Leftover)
	}
	return nil
}

// loadReport is what a run measured.
type loadReport struct {
	URL          string             `json:"url"`
	Users        int                `json:"users"`
	Seconds      float64            `json:"seconds"`
	Rounds       int                `json:"rounds"`
	Operations   int                `json:"operations"`
	OpsPerSecond float64            `json:"ops_per_second"`
	Ops          map[string]opStats `json:"ops"`
	// Errors counts failures as "op: code" (the API's error code, or
	// "status_N", "transport", "protocol").
	Errors       map[string]int `json:"errors"`
	Skipped      []string       `json:"skipped,omitempty"` // operations not run, with why
	Server       []serverSample `json:"server,omitempty"`
	ServerSource string         `json:"server_source,omitempty"`
	Leftover     int            `json:"leftover_workspaces"`
}

type opStats struct {
	Count int     `json:"count"`
	P50ms float64 `json:"p50_ms"`
	P99ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
}

type serverSample struct {
	Seconds float64 `json:"t"`
	RSS     int64   `json:"rss_bytes"`
	FDs     int     `json:"fds"`
}

func (r *loadReport) errorCount() int {
	n := 0
	for _, v := range r.Errors {
		n += v
	}
	return n
}

func (r *loadReport) write(w io.Writer) {
	fmt.Fprintf(w, "corral load: %s, %d users, %.1fs, %d rounds, %d operations, %.1f ops/s\n\n",
		r.URL, r.Users, r.Seconds, r.Rounds, r.Operations, r.OpsPerSecond)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "operation\tcount\tp50 ms\tp99 ms\tmax ms\t")
	for _, op := range loadOps {
		if s, ok := r.Ops[op]; ok {
			fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.1f\t%.1f\t\n", op, s.Count, s.P50ms, s.P99ms, s.MaxMs)
		}
	}
	tw.Flush()
	for _, s := range r.Skipped {
		fmt.Fprintf(w, "skipped: %s\n", s)
	}
	fmt.Fprintf(w, "\nerrors: %d", r.errorCount())
	names := make([]string, 0, len(r.Errors))
	for k := range r.Errors {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(w, "\n  %s: %d", k, r.Errors[k])
	}
	fmt.Fprintf(w, "\nworkspaces left: %d\n", r.Leftover)
	if len(r.Server) > 0 {
		fmt.Fprintf(w, "\nserver (%s):\n   t(s)  RSS(MiB)  fds\n", r.ServerSource)
		for _, s := range r.Server {
			fmt.Fprintf(w, "  %5.1f  %8.1f  %3d\n", s.Seconds, float64(s.RSS)/(1<<20), s.FDs)
		}
	}
}

// loadClient is one user's view of the server.
type loadClient struct {
	url, key string
	http     *http.Client
}

// apiError is a failed call, classified by the API's error code.
type apiError struct{ code, msg string }

func (e *apiError) Error() string { return e.code + ": " + e.msg }

func errCode(err error) string {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.code
	}
	return "transport"
}

// call sends a request and decodes a JSON answer into out unless the status
// is not want.
func (c *loadClient) call(ctx context.Context, method, path string, body io.Reader, want int, out any) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.url+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != want {
		var eb struct {
			Error struct{ Code, Message string }
		}
		if json.Unmarshal(data, &eb) == nil && eb.Error.Code != "" {
			return nil, &apiError{eb.Error.Code, eb.Error.Message}
		}
		return nil, &apiError{"status_" + strconv.Itoa(resp.StatusCode), string(data)}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return nil, &apiError{"protocol", err.Error()}
		}
	}
	return data, nil
}

func (c *loadClient) ws(path string) string {
	return "ws" + strings.TrimPrefix(c.url, "http") + path
}

// recorder collects the measurements of all users.
type recorder struct {
	mu      sync.Mutex
	lat     map[string][]time.Duration
	errs    map[string]int
	rounds  int
	created map[string]string // workspace ID → key, until deleted
}

func (r *recorder) record(op string, d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.errs[op+": "+errCode(err)]++
		return
	}
	r.lat[op] = append(r.lat[op], d)
}

func runLoad(ctx context.Context, c loadSettings) (*loadReport, error) {
	hc := &http.Client{Timeout: 2 * time.Minute}
	rec := &recorder{lat: map[string][]time.Duration{}, errs: map[string]int{}, created: map[string]string{}}
	rep := &loadReport{URL: c.url, Users: c.users}

	// Conversations need an LLM on the server; find out once.
	probe := &loadClient{url: c.url, key: c.keys[0], http: hc}
	withLLM, why, err := probeLLM(ctx, probe)
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	if !withLLM {
		rep.Skipped = append(rep.Skipped, "conversation: "+why)
	}

	sctx, stopSampling := context.WithCancel(ctx)
	samples := make(chan []serverSample, 1)
	start := time.Now()
	go func() { samples <- sampleServer(sctx, c, hc, start, &rep.ServerSource) }()

	deadline := start.Add(c.duration)
	var wg sync.WaitGroup
	for i := 0; i < c.users; i++ {
		cl := &loadClient{url: c.url, key: c.keys[i%len(c.keys)], http: hc}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				round(ctx, cl, rec, c.fileSize, withLLM)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopSampling()
	rep.Server = <-samples

	// Workspaces whose delete failed are deleted now, and counted.
	for id, key := range rec.created {
		cl := &loadClient{url: c.url, key: key, http: hc}
		if _, err := cl.call(context.Background(), "GET", "/workspaces/"+id, nil, http.StatusOK, nil); err == nil {
			rep.Leftover++
			_, _ = cl.call(context.Background(), "DELETE", "/workspaces/"+id, nil, http.StatusNoContent, nil)
		}
	}

	rep.Seconds = elapsed.Seconds()
	rep.Rounds = rec.rounds
	rep.Errors = rec.errs
	rep.Ops = map[string]opStats{}
	for op, ds := range rec.lat {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		rep.Ops[op] = opStats{Count: len(ds), P50ms: ms(percentile(ds, 50)), P99ms: ms(percentile(ds, 99)), MaxMs: ms(ds[len(ds)-1])}
		rep.Operations += len(ds)
	}
	rep.Operations += rep.errorCount()
	rep.OpsPerSecond = float64(rep.Operations) / elapsed.Seconds()
	return rep, nil
}

// percentile is the nearest-rank percentile of sorted ds.
func percentile(ds []time.Duration, p int) time.Duration {
	i := (len(ds)*p + 99) / 100
	if i < 1 {
		i = 1
	}
	return ds[i-1]
}

// probeLLM reports whether the server can run conversations: it creates a
// conversation in a fresh workspace and deletes both again.
func probeLLM(ctx context.Context, c *loadClient) (bool, string, error) {
	var ws struct{ ID string }
	if _, err := c.call(ctx, "POST", "/workspaces", strings.NewReader(`{}`), http.StatusCreated, &ws); err != nil {
		return false, "", fmt.Errorf("create a workspace: %w", err)
	}
	defer c.call(context.WithoutCancel(ctx), "DELETE", "/workspaces/"+ws.ID, nil, http.StatusNoContent, nil)
	var cv struct{ ID string }
	_, err := c.call(ctx, "POST", "/conversations", strings.NewReader(`{"workspace_id":"`+ws.ID+`"}`), http.StatusCreated, &cv)
	switch code := errCode(err); {
	case err == nil:
		return true, "", nil
	case code == "llm_not_configured" || code == "not_found":
		return false, "the server has no LLM configured (" + code + ")", nil
	default:
		return false, "", fmt.Errorf("probe conversations: %w", err)
	}
}

// round is one user's pass over every operation. A failed create ends the
// round; every later failure is recorded and the round goes on, and the
// workspace is always deleted.
func round(ctx context.Context, c *loadClient, rec *recorder, fileSize int, withLLM bool) {
	op := func(name string, f func() error) bool {
		t := time.Now()
		err := f()
		rec.record(name, time.Since(t), err)
		return err == nil
	}
	var ws struct{ ID string }
	if !op("create", func() error {
		_, err := c.call(ctx, "POST", "/workspaces", strings.NewReader(`{}`), http.StatusCreated, &ws)
		return err
	}) {
		return
	}
	rec.mu.Lock()
	rec.created[ws.ID] = c.key
	rec.mu.Unlock()
	base := "/workspaces/" + ws.ID

	op("execute", func() error {
		var res struct {
			ExitCode int    `json:"exit_code"`
			Stdout   string `json:"stdout"`
		}
		if _, err := c.call(ctx, "POST", base+"/execute", strings.NewReader(`{"command":"echo load"}`), http.StatusOK, &res); err != nil {
			return err
		}
		if res.ExitCode != 0 || res.Stdout != "load\n" {
			return &apiError{"protocol", fmt.Sprintf("execute answered %+v", res)}
		}
		return nil
	})
	content := make([]byte, fileSize)
	rand.Read(content)
	op("upload", func() error {
		_, err := c.call(ctx, "PUT", base+"/files/load/data.bin", bytes.NewReader(content), http.StatusCreated, nil)
		return err
	})
	op("download", func() error {
		got, err := c.call(ctx, "GET", base+"/files/load/data.bin", nil, http.StatusOK, nil)
		if err == nil && !bytes.Equal(got, content) {
			return &apiError{"protocol", fmt.Sprintf("downloaded %d bytes differ from the %d uploaded", len(got), len(content))}
		}
		return err
	})
	op("ws_exec", func() error { return wsExec(ctx, c, ws.ID) })
	if withLLM {
		op("conversation", func() error { return converse(ctx, c, ws.ID) })
	}
	if op("delete", func() error {
		_, err := c.call(context.WithoutCancel(ctx), "DELETE", base, nil, http.StatusNoContent, nil)
		return err
	}) {
		rec.mu.Lock()
		delete(rec.created, ws.ID)
		rec.mu.Unlock()
	}
	rec.mu.Lock()
	rec.rounds++
	rec.mu.Unlock()
}

// wsExec runs cat over the exec socket: stdin in, the same bytes out, exit 0.
func wsExec(ctx context.Context, c *loadClient, id string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, c.ws("/workspaces/"+id+"/exec"), &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + c.key}}})
	if err != nil {
		return err
	}
	defer conn.CloseNow()
	send := func(v any) error {
		b, _ := json.Marshal(v)
		return conn.Write(ctx, websocket.MessageText, b)
	}
	in := []byte("hello over the socket\n")
	if err := send(map[string]any{"type": "start", "argv": []string{"cat"}}); err != nil {
		return err
	}
	if err := send(map[string]any{"type": "stdin", "data": in}); err != nil {
		return err
	}
	if err := send(map[string]any{"type": "close_stdin"}); err != nil {
		return err
	}
	var out []byte
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			return err
		}
		var f struct {
			Type     string `json:"type"`
			Data     []byte `json:"data"`
			ExitCode int    `json:"exit_code"`
			Error    *struct{ Code, Message string }
		}
		if err := json.Unmarshal(data, &f); err != nil {
			return &apiError{"protocol", err.Error()}
		}
		switch f.Type {
		case "stdout":
			out = append(out, f.Data...)
		case "error":
			return &apiError{f.Error.Code, f.Error.Message}
		case "exit":
			if f.ExitCode != 0 || !bytes.Equal(out, in) {
				return &apiError{"protocol", fmt.Sprintf("cat exited %d with %q", f.ExitCode, out)}
			}
			conn.Close(websocket.StatusNormalClosure, "")
			return nil
		}
	}
}

// converse creates a conversation, follows its stream and sends a message,
// and succeeds when the stream shows the agent's run ending "finished" or
// "idle" with events in gap-free sequence.
func converse(ctx context.Context, c *loadClient, wsID string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var cv struct{ ID string }
	if _, err := c.call(ctx, "POST", "/conversations", strings.NewReader(`{"workspace_id":"`+wsID+`"}`), http.StatusCreated, &cv); err != nil {
		return err
	}
	conn, _, err := websocket.Dial(ctx, c.ws("/conversations/"+cv.ID+"/stream?after=0"), &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + c.key}}})
	if err != nil {
		return err
	}
	defer conn.CloseNow()
	conn.SetReadLimit(4 << 20)
	if _, err := c.call(ctx, "POST", "/conversations/"+cv.ID+"/messages", strings.NewReader(`{"content":"run a command"}`), http.StatusAccepted, nil); err != nil {
		return err
	}
	var last int64
	running := false
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			return err
		}
		var f struct {
			Type    string          `json:"type"`
			Seq     int64           `json:"seq"`
			Kind    string          `json:"kind"`
			Payload json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal(data, &f); err != nil {
			return &apiError{"protocol", err.Error()}
		}
		if f.Type != "event" {
			continue
		}
		if f.Seq != last+1 {
			return &apiError{"protocol", fmt.Sprintf("event seq %d after %d", f.Seq, last)}
		}
		last = f.Seq
		if f.Kind != "state" {
			continue
		}
		var st struct{ State string }
		_ = json.Unmarshal(f.Payload, &st)
		switch st.State {
		case "running":
			running = true
		case "finished", "idle":
			if running {
				conn.Close(websocket.StatusNormalClosure, "")
				return nil
			}
		case "error", "interrupted":
			return &apiError{"conversation_" + st.State, string(data)}
		}
	}
}

// sampleServer samples the server's RSS and open descriptors every
// c.sample until ctx ends: from /proc/PID if --server-pid is given, else
// from /metrics if the server exports process_resident_memory_bytes.
func sampleServer(ctx context.Context, c loadSettings, hc *http.Client, start time.Time, source *string) []serverSample {
	*source = c.url + "/metrics"
	read := func() (serverSample, bool) { return metricsSample(ctx, hc, c.url) }
	if c.serverPID > 0 {
		*source = "/proc/" + strconv.Itoa(c.serverPID)
		read = func() (serverSample, bool) { return procSample(c.serverPID) }
	}
	var out []serverSample
	t := time.NewTicker(c.sample)
	defer t.Stop()
	for {
		if s, ok := read(); ok {
			s.Seconds = time.Since(start).Seconds()
			out = append(out, s)
		}
		select {
		case <-ctx.Done():
			if s, ok := read(); ok {
				s.Seconds = time.Since(start).Seconds()
				out = append(out, s)
			}
			if len(out) == 0 {
				*source = ""
			}
			return out
		case <-t.C:
		}
	}
}

func procSample(pid int) (serverSample, bool) {
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return serverSample{}, false
	}
	var s serverSample
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			s.RSS = kb << 10
		}
	}
	fds, err := os.ReadDir(filepath.Join(dir, "fd"))
	if err != nil {
		return serverSample{}, false
	}
	s.FDs = len(fds)
	return s, true
}

func metricsSample(ctx context.Context, hc *http.Client, url string) (serverSample, bool) {
	req, _ := http.NewRequestWithContext(ctx, "GET", url+"/metrics", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return serverSample{}, false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var s serverSample
	found := false
	for _, line := range strings.Split(string(body), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "process_resident_memory_bytes":
			s.RSS, found = int64(v), true
		case "process_open_fds":
			s.FDs = int(v)
		}
	}
	return s, found
}
