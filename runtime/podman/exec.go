package podman

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containers/podman/v5/pkg/api/handlers"
	"github.com/containers/podman/v5/pkg/bindings/containers"
	dockerContainer "github.com/docker/docker/api/types/container"
	"golang.org/x/sys/unix"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/internal/cgroup"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/internal/engineguard"
)

// apiPrefix is the path prefix of the libpod API for the exec streams the
// driver opens itself. The service accepts any version in the path.
const apiPrefix = "/v4.0.0/libpod"

// sessionWrapper runs a command as the leader of a new session (so that
// Signal, timeouts and cancellation reach everything it starts, background
// children included) when the image has setsid, as Debian, Alpine and
// busybox images do. crun does not make exec'd processes group leaders
// unless they have a TTY.
const sessionWrapper = `command -v setsid >/dev/null 2>&1 && exec setsid "$@"; exec "$@"`

// ttyWrapper sizes the terminal before the command runs: the service
// applies the size given at start only after starting the command, which
// may already have looked (`stty size` would see 0 0). The TTY makes the
// command a session leader already.
const ttyWrapper = `stty rows "$1" cols "$2" 2>/dev/null; shift 2; exec "$@"`

// Exec implements runtime.Runtime. The command runs as the leader of its
// own session; Signal, the timeout and cancelling ctx signal that whole
// process group.
func (d *Driver) Exec(ctx context.Context, id string, spec runtime.ExecSpec) (runtime.Process, error) {
	if len(spec.Argv) == 0 || spec.Argv[0] == "" {
		return nil, errdefs.Invalid("invalid_exec", "exec in %s: argv is empty", id)
	}
	cwd, err := runtime.CleanPath(spec.Cwd)
	if err != nil {
		return nil, fmt.Errorf("exec in %s: cwd: %w", id, err)
	}
	oomCtl, err := d.running(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("exec in %s: %w", id, err)
	}
	if cwd != "" {
		// Resolve it here: crun would follow a link out of the
		// workspace, and a missing directory is the caller's error.
		res, err := d.newResolver(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("exec in %s: %w", id, err)
		}
		defer res.Close()
		if cwd, err = res.resolve(cwd, true); err != nil {
			return nil, fmt.Errorf("exec in %s: cwd: %w", id, err)
		}
		if st, err := res.stat(cwd); err != nil {
			return nil, fmt.Errorf("exec in %s: cwd: %w", id, err)
		} else if !st.isDir {
			return nil, errdefs.Invalid("invalid_cwd", "exec in %s: cwd %q is not a directory in the workspace", id, spec.Cwd)
		}
	}
	argv := spec.Argv
	switch {
	case !spec.TTY:
		argv = append([]string{"/bin/sh", "-c", sessionWrapper, "sh"}, argv...)
	case spec.Size.Cols > 0 && spec.Size.Rows > 0:
		argv = append([]string{"/bin/sh", "-c", ttyWrapper, "sh", strconv.Itoa(int(spec.Size.Rows)), strconv.Itoa(int(spec.Size.Cols))}, argv...)
	}
	cfg := &handlers.ExecCreateConfig{ExecOptions: dockerContainer.ExecOptions{
		AttachStdin:  spec.Stdin != nil,
		AttachStdout: true,
		AttachStderr: !spec.TTY,
		Tty:          spec.TTY,
		Env:          envList(spec.Env),
		WorkingDir:   path.Join(runtime.WorkspaceDir, cwd),
		Cmd:          argv,
	}}
	if spec.TTY && spec.Size.Cols > 0 && spec.Size.Rows > 0 {
		cfg.ConsoleSize = &[2]uint{uint(spec.Size.Rows), uint(spec.Size.Cols)}
	}
	c := d.ctx(ctx)
	session, err := containers.ExecCreate(c, containerName(id), cfg)
	if err != nil {
		err = mapErr(err)
		if errors.Is(err, errdefs.ErrNotFound) {
			d.known.Delete(id)
			err = errdefs.NotFound("workspace %s not found", id)
		}
		if errors.Is(err, errdefs.ErrConflict) { // stopped since we looked
			err = errdefs.New(errdefs.ErrFailedPrecondition, "not_running", "workspace is not running: %v", err)
		}
		return nil, fmt.Errorf("exec in %s: %w", id, err)
	}
	p := &process{
		d:       d,
		id:      id,
		session: session,
		tty:     spec.TTY,
		oomCtl:  oomCtl,
		done:    make(chan struct{}),
	}
	p.oomBefore = cgroup.OOMKills(p.oomCtl)
	conn, br, err := d.startExec(ctx, session, spec)
	if err != nil {
		return nil, fmt.Errorf("exec in %s: %w", id, err)
	}
	p.conn = conn
	if spec.Timeout > 0 {
		p.timer = time.AfterFunc(spec.Timeout, func() {
			p.mu.Lock()
			p.timedOut = true
			p.mu.Unlock()
			p.kill()
		})
	}
	stopCancel := context.AfterFunc(ctx, p.kill)
	go p.run(conn, br, spec, stopCancel)
	return p, nil
}

// running checks, the first time an exec runs in a workspace, that it is
// ours and running, and learns its memory.oom_control. Later execs trust
// ExecCreate to refuse a workspace that stopped (409) or went (404),
// sparing a round trip.
func (d *Driver) running(ctx context.Context, id string) (oomCtl string, err error) {
	if v, ok := d.known.Load(id); ok {
		return v.(string), nil
	}
	data, err := d.inspect(ctx, id)
	if err != nil {
		return "", err
	}
	if !data.State.Running {
		return "", errdefs.New(errdefs.ErrFailedPrecondition, "not_running", "workspace %s is not running", id)
	}
	oomCtl = d.oomControl(data.State.CgroupPath)
	d.known.Store(id, oomCtl)
	return oomCtl, nil
}

// startExec opens the exec session's stream: an HTTP upgrade on a
// connection of its own. (The bindings' ExecStartAndAttach swaps the shared
// client's transport on every call, which races with concurrent requests,
// and takes its TTY mode from the caller's os.Stdin.)
func (d *Driver) startExec(ctx context.Context, session string, spec runtime.ExecSpec) (*net.UnixConn, *bufio.Reader, error) {
	var dialer net.Dialer
	nc, err := dialer.DialContext(ctx, "unix", d.sockPath)
	if err != nil {
		return nil, nil, mapErr(err)
	}
	conn := nc.(*net.UnixConn)
	body, _ := json.Marshal(handlers.ExecStartConfig{Tty: spec.TTY, Height: spec.Size.Rows, Width: spec.Size.Cols})
	req, _ := http.NewRequest(http.MethodPost, "http://d"+apiPrefix+"/exec/"+session+"/start", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "tcp")
	// The handshake is bounded like every engine call (the guarded
	// transport does not see this connection); the stream after it is not.
	dl, ok := ctx.Deadline()
	if d.timeout > 0 && (!ok || time.Until(dl) > d.timeout) {
		dl, ok = time.Now().Add(d.timeout), true
	}
	if ok {
		_ = conn.SetDeadline(dl)
	}
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("start exec session: %w", mapErr(err))
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("start exec session: %w", mapErr(err))
	}
	_ = conn.SetDeadline(time.Time{})
	if resp.StatusCode != http.StatusSwitchingProtocols && resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		conn.Close()
		var m struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(msg, &m) == nil && m.Message != "" {
			msg = []byte(m.Message)
		}
		err := fmt.Errorf("start exec session: %s (HTTP %d)", bytes.TrimSpace(msg), resp.StatusCode)
		if class := classOf(resp.StatusCode); class != nil {
			err = &classified{class: class, err: err}
		}
		return nil, nil, err
	}
	return conn, br, nil
}

// process is a command started by Exec.
type process struct {
	d       *Driver
	id      string
	session string
	tty     bool
	timer   *time.Timer

	oomCtl    string // host path of the container's memory.oom_control, "" if unknown
	oomBefore int64
	conn      *net.UnixConn // the session's stream

	mu       sync.Mutex
	timedOut bool
	killed   bool
	pid      int // host PID of the command, once learned

	done chan struct{}
	res  runtime.ExitResult
	err  error
}

// run copies the streams until the command's output ends, then learns the
// exit code.
func (p *process) run(conn *net.UnixConn, br *bufio.Reader, spec runtime.ExecSpec, stopCancel func() bool) {
	defer close(p.done)
	defer stopCancel()
	if spec.Stdin != nil {
		go func() {
			_, err := io.Copy(conn, spec.Stdin)
			if err == nil {
				_ = conn.CloseWrite()
			}
		}()
	}
	stdout, stderr := orDiscard(spec.Stdout), orDiscard(spec.Stderr)
	var streamErr error
	if spec.TTY {
		_, streamErr = io.Copy(stdout, br)
	} else {
		streamErr = demux(br, stdout, stderr)
	}
	conn.Close()
	if p.timer != nil {
		p.timer.Stop()
	}
	res, err := p.exitResult()
	if err != nil {
		p.mu.Lock()
		killed := p.killed
		p.mu.Unlock()
		if errors.Is(err, errdefs.ErrUnavailable) && !killed {
			// The stream ended with the service: the command may still
			// run, with no one to read it.
			p.killWhenBack()
		}
		if streamErr != nil && !errors.Is(streamErr, net.ErrClosed) {
			err = fmt.Errorf("%w (stream: %v)", err, streamErr)
		}
		p.err = fmt.Errorf("exec in %s: %w", p.id, err)
		return
	}
	p.res = res
}

// demux splits the service's multiplexed stream: 8-byte headers of stream
// number and length, then the frame.
func demux(r io.Reader, stdout, stderr io.Writer) error {
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		n := int64(binary.BigEndian.Uint32(hdr[4:]))
		var w io.Writer
		switch hdr[0] {
		case 1:
			w = stdout
		case 2:
			w = stderr
		case 3:
			msg, _ := io.ReadAll(io.LimitReader(r, n))
			return fmt.Errorf("exec stream: %s", msg)
		default:
			w = io.Discard
		}
		if _, err := io.CopyN(w, r, n); err != nil {
			return err
		}
	}
}

// exitResult waits for the session to be reported as exited and returns
// how it ended.
func (p *process) exitResult() (runtime.ExitResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	delay := time.Millisecond
	for {
		info, err := containers.ExecInspect(p.d.ctx(ctx), p.session, nil)
		if err != nil {
			return runtime.ExitResult{}, fmt.Errorf("inspect exec session: %w", mapErr(err))
		}
		if !info.Running {
			res := runtime.ExitResult{ExitCode: info.ExitCode}
			if info.ExitCode > 128 && info.ExitCode < 128+65 {
				res.Signal = runtime.SignalResult(syscall.Signal(info.ExitCode - 128)).Signal
			}
			p.mu.Lock()
			res.TimedOut = p.timedOut
			p.mu.Unlock()
			if info.ExitCode == 128+int(syscall.SIGKILL) && p.oomCtl != "" {
				res.OOMKilled = cgroup.OOMKills(p.oomCtl) > p.oomBefore
			}
			return res, nil
		}
		select {
		case <-ctx.Done():
			return runtime.ExitResult{}, fmt.Errorf("exec session %s still running after its output ended", short(p.session))
		case <-time.After(delay):
		}
		if delay < 50*time.Millisecond {
			delay *= 2
		}
	}
}

// Wait implements runtime.Process.
func (p *process) Wait() (runtime.ExitResult, error) {
	<-p.done
	return p.res, p.err
}

// Signal implements runtime.Process: sig goes to the command's process
// group. Sending to an exited command succeeds.
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

func (p *process) signal(ctx context.Context, sig syscall.Signal) error {
	pid, err := p.hostPID(ctx)
	if err != nil || pid == 0 {
		return err
	}
	if p.d.signalInside {
		return p.signalInside(ctx, pid, sig)
	}
	// The command leads its own process group (sessionWrapper, or the
	// TTY's session), whose ID is its PID.
	err = syscall.Kill(-pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		// No such group: the image has no setsid, so the command runs
		// in the exec's group; reach the command itself at least.
		err = syscall.Kill(pid, sig)
	}
	if err == nil || errors.Is(err, syscall.ESRCH) {
		return nil
	}
	if !errors.Is(err, syscall.EPERM) {
		return fmt.Errorf("signal command in %s: %w", p.id, err)
	}
	// We may not signal the user's processes from here (a rootless
	// service of another user): do it from inside the sandbox.
	if ierr := p.signalInside(ctx, pid, sig); ierr != nil {
		return fmt.Errorf("signal command in %s: %w (and from inside: %v)", p.id, err, ierr)
	}
	return nil
}

// signalInside signals the command's process group with kill(1) run in
// the sandbox, for when the host may not.
func (p *process) signalInside(ctx context.Context, pid int, sig syscall.Signal) error {
	nspid, err := innermostPID(pid)
	if err != nil {
		return err
	}
	// The group, else (no setsid in the image) the command alone.
	script := fmt.Sprintf("kill -s %d -- -%d 2>/dev/null || kill -s %d %d 2>/dev/null; true", int(sig), nspid, int(sig), nspid)
	k, err := p.d.Exec(ctx, p.id, runtime.ExecSpec{
		Argv: []string{"/bin/sh", "-c", script},
		TTY:  true, // no session wrapper needed
	})
	if err != nil {
		return fmt.Errorf("signal command in %s from inside: %w", p.id, err)
	}
	if _, err := k.Wait(); err != nil {
		return fmt.Errorf("signal command in %s from inside: %w", p.id, err)
	}
	return nil
}

// kill sends SIGKILL to the command's process group, once; it is what a
// timeout or a cancelled context does.
func (p *process) kill() {
	p.mu.Lock()
	if p.killed {
		p.mu.Unlock()
		return
	}
	p.killed = true
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.signal(ctx, syscall.SIGKILL); err != nil {
		p.d.log.Warn("kill command", "workspace_id", p.id, "exec_id", short(p.session), "error", err)
		// The service is not answering: end the stream now, and kill
		// the command once it answers again, so that nothing a
		// cancelled session started outlives it.
		p.conn.Close()
		p.killWhenBack()
	}
}

// killWhenBack kills the command, in the background, once the service
// answers again (for up to killRetryLimit).
func (p *process) killWhenBack() {
	log := p.d.log.With("workspace_id", p.id, "exec_id", short(p.session))
	go engineguard.Retry(log, "kill command cut off by an engine outage", killRetryLimit, func(ctx context.Context) error {
		return p.signal(ctx, syscall.SIGKILL)
	})
}

// killRetryLimit is how long a command cut off by an engine outage is
// retried being killed.
const killRetryLimit = 15 * time.Minute

// hostPID returns the command's PID on the host, 0 if it has exited.
func (p *process) hostPID(ctx context.Context) (int, error) {
	p.mu.Lock()
	pid := p.pid
	p.mu.Unlock()
	if pid != 0 {
		return pid, nil
	}
	for delay := time.Millisecond; ; delay *= 2 {
		info, err := containers.ExecInspect(p.d.ctx(ctx), p.session, nil)
		if err != nil {
			return 0, fmt.Errorf("inspect exec session: %w", mapErr(err))
		}
		if info.Pid != 0 {
			p.mu.Lock()
			p.pid = info.Pid
			p.mu.Unlock()
			return info.Pid, nil
		}
		if delay > time.Second { // never started
			return 0, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-p.done:
			return 0, nil
		case <-time.After(delay):
		}
	}
}

// Resize implements runtime.Process.
func (p *process) Resize(ctx context.Context, size runtime.WindowSize) error {
	if !p.tty {
		return errdefs.New(errdefs.ErrFailedPrecondition, "no_tty", "command in %s has no terminal", p.id)
	}
	h, w := int(size.Rows), int(size.Cols)
	if err := containers.ResizeExecTTY(p.d.ctx(ctx), p.session, &containers.ResizeExecTTYOptions{Height: &h, Width: &w}); err != nil {
		select {
		case <-p.done:
			return nil
		default:
		}
		return fmt.Errorf("resize terminal in %s: %w", p.id, mapErr(err))
	}
	p.awaitSize(ctx, size)
	return nil
}

// awaitSize waits (briefly) until the command's terminal has the size just
// asked for: the service hands the resize to conmon asynchronously, so
// without this a command run right after Resize may still see the old size.
// Where the host cannot open the terminal, it returns at once.
func (p *process) awaitSize(ctx context.Context, size runtime.WindowSize) {
	pid, err := p.hostPID(ctx)
	if err != nil || pid == 0 {
		return
	}
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/fd/0", pid), unix.O_RDONLY|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
		if err != nil || (ws.Col == size.Cols && ws.Row == size.Rows) {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// oomControl returns the host path of the memory.oom_control file of the
// container's cgroup (cgroup v1), or "" if it cannot be read from here.
func (d *Driver) oomControl(cgroupPath string) string {
	if cgroupPath == "" || d.cgroupV2 {
		return ""
	}
	p := filepath.Join("/sys/fs/cgroup/memory", filepath.Clean("/"+cgroupPath), "memory.oom_control")
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// innermostPID returns the PID that host process pid has in its own PID
// namespace.
func innermostPID(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				return strconv.Atoi(f[len(f)-1])
			}
		}
	}
	return 0, fmt.Errorf("no NSpid in /proc/%d/status", pid)
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
