package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/sandboxinit"
	"golang.org/x/sys/unix"
)

// outputGrace is how long Wait keeps reading output after the command
// exited, for background processes that still hold its stdout or stderr.
// Past it, Wait returns and the rest of their output is dropped.
const outputGrace = 2 * time.Second

// Exec starts a command in a running workspace through its supervisor.
// errdefs.ErrNotFound for an unknown workspace, ErrFailedPrecondition if it
// is not running, ErrInvalidArgument (code "path_escape") for a Cwd outside
// the workspace.
func (d *Driver) Exec(ctx context.Context, id string, spec runtime.ExecSpec) (runtime.Process, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("exec in %s: %w", id, err)
	}
	m, err := d.loadMeta(id)
	if err != nil {
		return nil, err
	}
	if len(spec.Argv) == 0 {
		return nil, errdefs.Invalid("invalid_exec", "argv is empty")
	}
	dir, err := d.resolveCwd(id, spec.Cwd)
	if err != nil {
		return nil, err
	}
	// Everything is ready before the supervisor is dialed, so that it
	// finds the request there when it accepts the connection.
	p := &process{d: d, id: id, tty: spec.TTY, done: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			p.closeAll()
		}
	}()
	fds, childFiles, err := p.stdio(spec)
	if err != nil {
		return nil, fmt.Errorf("exec in %s: %w", id, err)
	}
	closeChild := func() {
		for _, f := range childFiles {
			f.Close()
		}
		childFiles = nil
	}
	defer closeChild()
	req := sandboxinit.Request{
		Op: sandboxinit.OpExec, Argv: spec.Argv, Dir: dir, TTY: spec.TTY,
		Env: d.env(m, spec), UID: m.UID, GID: m.UID,
	}
	p.oomBefore, p.oomKnown = d.cg.oomKills(id)
	// A connection dialed ahead spares the dial and the supervisor's
	// accept. Its supervisor may have stopped since: then the send fails
	// (nothing was started) and a fresh dial tells what happened.
	conn := d.takeSpare(id)
	if conn != nil {
		if err := sandboxinit.Send(conn, req, fds...); err != nil {
			conn.Close()
			conn = nil
		}
	}
	if conn == nil {
		conn, err = net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: d.sockPath(id), Net: "unixpacket"})
		if err != nil {
			if !fileExists(d.metaPath(id)) {
				d.forget(id)
				return nil, errdefs.NotFound("workspace %q not found", id)
			}
			if d.running(id) == nil {
				return nil, errdefs.New(errdefs.ErrFailedPrecondition, "not_running", "workspace %q is not running", id)
			}
			return nil, errdefs.New(errdefs.ErrUnavailable, "unavailable", "workspace %s: cannot reach its supervisor: %v", id, err)
		}
		p.conn = conn
		if err := sandboxinit.Send(conn, req, fds...); err != nil {
			return nil, errdefs.New(errdefs.ErrUnavailable, "unavailable", "exec in %s: %v", id, err)
		}
	}
	p.conn = conn
	closeChild()
	go d.refillSpare(id)
	var started sandboxinit.Reply
	if fds, err := sandboxinit.Receive(conn, &started); err != nil {
		unixCloseAll(fds)
		if d.running(id) == nil {
			// It died (the spare connection outlived it): say so, so
			// that the caller can restart the workspace.
			return nil, errdefs.New(errdefs.ErrFailedPrecondition, "not_running", "workspace %q is not running", id)
		}
		return nil, errdefs.New(errdefs.ErrUnavailable, "unavailable", "exec in %s: supervisor: %v", id, err)
	}
	if started.Op != sandboxinit.OpStarted {
		return nil, fmt.Errorf("exec in %s: supervisor: %s", id, started.Error)
	}
	ok = true
	p.run(ctx, spec)
	return p, nil
}

// takeSpare returns the workspace's connection dialed ahead, if any.
func (d *Driver) takeSpare(id string) *net.UnixConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.spares[id]
	delete(d.spares, id)
	return c
}

// refillSpare dials a connection for the workspace's next command. The
// supervisor serves it like any other: it waits for the exec request, and
// forgets it when it is closed.
func (d *Driver) refillSpare(id string) {
	d.mu.Lock()
	have := d.spares[id] != nil
	d.mu.Unlock()
	if have {
		return
	}
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: d.sockPath(id), Net: "unixpacket"})
	if err != nil {
		return
	}
	d.mu.Lock()
	if d.spares == nil {
		d.spares = map[string]*net.UnixConn{}
	}
	if d.spares[id] == nil {
		d.spares[id], c = c, nil
	}
	d.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// dropSpare closes the workspace's connection dialed ahead, if any.
func (d *Driver) dropSpare(id string) {
	if c := d.takeSpare(id); c != nil {
		c.Close()
	}
}

func unixCloseAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// resolveCwd turns a Cwd relative to the workspace root into a host path,
// refusing escapes through ".." or symlinks.
func (d *Driver) resolveCwd(id, cwd string) (string, error) {
	home := d.homeDir(id)
	c, err := runtime.CleanPath(cwd)
	if err != nil {
		return "", err
	}
	if c == "" {
		return home, nil
	}
	root, err := os.OpenRoot(home)
	if err != nil {
		return "", fmt.Errorf("exec in %s: %w", id, err)
	}
	defer root.Close()
	fi, err := root.Stat(c)
	if err != nil {
		if isEscape(err) {
			return "", runtime.EscapeError(cwd)
		}
		if errors.Is(err, os.ErrNotExist) {
			return "", errdefs.Invalid("invalid_cwd", "working directory %q does not exist", cwd)
		}
		return "", fmt.Errorf("exec in %s: %w", id, err)
	}
	if !fi.IsDir() {
		return "", errdefs.Invalid("invalid_cwd", "working directory %q is not a directory", cwd)
	}
	return filepath.Join(home, c), nil
}

// env is a command's environment: a clean base, the proxy settings for
// network mode allowlist, the workspace's env, then the command's.
func (d *Driver) env(m *meta, spec runtime.ExecSpec) []string {
	e := map[string]string{
		"PATH": defaultPath,
		"HOME": d.homeDir(m.ID),
		"LANG": "C.UTF-8",
	}
	if spec.TTY {
		e["TERM"] = "xterm"
	}
	if m.Policy.Network.Mode == policy.NetworkAllowlist {
		maps.Copy(e, runtime.ProxyEnv())
	}
	maps.Copy(e, m.Env)
	maps.Copy(e, spec.Env)
	out := make([]string, 0, len(e))
	for _, k := range slices.Sorted(maps.Keys(e)) {
		out = append(out, k+"="+e[k])
	}
	return out
}

// process is a command started by Exec.
type process struct {
	d    *Driver
	id   string
	conn *net.UnixConn
	tty  bool

	master *os.File // pty master (TTY)
	// Our ends of the pipes (no TTY); nil when the caller's writer is nil.
	stdinW, stdoutR, stderrR *os.File
	copied                   chan struct{} // closed once the stdout/stderr copiers are done

	oomBefore uint64
	oomKnown  bool

	sendMu   sync.Mutex
	timedOut bool // under sendMu
	exitSeen bool // under sendMu: the exit was received
	done     chan struct{}
	res      runtime.ExitResult
	err      error
}

// stdio makes the command's stdio: pipes to the caller's readers and
// writers, or a pty. It returns the child's fds, and the files of those
// made for this command, which the caller closes once they are sent (the
// child's /dev/null is the driver's, opened once).
func (p *process) stdio(spec runtime.ExecSpec) ([]int, []*os.File, error) {
	if spec.TTY {
		master, slave, err := openPTY()
		if err != nil {
			return nil, nil, err
		}
		p.master = master
		if spec.Size.Cols > 0 && spec.Size.Rows > 0 {
			if err := setWinsize(master, spec.Size); err != nil {
				slave.Close()
				return nil, nil, err
			}
		}
		return []int{int(slave.Fd())}, []*os.File{slave}, nil
	}
	var (
		fds   []int
		owned []*os.File
	)
	fail := func(err error) ([]int, []*os.File, error) {
		for _, f := range owned {
			f.Close()
		}
		return nil, nil, err
	}
	if spec.Stdin == nil || spec.Stdout == nil || spec.Stderr == nil {
		if err := p.d.openDevNull(); err != nil {
			return fail(err)
		}
	}
	if spec.Stdin == nil {
		fds = append(fds, int(p.d.devnullR.Fd()))
	} else {
		r, w, err := os.Pipe()
		if err != nil {
			return fail(err)
		}
		fds, owned = append(fds, int(r.Fd())), append(owned, r)
		p.stdinW = w
	}
	for _, out := range []struct {
		w   io.Writer
		our **os.File
	}{{spec.Stdout, &p.stdoutR}, {spec.Stderr, &p.stderrR}} {
		if out.w == nil {
			fds = append(fds, int(p.d.devnullW.Fd()))
			continue
		}
		r, w, err := os.Pipe()
		if err != nil {
			return fail(err)
		}
		fds, owned = append(fds, int(w.Fd())), append(owned, w)
		*out.our = r
	}
	return fds, owned, nil
}

// openDevNull opens the driver's /dev/null for reading and for writing,
// once.
func (d *Driver) openDevNull() error {
	d.devnullOnce.Do(func() {
		d.devnullR, d.devnullErr = os.OpenFile(os.DevNull, os.O_RDONLY, 0)
		if d.devnullErr == nil {
			d.devnullW, d.devnullErr = os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		}
	})
	return d.devnullErr
}

// run starts the copiers and the goroutine that waits for the exit.
func (p *process) run(ctx context.Context, spec runtime.ExecSpec) {
	// Stdout and Stderr are often one writer, or writers that are not safe
	// for concurrent use: the two copiers never write at the same time.
	var writeMu sync.Mutex
	type copier struct {
		w io.Writer
		r *os.File
	}
	var copiers []copier
	if p.master != nil {
		if spec.Stdout != nil {
			copiers = append(copiers, copier{spec.Stdout, p.master})
		} else {
			copiers = append(copiers, copier{io.Discard, p.master})
		}
		if spec.Stdin != nil {
			go func() {
				_, err := io.Copy(p.master, spec.Stdin)
				if err == nil {
					// End of input on a terminal is ^D (VEOF).
					_, _ = p.master.Write([]byte{4})
				}
			}()
		}
	} else {
		if p.stdoutR != nil {
			copiers = append(copiers, copier{spec.Stdout, p.stdoutR})
		}
		if p.stderrR != nil {
			copiers = append(copiers, copier{spec.Stderr, p.stderrR})
		}
		if p.stdinW != nil {
			go func() {
				_, _ = io.Copy(p.stdinW, spec.Stdin)
				p.stdinW.Close()
			}()
		}
	}
	// copied is closed once the last copier is done (at once if none).
	p.copied = make(chan struct{})
	left := new(atomic.Int32)
	left.Store(int32(len(copiers)))
	if len(copiers) == 0 {
		close(p.copied)
	}
	for _, c := range copiers {
		go func() {
			_, _ = io.Copy(&lockedWriter{mu: &writeMu, w: c.w}, c.r)
			if left.Add(-1) == 0 {
				close(p.copied)
			}
		}()
	}
	go p.wait(ctx, spec.Timeout)
}

// wait reads the supervisor's messages until the exit, while watch kills
// the command on timeout or when ctx ends; then it waits for the output,
// and records the result.
func (p *process) wait(ctx context.Context, timeout time.Duration) {
	defer close(p.done)
	stop := make(chan struct{})
	if timeout > 0 || ctx.Done() != nil {
		go p.watch(ctx, timeout, stop)
	}
	var (
		r   sandboxinit.Reply
		got bool
	)
	for {
		fds, err := sandboxinit.Receive(p.conn, &r)
		unixCloseAll(fds)
		if err != nil {
			break
		}
		if r.Op == sandboxinit.OpExit {
			got = true
			break
		}
	}
	p.sendMu.Lock()
	p.exitSeen = true // no kill from watch after this
	p.sendMu.Unlock()
	close(stop)
	// Output: the command's own copies of the pipes are closed; wait for
	// what is in flight, but not for background processes that keep them.
	if p.stdinW != nil {
		p.stdinW.Close()
	}
	select {
	case <-p.copied:
	default:
		t := time.NewTimer(outputGrace)
		select {
		case <-p.copied:
		case <-t.C:
			p.closeAll()
			<-p.copied
		}
		t.Stop()
	}
	p.closeAll()
	if !got {
		p.err = errdefs.New(errdefs.ErrUnavailable, "unavailable",
			"workspace %s: the supervisor went away before the command's exit (workspace stopped?)", p.id)
		return
	}
	p.sendMu.Lock()
	p.res = runtime.ExitResult{ExitCode: r.ExitCode, TimedOut: p.timedOut}
	p.sendMu.Unlock()
	if r.Signal != 0 {
		p.res = runtime.SignalResult(syscall.Signal(r.Signal))
		p.res.TimedOut = p.timedOut
	}
	if p.oomKnown && (r.Signal == int(syscall.SIGKILL) || r.ExitCode == 128+int(syscall.SIGKILL)) {
		if n, ok := p.d.cg.oomKills(p.id); ok && n > p.oomBefore {
			p.res.OOMKilled = true
		}
	}
}

// watch kills the command on timeout or when ctx ends, until stop is
// closed (the exit was received).
func (p *process) watch(ctx context.Context, timeout time.Duration, stop <-chan struct{}) {
	var timer <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		timer = t.C
	}
	cancelled := ctx.Done()
	for {
		select {
		case <-stop:
			return
		case <-timer:
			timer = nil
			p.sendMu.Lock()
			if !p.exitSeen {
				p.timedOut = true
				_ = sandboxinit.Send(p.conn, sandboxinit.Request{Op: sandboxinit.OpKill})
			}
			p.sendMu.Unlock()
		case <-cancelled:
			cancelled = nil
			p.sendMu.Lock()
			if !p.exitSeen {
				_ = sandboxinit.Send(p.conn, sandboxinit.Request{Op: sandboxinit.OpKill})
			}
			p.sendMu.Unlock()
		}
	}
}

// closeAll releases the connection and our ends of the stdio. Safe to call
// more than once.
func (p *process) closeAll() {
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	for _, f := range []*os.File{p.master, p.stdinW, p.stdoutR, p.stderrR} {
		if f != nil {
			f.Close()
		}
	}
	if p.conn != nil {
		p.conn.Close()
	}
}

// send sends a control message; after the exit it is a no-op.
func (p *process) send(req sandboxinit.Request) {
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	_ = sandboxinit.Send(p.conn, req)
}

// Wait blocks until the command exited and its output was delivered, and
// returns the same result to every caller.
func (p *process) Wait() (runtime.ExitResult, error) {
	<-p.done
	return p.res, p.err
}

// Signal sends sig to the command's process group. Sending to an exited
// command is not an error.
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
	p.send(sandboxinit.Request{Op: sandboxinit.OpSignal, Signal: int(n)})
	return nil
}

// Resize changes the terminal size; errdefs.ErrFailedPrecondition without a
// TTY. Resizing an exited command is not an error.
func (p *process) Resize(ctx context.Context, size runtime.WindowSize) error {
	if !p.tty {
		return errdefs.New(errdefs.ErrFailedPrecondition, "no_tty", "the command has no terminal")
	}
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := setWinsize(p.master, size); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("resize terminal: %w", err)
	}
	return nil
}

// openPTY opens a new pseudo-terminal pair. The master is non-blocking (so
// reads go through Go's poller); the slave is for the command.
func openPTY() (master, slave *os.File, err error) {
	mfd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(mfd)
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	sfd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(mfd), unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno != 0 {
		n, err := unix.IoctlGetInt(mfd, unix.TIOCGPTN)
		if err != nil {
			unix.Close(mfd)
			return nil, nil, fmt.Errorf("pty number: %w", err)
		}
		s, err := unix.Open(fmt.Sprintf("/dev/pts/%d", n), unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			unix.Close(mfd)
			return nil, nil, fmt.Errorf("open pty slave: %w", err)
		}
		sfd = uintptr(s)
	}
	return os.NewFile(uintptr(mfd), "ptmx"), os.NewFile(sfd, "pts"), nil
}

// setWinsize sets a pty's size without taking the fd out of the poller.
func setWinsize(f *os.File, size runtime.WindowSize) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	err = rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: size.Rows, Col: size.Cols})
	})
	if err != nil {
		return err
	}
	return ierr
}

// lockedWriter serializes writes to w with mu.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}
