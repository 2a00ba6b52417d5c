// Package runtimetest is the conformance suite that every runtime driver
// runs against the real engine: one body of tests, so that a workspace
// behaves the same whichever driver runs it.
//
// A driver's test calls Run with an opened Runtime:
//
//	func TestConformance(t *testing.T) {
//		rt := openDriver(t)
//		runtimetest.Run(t, rt, runtimetest.Options{Image: enginetest.TestImage})
//	}
//
// The suite only uses commands that busybox provides (sh, cat, echo, sleep,
// ls, ps, stty, wc, head, dd, find, kill, mkdir, pwd, test), so it passes in a
// busybox-static image as well as on a Debian host.
package runtimetest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
)

// Options adapts the suite to a driver.
type Options struct {
	// Image is the image workspaces are created from; container drivers
	// need it, the process driver ignores it.
	Image string
	// Network is the network mode of the suite's workspaces; "" means
	// policy.NetworkNone, which every driver is expected to support.
	Network policy.Mode
	// Spec, if set, adjusts every workspace spec before Create (labels,
	// limits a driver wants exercised...).
	Spec func(*runtime.Spec)
}

// Run runs the conformance suite against rt as subtests of t. Every
// workspace it creates has a unique ID starting with "ws_rt_" and is removed
// when its subtest ends.
func Run(t *testing.T, rt runtime.Runtime, opts Options) {
	s := &suite{rt: rt, opts: opts}
	tests := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"Lifecycle", s.testLifecycle},
		{"CreateExisting", s.testCreateExisting},
		{"Idempotent", s.testIdempotent},
		{"NotFound", s.testNotFound},
		{"ExecStopped", s.testExecStopped},
		{"List", s.testList},
		{"ExitCodes", s.testExitCodes},
		{"Signals", s.testSignals},
		{"Stdin", s.testStdin},
		{"WaitWithStdinOpen", s.testWaitWithStdinOpen},
		{"LargeOutput", s.testLargeOutput},
		{"StdoutStderr", s.testStdoutStderr},
		{"TTY", s.testTTY},
		{"Cwd", s.testCwd},
		{"Env", s.testEnv},
		{"FileRoundTrip", s.testFileRoundTrip},
		{"PathEscape", s.testPathEscape},
		{"CutUpload", s.testCutUpload},
		{"PathErrors", s.testPathErrors},
		{"PersistAcrossStop", s.testPersistAcrossStop},
		{"TimeoutKillsTree", s.testTimeoutKillsTree},
		{"CancelKills", s.testCancelKills},
		{"NoZombies", s.testNoZombies},
		{"StopKillsEverything", s.testStopKillsEverything},
		{"ConcurrentExecs", s.testConcurrentExecs},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.fn)
	}
}

type suite struct {
	rt   runtime.Runtime
	opts Options
}

// wait is how long the suite waits for something that should happen at
// once before it declares the driver broken. It bounds hangs; it is never a
// speed assertion.
const wait = 30 * time.Second

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// token returns a number that marks a test's sleep commands, so that the
// suite can look for them in /proc even when it sees other processes.
func token() string {
	n, err := rand.Int(rand.Reader, big.NewInt(800000))
	if err != nil {
		panic(err)
	}
	return fmt.Sprint(100000 + n.Int64())
}

func (s *suite) spec() runtime.Spec {
	mode := s.opts.Network
	if mode == "" {
		mode = policy.NetworkNone
	}
	sp := runtime.Spec{
		ID:     "ws_rt_" + randHex(6),
		Image:  s.opts.Image,
		Env:    map[string]string{"CORRAL_SPEC_ENV": "from-spec", "CORRAL_OVERRIDE": "spec"},
		Policy: policy.Policy{Network: policy.Network{Mode: mode}},
		Labels: map[string]string{"test": "runtimetest"},
	}
	if s.opts.Spec != nil {
		s.opts.Spec(&sp)
	}
	return sp
}

// create creates a workspace, removed when t ends, and leaves it stopped.
func (s *suite) create(t *testing.T) string {
	t.Helper()
	sp := s.spec()
	ctx := ctxT(t)
	if err := s.rt.Create(ctx, sp); err != nil {
		t.Fatalf("Create(%s): %v", sp.ID, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.rt.Remove(ctx, sp.ID); err != nil {
			t.Errorf("cleanup: Remove(%s): %v", sp.ID, err)
		}
	})
	return sp.ID
}

// running creates and starts a workspace, removed when t ends.
func (s *suite) running(t *testing.T) string {
	t.Helper()
	id := s.create(t)
	if err := s.rt.Start(ctxT(t), id); err != nil {
		t.Fatalf("Start(%s): %v", id, err)
	}
	return id
}

type result struct {
	runtime.ExitResult
	Stdout, Stderr string
}

// run runs argv to completion and fails t if Exec or Wait fails.
func (s *suite) run(t *testing.T, id string, spec runtime.ExecSpec) result {
	t.Helper()
	var out, errb syncBuffer
	spec.Stdout, spec.Stderr = &out, &errb
	res, err := runtime.Run(ctxT(t), s.rt, id, spec)
	if err != nil {
		t.Fatalf("exec %q in %s: %v", spec.Argv, id, err)
	}
	return result{res, out.String(), errb.String()}
}

func (s *suite) sh(t *testing.T, id, script string) result {
	t.Helper()
	return s.run(t, id, runtime.ExecSpec{Argv: []string{"sh", "-c", script}})
}

// mustSh runs script and fails t unless it exits 0.
func (s *suite) mustSh(t *testing.T, id, script string) string {
	t.Helper()
	r := s.sh(t, id, script)
	if r.ExitCode != 0 {
		t.Fatalf("sh -c %q: exit %d (signal %q)\nstdout: %s\nstderr: %s", script, r.ExitCode, r.Signal, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

func wantClass(t *testing.T, what string, err, class error) {
	t.Helper()
	if !errors.Is(err, class) {
		t.Errorf("%s: got error %v, want one that is %v", what, err, class)
	}
}

func wantEscape(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, errdefs.ErrInvalidArgument) || errdefs.Code(err) != "path_escape" {
		t.Errorf("%s: got error %v (code %q), want ErrInvalidArgument coded path_escape", what, err, errdefs.Code(err))
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls until b holds sub, failing t if it never does.
func waitFor(t *testing.T, b *syncBuffer, sub string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !strings.Contains(b.String(), sub) {
		if time.Now().After(deadline) {
			t.Fatalf("output never contained %q; got %q", sub, b.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// countWriter counts the bytes written to it and checks they are all zero.
type countWriter struct {
	mu      sync.Mutex
	n       int64
	nonZero bool
}

func (c *countWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n += int64(len(p))
	for _, b := range p {
		if b != 0 {
			c.nonZero = true
			break
		}
	}
	return len(p), nil
}

// procsWith returns the command lines, as seen from inside workspace id,
// of the processes whose command line contains tok.
func (s *suite) procsWith(t *testing.T, id, tok string) []string {
	t.Helper()
	// cat prints what it can and complains about processes that vanished.
	r := s.run(t, id, runtime.ExecSpec{Argv: []string{"sh", "-c", "for f in /proc/[0-9]*/cmdline; do cat $f; echo; done 2>/dev/null; true"}})
	var found []string
	for _, line := range strings.Split(r.Stdout, "\n") {
		// tok must be a whole argument: where the host's processes are
		// visible (process runtime without namespaces), others' command
		// lines hold long numbers that contain it.
		args := strings.Split(strings.TrimRight(line, "\x00"), "\x00")
		if slices.Contains(args, tok) && !strings.Contains(line, "/proc/") {
			found = append(found, strings.Join(args, " "))
		}
	}
	return found
}

// waitGone polls until no process with tok in its command line is left in
// workspace id. Killing is allowed to take a moment; it is not allowed to
// never happen.
func (s *suite) waitGone(t *testing.T, id, tok string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		left := s.procsWith(t, id, tok)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes left behind: %q", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// zombies returns the zombie processes visible inside workspace id, as lines
// of /proc/PID/stat.
func (s *suite) zombies(t *testing.T, id string) []string {
	t.Helper()
	r := s.run(t, id, runtime.ExecSpec{Argv: []string{"sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null; true"}})
	var z []string
	for _, line := range strings.Split(r.Stdout, "\n") {
		i := strings.LastIndexByte(line, ')')
		if i < 0 || i+3 > len(line) {
			continue
		}
		if line[i+2] == 'Z' {
			z = append(z, line)
		}
	}
	return z
}

// tarEntry describes one entry of a tar stream the suite builds or reads.
type tarEntry struct {
	Name     string
	Type     byte
	Mode     int64
	Body     string
	Linkname string
}

func makeTar(t *testing.T, entries []tarEntry) io.Reader {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Typeflag: e.Type, Mode: e.Mode, Linkname: e.Linkname, ModTime: time.Now()}
		if e.Type == tar.TypeReg {
			h.Size = int64(len(e.Body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %s: %v", e.Name, err)
		}
		if e.Type == tar.TypeReg {
			if _, err := tw.Write([]byte(e.Body)); err != nil {
				t.Fatalf("tar body %s: %v", e.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatalf("tar close: %v", err)
	}
	return &buf
}

func readTar(t *testing.T, rc io.ReadCloser) map[string]tarEntry {
	t.Helper()
	defer rc.Close()
	out := map[string]tarEntry{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read tar entry %s: %v", h.Name, err)
		}
		out[h.Name] = tarEntry{Name: h.Name, Type: h.Typeflag, Mode: h.Mode & 0o7777, Body: string(body), Linkname: h.Linkname}
	}
}
