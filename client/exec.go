package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/corralhq/corral/api/types"
)

// Cmd is a command to run in a workspace.
type Cmd struct {
	// Command runs through /bin/sh -c; Argv runs as is. Give one.
	Command string
	Argv    []string
	Cwd     string            // relative to the workspace root
	Env     map[string]string // added to the workspace's
	// Timeout kills the command after this long; 0 takes the workspace's.
	Timeout time.Duration

	// Stdin is the command's standard input; nil is empty.
	Stdin io.Reader
	// Stdout and Stderr receive its output. With Run, nil keeps it in the
	// Result instead.
	Stdout, Stderr io.Writer

	// TTY (Start only) runs the command on a pseudo-terminal of Cols x
	// Rows; its output then all comes as stdout.
	TTY        bool
	Cols, Rows uint16
}

func (c Cmd) wire() types.Command {
	return types.Command{Command: c.Command, Argv: c.Argv, Cwd: c.Cwd, Env: c.Env, Timeout: durationOf(c.Timeout)}
}

// Result is how a Run ended.
type Result struct {
	types.ExecuteResult
}

// Run runs a command to completion (POST /workspaces/{id}/execute) and
// returns its exit status. Stdin is read whole first and must be UTF-8 text
// (use Start for binary input). Output the server kept (capped at the
// workspace's output limit; Truncated says if it was cut) is written to
// cmd.Stdout and cmd.Stderr when they are set, else left in the Result.
// A non-zero exit status is not an error. Run is not retried once the
// server may have started the command.
func (c *Client) Run(ctx context.Context, workspaceID string, cmd Cmd) (Result, error) {
	req := types.ExecuteRequest{Command: cmd.wire()}
	if cmd.Stdin != nil {
		b, err := io.ReadAll(cmd.Stdin)
		if err != nil {
			return Result{}, fmt.Errorf("corral: read stdin: %w", err)
		}
		if !utf8.Valid(b) {
			return Result{}, fmt.Errorf("corral: Run takes UTF-8 stdin only; use Start for binary input")
		}
		req.Stdin = string(b)
	}
	var res Result
	err := c.call(ctx, request{method: http.MethodPost, path: "/workspaces/" + url.PathEscape(workspaceID) + "/execute", json: req}, &res.ExecuteResult)
	if err != nil {
		return res, err
	}
	if cmd.Stdout != nil {
		if _, err := io.WriteString(cmd.Stdout, res.Stdout); err != nil {
			return res, fmt.Errorf("corral: write stdout: %w", err)
		}
		res.Stdout = ""
	}
	if cmd.Stderr != nil {
		if _, err := io.WriteString(cmd.Stderr, res.Stderr); err != nil {
			return res, fmt.Errorf("corral: write stderr: %w", err)
		}
		res.Stderr = ""
	}
	return res, nil
}

// Process is a command started with Start. Its output is written to the
// Cmd's writers as it comes; Wait returns how it ended.
type Process struct {
	conn   *websocket.Conn
	ctx    context.Context
	cancel context.CancelFunc
	wmu    sync.Mutex // serialises frame writes
	done   chan struct{}
	res    types.ExitResult
	err    error
}

// Start starts a command over the exec WebSocket (/workspaces/{id}/exec)
// and returns once the server says it started. cmd.Stdin, if set, is
// copied to the command and then closed; without it the command's stdin
// stays open until CloseStdin (write with Write). Cancelling ctx kills the
// command. Start is never retried.
func (c *Client) Start(ctx context.Context, workspaceID string, cmd Cmd) (*Process, error) {
	conn, err := c.dial(ctx, "/workspaces/"+url.PathEscape(workspaceID)+"/exec", nil)
	if err != nil {
		return nil, err
	}
	conn.SetReadLimit(4 << 20)
	pctx, cancel := context.WithCancel(ctx)
	p := &Process{conn: conn, ctx: pctx, cancel: cancel, done: make(chan struct{})}
	start := types.ExecClientFrame{Type: "start", Command: cmd.wire(), TTY: cmd.TTY, Cols: cmd.Cols, Rows: cmd.Rows}
	if err := p.send(start); err != nil {
		cancel()
		conn.CloseNow()
		return nil, fmt.Errorf("corral: send start: %w", err)
	}
	var f types.ExecServerFrame
	if err := readJSONFrame(pctx, conn, &f); err != nil {
		cancel()
		conn.CloseNow()
		return nil, socketError(err, nil)
	}
	if f.Type == "error" {
		e := detailError(f.Error)
		_, _, rerr := conn.Read(pctx) // the close that follows gives the status
		cancel()
		conn.CloseNow()
		return nil, socketError(rerr, e)
	}
	if f.Type != "started" {
		cancel()
		conn.CloseNow()
		return nil, fmt.Errorf("corral: exec socket: expected a started frame, got %q", f.Type)
	}
	go p.read(cmd.Stdout, cmd.Stderr)
	if cmd.Stdin != nil {
		go func() {
			if _, err := io.Copy(p, cmd.Stdin); err == nil {
				_ = p.CloseStdin()
			}
		}()
	}
	return p, nil
}

func (p *Process) send(f types.ExecClientFrame) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return p.conn.Write(p.ctx, websocket.MessageText, b)
}

// read receives output frames until the exit frame or the socket's end.
func (p *Process) read(stdout, stderr io.Writer) {
	defer close(p.done)
	defer p.cancel()
	defer p.conn.CloseNow()
	for {
		var f types.ExecServerFrame
		if err := readJSONFrame(p.ctx, p.conn, &f); err != nil {
			p.err = socketError(err, nil)
			if p.err == nil {
				p.err = fmt.Errorf("corral: exec socket closed before the exit frame: %w", err)
			}
			return
		}
		var w io.Writer
		switch f.Type {
		case "stdout":
			w = stdout
		case "stderr":
			w = stderr
		case "exit":
			if f.ExitResult != nil {
				p.res = *f.ExitResult
			}
			p.conn.Close(websocket.StatusNormalClosure, "")
			return
		case "error":
			e := detailError(f.Error)
			_, _, rerr := p.conn.Read(p.ctx)
			p.err = socketError(rerr, e)
			return
		}
		if w != nil {
			if _, err := w.Write(f.Data); err != nil {
				p.err = fmt.Errorf("corral: write %s: %w", f.Type, err)
				return
			}
		}
	}
}

// Write sends p as the command's stdin.
func (p *Process) Write(b []byte) (int, error) {
	// Frames stay well under the server's 1 MiB read limit.
	n := 0
	for len(b) > 0 {
		chunk := b[:min(len(b), 256<<10)]
		if err := p.send(types.ExecClientFrame{Type: "stdin", Data: chunk}); err != nil {
			return n, fmt.Errorf("corral: send stdin: %w", err)
		}
		n += len(chunk)
		b = b[len(chunk):]
	}
	return n, nil
}

// CloseStdin closes the command's stdin (it reads EOF).
func (p *Process) CloseStdin() error {
	return p.send(types.ExecClientFrame{Type: "close_stdin"})
}

// Resize sets the terminal's size of a TTY command.
func (p *Process) Resize(cols, rows uint16) error {
	return p.send(types.ExecClientFrame{Type: "resize", Cols: cols, Rows: rows})
}

// Signal sends a signal ("INT", "SIGTERM", "9"...) to the command.
func (p *Process) Signal(sig string) error {
	return p.send(types.ExecClientFrame{Type: "signal", Signal: sig})
}

// Wait waits for the command to end and returns how it ended. A non-zero
// exit status is not an error; a lost connection is.
func (p *Process) Wait() (types.ExitResult, error) {
	<-p.done
	return p.res, p.err
}

// Kill ends the command by closing the socket, and waits for the end.
func (p *Process) Kill() {
	p.cancel()
	<-p.done
}

// dial opens a WebSocket at path with the key in the Authorization header.
func (c *Client) dial(ctx context.Context, path string, q url.Values) (*websocket.Conn, error) {
	u := *c.base
	switch u.Scheme {
	case "https":
		u.Scheme = "wss"
	default:
		u.Scheme = "ws"
	}
	setPath(&u, c.base, path)
	u.RawQuery = q.Encode()
	h := http.Header{}
	c.header(h)
	conn, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{HTTPClient: c.http, HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode >= 300 {
			if resp.Body == nil {
				resp.Body = http.NoBody
			}
			return nil, readError(resp)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("corral: dial %s: %w", path, err)
	}
	return conn, nil
}

func readJSONFrame(ctx context.Context, conn *websocket.Conn, v any) error {
	_, b, err := conn.Read(ctx)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("corral: decode frame: %w", err)
	}
	return nil
}

func detailError(d *types.ErrorDetail) *Error {
	if d == nil {
		return nil
	}
	return &Error{Code: d.Code, Message: d.Message}
}

// socketError is the error a socket's end stands for, with the detail of
// a preceding error frame (d, may be nil).
func socketError(err error, d *Error) error {
	if err == nil {
		if d != nil {
			return d
		}
		return nil
	}
	if cerr := closeError(err, d); cerr != nil {
		return cerr
	}
	if d != nil {
		return d
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if websocket.CloseStatus(err) == -1 && !strings.Contains(err.Error(), "corral:") {
		return fmt.Errorf("corral: socket: %w", err)
	}
	return err
}
