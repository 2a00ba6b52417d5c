package sandboxinit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/corralhq/corral/runtime"
	"golang.org/x/sys/unix"
)

const proxyAddr = runtime.ProxyListenAddr

// supervisor is `corral init --serve`: it starts commands and reaps every
// process of the workspace.
type supervisor struct {
	// mu is held while forking and while reaping, so that a command's exit
	// is never reaped before its pid is registered in execs.
	mu    sync.Mutex
	execs map[int]*command
	// stopping is set (under mu) before the final kill: nothing starts
	// after it, even on a connection that was open before (the driver
	// dials its next connection ahead).
	stopping bool
	seq      atomic.Int64 // numbers commands for their CORRAL_EXEC marker

	launcher      chan func() // runs forks on the launcher thread (startLauncher)
	launcherReady chan struct{}
	cgroupFD      int // v2: commands start in this directory (clone3), or -1
}

// command is one started command, identified by its pid, which is also its
// session and process group ID (it is started with setsid).
type command struct {
	pid    int
	marker string // value of the command's CORRAL_EXEC variable
	mu     sync.Mutex
	exited bool
	done   chan syscall.WaitStatus
}

// supervise sets up the sandbox as f says, reports readiness on f.ReadyFD
// and serves exec requests until SIGTERM.
func supervise(f Flags) error {
	ready := func(err error) {
		if f.ReadyFD <= 0 {
			return
		}
		w := os.NewFile(uintptr(f.ReadyFD), "ready")
		if err != nil {
			fmt.Fprintf(w, "error: %v\n", err)
		} else {
			fmt.Fprintln(w, "ok")
		}
		w.Close()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Signals first, so that no child exits unnoticed.
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs, syscall.SIGCHLD)
	if os.Getpid() != 1 {
		// As PID 1 of a pid namespace we are stopped with SIGKILL from
		// outside; without handlers, commands inside cannot signal us.
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	}

	// Order matters: the socket and the cgroups are reached through
	// paths that setup hides or makes read-only.
	var ln *net.UnixListener
	if f.Serve != "" && !f.Check {
		_ = os.Remove(f.Serve)
		var err error
		ln, err = net.ListenUnix("unixpacket", &net.UnixAddr{Name: f.Serve, Net: "unixpacket"})
		if err != nil {
			err = fmt.Errorf("listen on %s: %w", f.Serve, err)
			ready(err)
			return err
		}
		defer ln.Close()
	}
	s := &supervisor{execs: map[int]*command{}, cgroupFD: -1}
	if f.CgroupV2 && len(f.Cgroups) == 1 {
		fd, err := unix.Open(f.Cgroups[0], unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			err = fmt.Errorf("open cgroup: %w", err)
			ready(err)
			return err
		}
		s.cgroupFD = fd
	}
	var v1 []string
	if !f.CgroupV2 {
		v1 = f.Cgroups
	}
	if err := s.startLauncher(v1, f.Proc && os.Geteuid() == 0); err != nil {
		ready(err)
		return err
	}
	if err := setup(f); err != nil {
		ready(err)
		return err
	}
	if f.Proxy != "" {
		if err := startForwarder(ctx, f.Proxy); err != nil {
			ready(err)
			return err
		}
	}
	if f.Check {
		ready(nil)
		return nil
	}
	ready(nil)
	go func() {
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				time.Sleep(10 * time.Millisecond)
				continue
			}
			go s.serve(c)
		}
	}()
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			s.reap()
			continue
		}
		s.mu.Lock()
		s.stopping = true
		s.mu.Unlock()
		ln.Close()
		killDescendants()
		return nil
	}
	return nil
}

// setup prepares the namespaces the supervisor was started in.
func setup(f Flags) error {
	if f.Proc {
		// Our mounts must not leak into the host's mount namespace.
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return fmt.Errorf("make mounts private: %w", err)
		}
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mount /proc: %w", err)
		}
		if f.Confine {
			if err := confine(f.Home, f.Hide, f.Proxy, f.TmpSize, f.ResolvConf); err != nil {
				return err
			}
		}
	}
	if f.Loopback {
		if err := loopbackUp(); err != nil {
			return err
		}
	}
	if f.Hostname != "" {
		if err := unix.Sethostname([]byte(f.Hostname)); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
	}
	if f.NoFile > 0 {
		// syscall.Setrlimit (not x/sys/unix) also tells the Go runtime not
		// to restore its original limit in the children it starts.
		lim := syscall.Rlimit{Cur: uint64(f.NoFile), Max: uint64(f.NoFile)}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("set RLIMIT_NOFILE to %d: %w", f.NoFile, err)
		}
	}
	if os.Getpid() != 1 {
		// Outside a pid namespace, orphans come to us instead of the host's
		// init, so we can reap them and find them at Stop.
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("become a subreaper: %w", err)
		}
	}
	return nil
}

// loopbackUp brings up lo, which a new network namespace has down.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback: socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback: get flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback: set up: %w", err)
	}
	return nil
}

// startForwarder runs Forward in the background and returns once it
// listens, or with its error.
func startForwarder(ctx context.Context, socket string) error {
	errc := make(chan error, 1)
	go func() { errc <- Forward(ctx, proxyAddr, socket) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-errc:
			return fmt.Errorf("proxy forwarder: %w", err)
		default:
		}
		if tcpListening(proxyAddr) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("proxy forwarder did not start listening on %s", proxyAddr)
		}
		time.Sleep(time.Millisecond)
	}
}

// tcpListening reports whether an IPv4 socket listens on addr in our
// network namespace, without connecting to it.
func tcpListening(addr string) bool {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return false
	}
	ip := ap.Addr().As4()
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ap.Port())
	b, err := os.ReadFile("/proc/self/net/tcp")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 3 && fields[1] == want && fields[3] == "0A" {
			return true
		}
	}
	return false
}

// serve runs one command for one connection.
func (s *supervisor) serve(c *net.UnixConn) {
	defer c.Close()
	var req Request
	fds, err := Receive(c, &req)
	if err != nil {
		return
	}
	if req.Op != OpExec || len(req.Argv) == 0 {
		closeAll(fds)
		_ = Send(c, Reply{Op: OpError, Error: "first message must be an exec with an argv"})
		return
	}
	cmd, code, msg := s.start(req, fds)
	if cmd == nil {
		_ = Send(c, Reply{Op: OpStarted})
		_ = Send(c, Reply{Op: OpExit, ExitCode: code, Error: msg})
		return
	}
	if err := Send(c, Reply{Op: OpStarted, Pid: cmd.pid}); err != nil {
		killTree(cmd.pid, cmd.marker)
		<-cmd.done
		return
	}
	// Control messages until the driver hangs up; a hang-up before the
	// exit kills the command's tree.
	hangup := make(chan struct{})
	go func() {
		defer close(hangup)
		for {
			var ctl Request
			fds, err := Receive(c, &ctl)
			closeAll(fds)
			if err != nil {
				return
			}
			switch ctl.Op {
			case OpSignal:
				cmd.signal(syscall.Signal(ctl.Signal))
			case OpKill:
				killTree(cmd.pid, cmd.marker)
			}
		}
	}()
	var ws syscall.WaitStatus
	select {
	case ws = <-cmd.done:
	case <-hangup:
		killTree(cmd.pid, cmd.marker)
		<-cmd.done
		return
	}
	r := Reply{Op: OpExit}
	switch {
	case ws.Signaled():
		r.Signal = int(ws.Signal())
		r.ExitCode = 128 + r.Signal
	default:
		r.ExitCode = ws.ExitStatus()
	}
	_ = Send(c, r)
	// The driver hangs up once it has the result.
	<-hangup
}

// start starts req with the passed stdio fds and closes them. It returns
// the command, or nil with the exit code and message of a command that
// could not be started.
func (s *supervisor) start(req Request, fds []int) (*command, int, string) {
	files := make([]*os.File, 0, 3)
	for _, fd := range fds {
		files = append(files, os.NewFile(uintptr(fd), "stdio"))
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	switch {
	case req.TTY && len(files) == 1:
		files = []*os.File{files[0], files[0], files[0]}
	case !req.TTY && len(files) == 3:
	default:
		return nil, 126, fmt.Sprintf("corral: exec needs 3 stdio fds (or 1 with tty), got %d", len(files))
	}
	fail := func(code int, format string, args ...any) (*command, int, string) {
		msg := fmt.Sprintf(format, args...)
		fmt.Fprintln(files[2], msg)
		return nil, code, msg
	}
	// The marker lets killTree find descendants that left the command's
	// session and lost their parent (daemons): they inherit it.
	marker := strconv.FormatInt(s.seq.Add(1), 10)
	path, err := lookPath(req.Argv[0], req.Env, req.Dir)
	if err != nil {
		code := 127
		if errors.Is(err, os.ErrPermission) {
			code = 126
		}
		return fail(code, "corral: %s: %v", req.Argv[0], err)
	}
	attr := &os.ProcAttr{
		Dir:   req.Dir,
		Env:   append(req.Env, execMarker+"="+marker),
		Files: files,
		Sys:   &syscall.SysProcAttr{Setsid: true, Setctty: req.TTY, Ctty: 0},
	}
	if req.UID != 0 || req.GID != 0 {
		attr.Sys.Credential = &syscall.Credential{Uid: req.UID, Gid: req.GID, Groups: []uint32{}}
	}
	if s.cgroupFD >= 0 {
		attr.Sys.UseCgroupFD, attr.Sys.CgroupFD = true, s.cgroupFD
	}
	cmd, err := s.fork(path, req.Argv, attr)
	if cmd != nil {
		cmd.marker = marker
	}
	if err != nil {
		code := 126
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			code = 127
		}
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fail(code, "corral: %s: %v", req.Argv[0], err)
	}
	return cmd, 0, ""
}

// keptCaps are the capabilities commands keep: Docker's default set for
// containers without CAP_MKNOD.
var keptCaps = map[int]bool{
	unix.CAP_CHOWN: true, unix.CAP_DAC_OVERRIDE: true, unix.CAP_FSETID: true, unix.CAP_FOWNER: true,
	unix.CAP_NET_RAW: true, unix.CAP_SETGID: true, unix.CAP_SETUID: true, unix.CAP_SETFCAP: true,
	unix.CAP_SETPCAP: true, unix.CAP_NET_BIND_SERVICE: true, unix.CAP_SYS_CHROOT: true,
	unix.CAP_KILL: true, unix.CAP_AUDIT_WRITE: true,
}

// dropBoundingCaps drops every other capability from the calling thread's
// bounding set (per thread: the caller must be locked to its thread).
func dropBoundingCaps() error {
	last := unix.CAP_LAST_CAP
	if b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			last = n
		}
	}
	for c := 0; c <= last; c++ {
		if keptCaps[c] {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	return nil
}

// fork starts the process and registers it for reaping, in the
// workspace's cgroups.
func (s *supervisor) fork(path string, argv []string, attr *os.ProcAttr) (*command, error) {
	if s.launcher == nil {
		return s.forkHere(path, argv, attr)
	}
	var (
		cmd *command
		err error
	)
	done := make(chan struct{})
	s.launcher <- func() {
		cmd, err = s.forkHere(path, argv, attr)
		close(done)
	}
	<-done
	return cmd, err
}

// startLauncher starts the thread that forks every command. A child
// inherits per-thread state from the thread that forks it, and this one
// thread carries what commands must start with:
//
//   - on cgroup v1, membership of the workspace's cgroups (dirs), so that
//     commands are inside their limits from their first instruction while
//     the rest of the supervisor stays outside: its memory is not charged to
//     the workspace and only this thread counts against pids. (Moving a
//     thread per command would cost about a millisecond per hierarchy:
//     cgroup v1 migration waits for an RCU grace period.)
//   - with dropCaps, a capability bounding set reduced to what Docker
//     grants containers by default, minus CAP_MKNOD, so that a command
//     running as root cannot undo the file system confinement (remount,
//     unmount), load modules, trace the supervisor, open files by handle
//     or reconfigure the network; and no_new_privs, so that a setuid
//     program does not hand the capabilities back to a command running as
//     an unprivileged uid.
//
// It must not be the main thread, which stands for the whole process in
// cgroup.procs and to the OOM killer.
func (s *supervisor) startLauncher(dirs []string, dropCaps bool) error {
	reqs := make(chan func())
	errc := make(chan error, 1)
	var run func()
	run = func() {
		goruntime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if unix.Gettid() == unix.Getpid() {
			// Hold the main thread until another goroutine (on another
			// thread, since this one is locked) has taken the job.
			go run()
			<-s.launcherReady
			goruntime.UnlockOSThread()
			return
		}
		tid := []byte(strconv.Itoa(unix.Gettid()))
		for _, dir := range dirs {
			if err := os.WriteFile(filepath.Join(dir, "tasks"), tid, 0); err != nil {
				errc <- fmt.Errorf("enter cgroup %s: %w", dir, err)
				close(s.launcherReady)
				return
			}
		}
		if dropCaps {
			if err := dropBoundingCaps(); err != nil {
				errc <- err
				close(s.launcherReady)
				return
			}
			// No command regains privileges by executing a setuid-root
			// (or file-capability) program of the host: a command running
			// as the workspace's unprivileged uid would otherwise be root
			// again, with the bounding set's capabilities
			// (CAP_DAC_OVERRIDE...). Per thread, inherited by every fork.
			if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
				errc <- fmt.Errorf("set no_new_privs: %w", err)
				close(s.launcherReady)
				return
			}
		}
		errc <- nil
		close(s.launcherReady)
		for f := range reqs {
			f()
		}
	}
	s.launcherReady = make(chan struct{})
	go run()
	if err := <-errc; err != nil {
		return err
	}
	s.launcher = reqs
	return nil
}

func (s *supervisor) forkHere(path string, argv []string, attr *os.ProcAttr) (*command, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return nil, errors.New("the workspace is stopping")
	}
	p, err := os.StartProcess(path, argv, attr)
	if err != nil {
		return nil, err
	}
	cmd := &command{pid: p.Pid, done: make(chan syscall.WaitStatus, 1)}
	s.execs[p.Pid] = cmd
	_ = p.Release() // reaped by s.reap, never by os.Process.Wait
	return cmd, nil
}

// signal sends sig to the command's process group, unless it has exited.
func (c *command) signal(sig syscall.Signal) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.exited {
		return
	}
	if err := syscall.Kill(-c.pid, sig); err != nil {
		_ = syscall.Kill(c.pid, sig)
	}
}

// reap collects every exited child and hands commands their status.
func (s *supervisor) reap() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
		if cmd := s.execs[pid]; cmd != nil {
			delete(s.execs, pid)
			cmd.mu.Lock()
			cmd.exited = true
			cmd.mu.Unlock()
			cmd.done <- ws
		}
	}
}

// lookPath finds argv0 as a shell would, in the command's PATH, relative
// paths from dir.
func lookPath(argv0 string, env []string, dir string) (string, error) {
	check := func(p string) error {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return os.ErrPermission
		}
		return nil
	}
	if strings.Contains(argv0, "/") {
		p := argv0
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if err := check(p); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return "", errors.New("no such file or directory")
			}
			if errors.Is(err, os.ErrPermission) {
				return "", fmt.Errorf("permission denied: %w", os.ErrPermission)
			}
			return "", err
		}
		return p, nil
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	denied := false
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		if !filepath.IsAbs(d) {
			d = filepath.Join(dir, d)
		}
		p := filepath.Join(d, argv0)
		err := check(p)
		if err == nil {
			return p, nil
		}
		if errors.Is(err, os.ErrPermission) {
			denied = true
		}
	}
	if denied {
		return "", fmt.Errorf("permission denied: %w", os.ErrPermission)
	}
	return "", errors.New("command not found")
}

// proc is what killTree needs to know of a process.
type proc struct {
	pid, ppid, sid int
	zombie         bool
}

// scanProcs lists the processes visible in /proc.
func scanProcs() []proc {
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	out := make([]proc, 0, len(names))
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + n + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp session ...; comm may hold anything.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 4 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		sid, _ := strconv.Atoi(f[3])
		out = append(out, proc{pid: pid, ppid: ppid, sid: sid, zombie: f[0] == "Z"})
	}
	return out
}

// execMarker names the environment variable that marks a command's
// processes.
const execMarker = "CORRAL_EXEC"

// killTree kills the command whose pid (and session ID) is root and every
// process it started: its session, the descendants of those even if they
// moved to other sessions, and orphans that came to us (their parent died)
// carrying the command's marker in their environment. It stops them first
// and rescans, so that nothing forks its way out while they are being
// killed. A process that left the session, lost its parent and replaced
// its environment escapes; Stop still ends it.
func killTree(root int, marker string) {
	self := os.Getpid()
	members := map[int]bool{}
	tag := []byte(execMarker + "=" + marker + "\x00")
	marked := func(pid int) bool {
		env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
		return err == nil && (bytes.HasPrefix(env, tag) || bytes.Contains(env, append([]byte{0}, tag...)))
	}
	checked := map[int]bool{}
	for range 50 {
		procs := scanProcs()
		grew := false
		for changed := true; changed; {
			changed = false
			for _, p := range procs {
				if members[p.pid] || p.pid == self || p.zombie {
					continue
				}
				in := p.pid == root || p.sid == root || members[p.ppid]
				if !in && p.ppid == self && !checked[p.pid] {
					checked[p.pid] = true
					in = marked(p.pid)
				}
				if in {
					members[p.pid] = true
					_ = syscall.Kill(p.pid, syscall.SIGSTOP)
					changed, grew = true, true
				}
			}
		}
		if !grew {
			break
		}
	}
	for pid := range members {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// killDescendants kills every process that descends from this one: the
// whole workspace. In a pid namespace the kernel does it anyway when we
// exit; outside one, we are a subreaper, so orphans are our descendants too.
func killDescendants() {
	self := os.Getpid()
	members := map[int]bool{self: true}
	for range 50 {
		grew := false
		procs := scanProcs()
		for changed := true; changed; {
			changed = false
			for _, p := range procs {
				if !members[p.pid] && !p.zombie && members[p.ppid] {
					members[p.pid] = true
					_ = syscall.Kill(p.pid, syscall.SIGSTOP)
					changed, grew = true, true
				}
			}
		}
		if !grew {
			break
		}
	}
	for pid := range members {
		if pid != self {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
