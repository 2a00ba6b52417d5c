package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/internal/cgroup"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/internal/engineguard"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"
	"github.com/moby/moby/client/pkg/versions"
)

// execMarkerEnv is set on every command (commands see it) so that its
// processes can be found even after they have left its process group.
const execMarkerEnv = "CORRAL_EXEC"

// Exec starts a command in a running workspace through the engine's exec
// API. The engine makes every exec a session and process-group leader, so
// signals, timeouts and ctx cancellation reach the command and everything it
// started in its group (the host signals the group: see Process.Signal).
// Errors: errdefs.ErrNotFound (no such workspace), errdefs.ErrFailedPrecondition
// (not running), errdefs.ErrInvalidArgument (empty argv, cwd outside the
// workspace or missing). A command that cannot be found exits 127, one that
// cannot be run 126.
func (d *Driver) Exec(ctx context.Context, id string, spec runtime.ExecSpec) (runtime.Process, error) {
	if err := checkID(id); err != nil {
		return nil, errdefs.NotFound("workspace %s not found", id)
	}
	if len(spec.Argv) == 0 || spec.Argv[0] == "" {
		return nil, errdefs.Invalid("invalid_exec", "argv must not be empty")
	}
	if spec.Timeout < 0 {
		return nil, errdefs.Invalid("invalid_exec", "timeout must not be negative")
	}
	name := d.objectName(id)
	cwd := runtime.WorkspaceDir
	if spec.Cwd != "" {
		rel, err := runtime.CleanPath(spec.Cwd)
		if err != nil {
			return nil, err
		}
		if rel != "" {
			st, err := d.resolve(ctx, name, rel)
			if err != nil {
				if errors.Is(err, errdefs.ErrNotFound) {
					return nil, errdefs.Invalid("invalid_cwd", "working directory %q does not exist in workspace %s", spec.Cwd, id)
				}
				return nil, err
			}
			if !st.Mode.IsDir() {
				return nil, errdefs.Invalid("invalid_cwd", "working directory %q is not a directory", spec.Cwd)
			}
			cwd = path.Join(runtime.WorkspaceDir, rel)
		}
	}
	marker := randomHex(8)
	env := make(map[string]string, len(spec.Env)+1)
	for k, v := range spec.Env {
		env[k] = v
	}
	env[execMarkerEnv] = marker
	argv := spec.Argv
	var size client.ConsoleSize
	if spec.TTY && spec.Size.Cols > 0 && spec.Size.Rows > 0 {
		if versions.GreaterThanOrEqualTo(d.cli.ClientVersion(), "1.42") {
			size = client.ConsoleSize{Height: uint(spec.Size.Rows), Width: uint(spec.Size.Cols)}
		} else {
			argv = ttyArgv(argv, spec.Size)
		}
	}
	opts := client.ExecCreateOptions{
		Cmd:          argv,
		ConsoleSize:  size,
		Env:          envList(env),
		WorkingDir:   cwd,
		TTY:          spec.TTY,
		AttachStdin:  spec.Stdin != nil,
		AttachStdout: true,
		AttachStderr: !spec.TTY,
	}

	// What the host sees of the container, learnt before the command
	// starts so that the OOM counter is read before it can use memory.
	hv := d.view(ctx, name)
	oomBefore := cgroup.OOMKills(hv.oomFile)

	created, err := d.cli.ExecCreate(ctx, name, opts)
	if err != nil {
		if isConflict(err) {
			return nil, errdefs.New(errdefs.ErrFailedPrecondition, "workspace_not_running", "workspace %s is not running", id)
		}
		return nil, engineErr(err, "exec in workspace %s", id)
	}
	att, err := d.attach(ctx, created.ID, client.ExecAttachOptions{TTY: spec.TTY, ConsoleSize: size})
	if err != nil {
		if isConflict(err) {
			return nil, errdefs.New(errdefs.ErrFailedPrecondition, "workspace_not_running", "workspace %s is not running", id)
		}
		return nil, engineErr(err, "start command in workspace %s", id)
	}
	p := &process{
		d: d, ws: id, container: name, execID: created.ID, tty: spec.TTY, marker: marker,
		conn: att.HijackedResponse, done: make(chan struct{}), outDone: make(chan struct{}),
		host: hv, oomBefore: oomBefore,
	}
	stdout, stderr := spec.Stdout, spec.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	p.head = &headWriter{w: stdout, max: 512}
	go p.copyOutput(p.head, stderr)
	if spec.Stdin != nil {
		go p.copyInput(spec.Stdin)
	}
	go p.watch(ctx, spec.Timeout)
	return p, nil
}

// attach opens an exec's stream. Its handshake runs on a hijacked
// connection that the guarded transport does not see, so it is bounded
// here; a stream that opens after the deadline is closed again.
func (d *Driver) attach(ctx context.Context, execID string, opts client.ExecAttachOptions) (client.ExecAttachResult, error) {
	return engineguard.Call(ctx, Name, d.timeout, func(ctx context.Context) (client.ExecAttachResult, error) {
		return d.cli.ExecAttach(ctx, execID, opts)
	}, func(a client.ExecAttachResult) { a.Close() })
}

// ttyArgv wraps a TTY command so that its terminal has the initial size
// before it starts: engines below API 1.42 (Docker 20.10) ignore the exec's
// console size and can only resize once the command runs, too late for a
// command that reads its size at once. The shell's exec keeps "not found"
// at exit code 127. (Such images need /bin/sh and stty for TTY commands
// with a size; newer engines take the size in the request.)
func ttyArgv(argv []string, size runtime.WindowSize) []string {
	script := fmt.Sprintf(`stty rows %d cols %d 2>/dev/null; exec "$0" "$@"`, size.Rows, size.Cols)
	return append([]string{"/bin/sh", "-c", script}, argv...)
}

// process is one exec.
type process struct {
	d         *Driver
	ws        string
	container string
	execID    string
	tty       bool
	marker    string
	conn      client.HijackedResponse

	outDone   chan struct{} // output fully copied (the engine closed the stream)
	outErr    error         // a stream error, or the engine's failure to start the command
	done      chan struct{} // Wait's result is ready
	res       runtime.ExitResult
	err       error
	timedOut  atomic.Bool
	killed    atomic.Bool // we killed it (timeout or ctx)
	host      hostView    // what the host sees of the container
	oomBefore int64
	head      *headWriter // the start of stdout, where the engine reports a failed start

	pidMu sync.Mutex
	pid   int // host PID, once known
}

var _ runtime.Process = (*process)(nil)

func (p *process) copyOutput(stdout, stderr io.Writer) {
	defer close(p.outDone)
	var err error
	if p.tty {
		_, err = io.Copy(stdout, p.conn.Reader)
	} else {
		_, err = stdcopy.StdCopy(stdout, stderr, p.conn.Reader)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		p.outErr = err
	}
}

func (p *process) copyInput(r io.Reader) {
	_, _ = io.Copy(p.conn.Conn, r)
	_ = p.conn.CloseWrite()
}

// watch kills the command's group when its timeout passes or ctx ends, and
// completes Wait's result once the command is gone.
func (p *process) watch(ctx context.Context, timeout time.Duration) {
	var timer <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-p.outDone:
	case <-timer:
		p.timedOut.Store(true)
		if err := p.killAll(); err != nil {
			p.conn.Close()
			p.killWhenBack()
		}
		<-p.outDone
	case <-ctx.Done():
		if err := p.killAll(); err != nil {
			// The engine is not answering: end the stream now, and kill
			// the command once it answers again, so that nothing a
			// cancelled session started outlives it.
			p.conn.Close()
			p.killWhenBack()
		}
		<-p.outDone
	}
	p.finish()
}

// killWhenBack kills the command, in the background, once the engine
// answers again (for up to killRetryLimit).
func (p *process) killWhenBack() {
	log := p.d.log.With("workspace_id", p.ws, "exec_id", short(p.execID))
	go engineguard.Retry(log, "kill command cut off by an engine outage", killRetryLimit, func(ctx context.Context) error {
		return p.signal(ctx, syscall.SIGKILL)
	})
}

// killRetryLimit is how long a command cut off by an engine outage is
// retried being killed.
const killRetryLimit = 15 * time.Minute

// killAll sends SIGKILL to the command's process group and then to anything
// left carrying the command's marker, until nothing is left.
func (p *process) killAll() error {
	p.killed.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := p.signal(ctx, syscall.SIGKILL)
	if err != nil {
		p.d.log.Warn("kill command", "workspace_id", p.ws, "exec_id", short(p.execID), "error", err)
	}
	return err
}

// finish learns the exit code once the output stream has ended.
func (p *process) finish() {
	defer close(p.done)
	defer p.conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var code, pid int
	for delay := time.Millisecond; ; delay = min(delay*2, 100*time.Millisecond) {
		ins, err := p.d.cli.ExecInspect(ctx, p.execID, client.ExecInspectOptions{})
		if err != nil {
			p.err = engineErr(err, "command in workspace %s", p.ws)
			if errors.Is(p.err, errdefs.ErrUnavailable) && !p.killed.Load() {
				// The stream ended with the engine: the command may
				// still run, with no one to read it.
				p.killWhenBack()
			}
			return
		}
		if !ins.Running {
			code, pid = ins.ExitCode, ins.PID
			break
		}
		select {
		case <-ctx.Done():
			p.err = fmt.Errorf("command in workspace %s: still running after its output ended: %w", p.ws, ctx.Err())
			return
		case <-time.After(delay):
		}
	}
	if p.outErr != nil {
		// The engine reports a command it could not start in the stream
		// itself ("executable file not found", "permission denied").
		if c, ok := startFailureCode(p.outErr.Error()); ok {
			p.res = runtime.ExitResult{ExitCode: c}
			return
		}
		p.err = fmt.Errorf("output of command in workspace %s: %w", p.ws, p.outErr)
		return
	}
	if code == 126 && pid == 0 {
		// runc could not start the command; the engine wrote why to the
		// stream ("OCI runtime exec failed: ... executable file not found").
		if c, ok := startFailureCode(p.head.String()); ok {
			p.res = runtime.ExitResult{ExitCode: c}
			return
		}
	}
	p.res = exitResult(code)
	if p.timedOut.Load() {
		p.res.TimedOut = true
	}
	if p.res.Signal == "SIGKILL" && !p.killed.Load() && p.oomKilled() {
		p.res.OOMKilled = true
	}
}

// exitResult reads the engine's exit code: it reports 128+n for a command
// killed by signal n, like a shell.
func exitResult(code int) runtime.ExitResult {
	if code > 128 && code < 128+65 {
		if r := runtime.SignalResult(syscall.Signal(code - 128)); r.Signal != "" {
			return r
		}
	}
	return runtime.ExitResult{ExitCode: code}
}

// headWriter passes writes through and keeps the first max bytes.
type headWriter struct {
	w   io.Writer
	max int
	mu  sync.Mutex
	buf []byte
}

func (h *headWriter) Write(b []byte) (int, error) {
	h.mu.Lock()
	if n := h.max - len(h.buf); n > 0 {
		h.buf = append(h.buf, b[:min(n, len(b))]...)
	}
	h.mu.Unlock()
	return h.w.Write(b)
}

func (h *headWriter) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return string(h.buf)
}

// startFailureCode maps the engine's message for a command it could not
// start to the shell's exit codes: 127 not found, 126 not executable.
func startFailureCode(msg string) (int, bool) {
	if !strings.Contains(msg, "exec failed") {
		return 0, false
	}
	switch {
	case strings.Contains(msg, "executable file not found"), strings.Contains(msg, "no such file or directory"):
		return 127, true
	case strings.Contains(msg, "permission denied"), strings.Contains(msg, "exec format error"),
		strings.Contains(msg, "is a directory"), strings.Contains(msg, "not a directory"):
		return 126, true
	}
	return 0, false
}

// Wait blocks until the command has exited and its output is written.
func (p *process) Wait() (runtime.ExitResult, error) {
	<-p.done
	return p.res, p.err
}

// Signal sends sig to the command's process group. A command that has
// exited is not an error.
func (p *process) Signal(ctx context.Context, sig runtime.Signal) error {
	n, err := sig.Number()
	if err != nil {
		return err
	}
	select {
	case <-p.done:
		return nil
	default:
	}
	return p.signal(ctx, n)
}

// signal delivers sig to the command's process group, from the host when
// the host sees the container's processes, otherwise from inside it.
// SIGKILL also reaches processes that left the group (found by the marker
// in their environment) and is repeated until none is left.
func (p *process) signal(ctx context.Context, sig syscall.Signal) error {
	if !p.host.visible {
		return p.signalInside(ctx, sig)
	}
	pid, err := p.hostPID(ctx)
	if err != nil {
		return err
	}
	leader := pid != 0 && ownedBy(pid, p.host.containerID)
	if leader {
		if err := syscall.Kill(-pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("signal command in workspace %s: %w", p.ws, err)
		}
	}
	if sig == syscall.SIGKILL || !leader {
		p.signalMarked(sig, sig == syscall.SIGKILL)
	}
	return nil
}

// hostPID is the host PID of the command (its process group ID, since the
// engine makes each exec a group leader); 0 if it exited before starting.
func (p *process) hostPID(ctx context.Context) (int, error) {
	p.pidMu.Lock()
	defer p.pidMu.Unlock()
	if p.pid != 0 {
		return p.pid, nil
	}
	for delay := time.Millisecond; ; delay = min(delay*2, 50*time.Millisecond) {
		ins, err := p.d.cli.ExecInspect(ctx, p.execID, client.ExecInspectOptions{})
		if err != nil {
			return 0, engineErr(err, "find command in workspace %s", p.ws)
		}
		if ins.PID != 0 {
			p.pid = ins.PID
			return p.pid, nil
		}
		select {
		case <-p.outDone:
			return 0, nil // it never started
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(delay):
		}
	}
}

// signalMarked signals, from the host, every process that carries the
// command's marker: children that left its group with setsid or setpgid, or
// all of it once its leader is gone. With untilGone it repeats until none is
// left (bounded: a process that survives SIGKILL is a kernel matter).
func (p *process) signalMarked(sig syscall.Signal, untilGone bool) {
	want := []byte(execMarkerEnv + "=" + p.marker + "\x00")
	for range 100 {
		left := false
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
			if err != nil || !containsEnv(env, want) {
				continue
			}
			if syscall.Kill(pid, sig) == nil {
				left = true
			}
		}
		if !left || !untilGone {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func containsEnv(environ, entry []byte) bool {
	s, e := string(environ), string(entry)
	return strings.HasPrefix(s, e) || strings.Contains(s, "\x00"+e)
}

// signalInside signals from within the container, for engines on another
// machine: a shell (the image needs sh, tr, grep and kill) finds the
// command's processes by their marker and signals each, and waits for that
// to be done.
func (p *process) signalInside(ctx context.Context, sig syscall.Signal) error {
	// The processes are found first and, for SIGKILL, stopped before any
	// is killed: a shell whose child dies first would otherwise carry on
	// (and could exit 0) before its own turn comes.
	stop := ""
	if sig == syscall.SIGKILL {
		stop = `kill -STOP $ps 2>/dev/null; `
	}
	script := fmt.Sprintf(`ps=; for d in /proc/[0-9]*; do p=${d#/proc/}; [ "$p" = "$$" ] && continue; `+
		`if tr '\000' '\n' <"$d/environ" 2>/dev/null | grep -qx '%s=%s'; then ps="$ps $p"; fi; done; `+
		`[ -z "$ps" ] && exit 0; %skill -%d $ps 2>/dev/null; exit 0`,
		execMarkerEnv, p.marker, stop, int(sig))
	res, err := p.d.cli.ExecCreate(ctx, p.container, client.ExecCreateOptions{Cmd: []string{"/bin/sh", "-c", script}, AttachStdout: true, AttachStderr: true})
	if err != nil {
		if isConflict(err) || isNotFound(err) {
			return nil // the workspace stopped: everything in it is gone
		}
		return engineErr(err, "signal command in workspace %s", p.ws)
	}
	att, err := p.d.attach(ctx, res.ID, client.ExecAttachOptions{})
	if err != nil {
		return engineErr(err, "signal command in workspace %s", p.ws)
	}
	defer att.Close()
	// A hijacked stream ignores ctx: an engine frozen mid-way would hold
	// the read below forever.
	stopRead := context.AfterFunc(ctx, func() { att.Close() })
	defer stopRead()
	var msg strings.Builder
	if _, err := stdcopy.StdCopy(&msg, &msg, att.Reader); err != nil {
		return fmt.Errorf("signal command in workspace %s: %w", p.ws, err)
	}
	if ins, err := p.d.cli.ExecInspect(ctx, res.ID, client.ExecInspectOptions{}); err == nil && ins.ExitCode != 0 {
		return fmt.Errorf("signal command in workspace %s: the signalling shell exited %d: %s", p.ws, ins.ExitCode, msg.String())
	}
	return nil
}

// Resize changes the terminal size of a TTY command.
// errdefs.ErrFailedPrecondition without a TTY.
func (p *process) Resize(ctx context.Context, size runtime.WindowSize) error {
	if !p.tty {
		return errdefs.New(errdefs.ErrFailedPrecondition, "no_tty", "command has no terminal to resize")
	}
	select {
	case <-p.done:
		return nil
	default:
	}
	_, err := p.d.cli.ExecResize(ctx, p.execID, client.ExecResizeOptions{Height: uint(size.Rows), Width: uint(size.Cols)})
	if err != nil && !isConflict(err) && !isNotFound(err) {
		return engineErr(err, "resize command in workspace %s", p.ws)
	}
	return nil
}

// oomKilled reports whether the kernel's OOM killer struck in the
// workspace's memory cgroup while the command ran.
func (p *process) oomKilled() bool {
	return p.host.oomFile != "" && cgroup.OOMKills(p.host.oomFile) > p.oomBefore
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
