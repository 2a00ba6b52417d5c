package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sync"

	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/store"
	"github.com/corralhq/corral/workspace"
)

// ExecClientFrame is a frame from the client on the exec socket. Data is
// base64 in JSON.
type ExecClientFrame struct {
	Type string `json:"type"` // auth, start, stdin, close_stdin, resize, signal
	Key  string `json:"key,omitempty"`
	workspace.Command
	TTY    bool   `json:"tty,omitempty"`
	Cols   uint16 `json:"cols,omitempty"`
	Rows   uint16 `json:"rows,omitempty"`
	Data   []byte `json:"data,omitempty"`
	Signal string `json:"signal,omitempty"`
}

// ExecServerFrame is a frame from the server on the exec socket.
type ExecServerFrame struct {
	Type string `json:"type"` // started, stdout, stderr, exit, error
	Data []byte `json:"data,omitempty"`
	*runtime.ExitResult
	Error *ErrorDetail `json:"error,omitempty"`
}

// execSocket runs one interactive command per connection: the client sends
// start, then stdin/close_stdin/resize/signal frames; the server streams
// stdout/stderr frames and ends with an exit frame. The command is killed
// when the socket closes.
func (s *Server) execSocket(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	conn, user := s.acceptSocket(w, r, func(u store.User) error {
		_, err := s.workspaces.Get(r.Context(), u.ID, id)
		return err
	})
	if conn == nil {
		return
	}
	defer conn.CloseNow()
	conn.SetReadLimit(1 << 20)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	go heartbeat(ctx, conn, cancel)

	send := func(f ExecServerFrame) error {
		b, err := json.Marshal(f)
		if err != nil {
			return err
		}
		return conn.Write(ctx, websocket.MessageText, b)
	}
	fail := func(err error) { s.failSocket(r, conn, err) }

	var start ExecClientFrame
	if err := readFrame(ctx, conn, &start); err != nil || start.Type != "start" {
		fail(errdefs.Invalid("invalid_frame", "the first frame must be {\"type\":\"start\", ...}"))
		return
	}
	spec, err := start.Command.ExecSpec()
	if err != nil {
		fail(err)
		return
	}
	stdin, stdinW := io.Pipe()
	defer stdinW.Close()
	spec.Stdin = stdin
	spec.TTY = start.TTY
	spec.Size = runtime.WindowSize{Cols: start.Cols, Rows: start.Rows}
	// Output waits for "started" to be sent: a fast command writes before
	// Exec returns, and clients expect started first.
	started := make(chan struct{})
	spec.Stdout = &frameWriter{kind: "stdout", send: send, started: started}
	spec.Stderr = &frameWriter{kind: "stderr", send: send, started: started}
	proc, err := s.workspaces.Exec(ctx, user.ID, id, spec)
	if err != nil {
		close(started)
		fail(err)
		return
	}
	go func() {
		s.pumpExecInput(ctx, conn, proc, stdinW, fail)
		// The client is gone (or broke the protocol): kill the command.
		cancel()
	}()
	if err := send(ExecServerFrame{Type: "started"}); err != nil {
		cancel()
	}
	close(started)
	res, err := proc.Wait()
	if err != nil {
		fail(err)
		return
	}
	if send(ExecServerFrame{Type: "exit", ExitResult: &res}) == nil {
		conn.Close(websocket.StatusNormalClosure, "exited")
	}
}

// pumpExecInput reads client frames until the socket closes or a frame is
// bad.
func (s *Server) pumpExecInput(ctx context.Context, conn *websocket.Conn, proc runtime.Process, stdin *io.PipeWriter, fail func(error)) {
	// Stdin is written from its own goroutine so that a command that does
	// not read it never blocks resize and signal frames.
	data := make(chan []byte, 64)
	go func() {
		for b := range data {
			if b == nil {
				stdin.Close()
				continue
			}
			if _, err := stdin.Write(b); err != nil {
				for range data {
				}
				return
			}
		}
	}()
	defer close(data)
	for {
		var f ExecClientFrame
		if err := readFrame(ctx, conn, &f); err != nil {
			if ctx.Err() == nil && websocket.CloseStatus(err) == -1 {
				fail(errdefs.Invalid("invalid_frame", "bad frame: %v", err))
			}
			return
		}
		var err error
		switch f.Type {
		case "stdin":
			if len(f.Data) > 0 {
				data <- f.Data
			}
		case "close_stdin":
			data <- nil
		case "resize":
			err = proc.Resize(ctx, runtime.WindowSize{Cols: f.Cols, Rows: f.Rows})
		case "signal":
			var sig runtime.Signal
			if sig, err = runtime.ParseSignal(f.Signal); err == nil {
				err = proc.Signal(ctx, sig)
			}
		default:
			err = errdefs.Invalid("invalid_frame", "unknown frame type %q", f.Type)
		}
		if err != nil {
			fail(err)
			return
		}
	}
}

func readFrame(ctx context.Context, conn *websocket.Conn, v any) error {
	_, b, err := conn.Read(ctx)
	if err != nil {
		return err
	}
	return unmarshalFrame(b, v)
}

// frameWriter sends what a command writes as stdout or stderr frames, once
// started is closed.
type frameWriter struct {
	kind    string
	send    func(ExecServerFrame) error
	started <-chan struct{}
	mu      sync.Mutex
}

func (w *frameWriter) Write(p []byte) (int, error) {
	<-w.started
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.send(ExecServerFrame{Type: w.kind, Data: p}); err != nil {
		return 0, err
	}
	return len(p), nil
}
