package engineguard

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corralhq/corral/errdefs"
)

// engine serves h on a unix socket, as an engine does, and returns a
// client for it through Transport with the given deadline.
func engine(t *testing.T, timeout time.Duration, h http.HandlerFunc) (*http.Client, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "engine.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	base := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}
	t.Cleanup(base.CloseIdleConnections)
	return &http.Client{Transport: Transport(base, "test", timeout)}, sock
}

func wantUnavailable(t *testing.T, err error, sock string) {
	t.Helper()
	if !errors.Is(err, errdefs.ErrUnavailable) || errdefs.Code(err) != Code {
		t.Fatalf("got %v (code %q), want %s", err, errdefs.Code(err), Code)
	}
	var e *errdefs.Error
	if !errors.As(err, &e) || (sock != "" && strings.Contains(e.Message, sock)) || strings.Contains(e.Message, "http://") {
		t.Fatalf("public message %q shows the engine's address", e.Message)
	}
}

func TestUnansweredCallIsUnavailable(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	c, sock := engine(t, 200*time.Millisecond, func(w http.ResponseWriter, r *http.Request) {
		<-release
	})
	_, err := c.Get("http://d/containers/json")
	wantUnavailable(t, err, sock)
}

func TestStalledResponseBodyIsUnavailable(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	c, sock := engine(t, 200*time.Millisecond, func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("part"))
		w.(http.Flusher).Flush()
		<-release
	})
	resp, err := c.Get("http://d/archive")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, err = io.ReadAll(resp.Body)
	wantUnavailable(t, err, sock)
}

// A stream that keeps coming, and a request body its producer is slow to
// write, run longer than the deadline: liveness bounds a call, not time.
func TestProgressingCallsOutliveTheDeadline(t *testing.T) {
	const timeout = time.Second
	c, _ := engine(t, timeout, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		for i := 0; i < 30; i++ {
			w.Write([]byte("x"))
			w.(http.Flusher).Flush()
			time.Sleep(timeout / 20)
		}
	})
	resp, err := c.Get("http://d/pull")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || len(b) != 30 {
		t.Fatalf("stream: %d bytes, %v", len(b), err)
	}
	pr, pw := io.Pipe()
	go func() {
		time.Sleep(timeout + timeout/2) // the driver's side is slow, not the engine
		pw.Write([]byte("data"))
		pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPut, "http://d/archive", pr)
	resp, err = c.Do(req)
	if err != nil {
		t.Fatalf("slow upload: %v", err)
	}
	resp.Body.Close()
}

func TestCallUndoesLateSuccess(t *testing.T) {
	release := make(chan struct{})
	undone := make(chan int, 1)
	_, err := Call(context.Background(), "test", 100*time.Millisecond, func(ctx context.Context) (int, error) {
		<-release
		return 42, nil
	}, func(v int) { undone <- v })
	wantUnavailable(t, err, "")
	close(release)
	if v := <-undone; v != 42 {
		t.Fatalf("undo got %d", v)
	}
}
