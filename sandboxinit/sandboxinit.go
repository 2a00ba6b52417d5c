// Package sandboxinit is `corral init`: the program that runs as PID 1 inside
// every sandbox. The corral binary is static, so drivers bind-mount it
// read-only into containers and run it there; the process driver starts it in
// the workspace's namespaces. As PID 1 it reaps every orphaned process, so no
// zombie outlives its command, and exits when told to stop.
//
// Without flags it only reaps (what container drivers run). With --serve it
// is the process driver's per-workspace supervisor: it sets up the
// namespaces it was started in (loopback, /proc, hostname), applies
// RLIMIT_NOFILE, optionally runs the egress forwarder (--proxy), and starts
// commands on request over a unix socket (see Request and Reply).
package sandboxinit

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Flags are the options of `corral init`.
type Flags struct {
	Serve    string // unix socket to serve exec requests on; "" = reap only
	ReadyFD  int    // fd to write "ok" (or an error) to once set up, then close
	Proc     bool   // make mounts private and mount a fresh /proc (new mount+pid namespaces)
	Loopback bool   // bring up lo (new network namespace)
	Hostname string // set the hostname (new UTS namespace)
	NoFile   int64  // RLIMIT_NOFILE (soft and hard) for every command; 0 = inherit
	Proxy    string // unix socket of the egress proxy; runs Forward on runtime.ProxyListenAddr
	Check    bool   // set up as for Serve, report, and exit: probes what the host allows
	// Confine (with Proc, in a new mount namespace) limits what commands
	// can touch of the host's file system: every mount is made read-only,
	// Hide (the runtime's data directory: other workspaces, sockets; the
	// egress proxy's socket directory) are
	// covered by an empty tmpfs and its mounts detached, /tmp and /dev/shm
	// are fresh tmpfs, and Home alone stays writable (see confine).
	Confine bool
	Home    string
	Hide    []string
	TmpSize int64 // size of the /tmp and /dev/shm tmpfs in bytes; 0 = the kernel's default (half of RAM)
	// Cgroups are the cgroup directories every command starts in (one per
	// v1 hierarchy, or one v2 directory with CgroupV2). The supervisor
	// itself stays outside them, so its memory and threads do not count
	// against the workspace's limits.
	Cgroups  []string
	CgroupV2 bool
	// ResolvConf (with Confine) is a host file bound read-only over
	// /etc/resolv.conf: the resolvers a sandbox on its own network can
	// reach (the process driver's open mode).
	ResolvConf string
}

// Args returns the command-line arguments (after "init") that Main parses
// back into f.
func (f Flags) Args() []string {
	var a []string
	if f.Serve != "" {
		a = append(a, "--serve", f.Serve)
	}
	if f.ReadyFD > 0 {
		a = append(a, "--ready-fd", fmt.Sprint(f.ReadyFD))
	}
	if f.Proc {
		a = append(a, "--proc")
	}
	if f.Loopback {
		a = append(a, "--loopback")
	}
	if f.Hostname != "" {
		a = append(a, "--hostname", f.Hostname)
	}
	if f.NoFile > 0 {
		a = append(a, "--nofile", fmt.Sprint(f.NoFile))
	}
	if f.Proxy != "" {
		a = append(a, "--proxy", f.Proxy)
	}
	if f.Check {
		a = append(a, "--check")
	}
	if f.Confine {
		a = append(a, "--confine")
	}
	if f.Home != "" {
		a = append(a, "--home", f.Home)
	}
	for _, h := range f.Hide {
		a = append(a, "--hide", h)
	}
	if f.TmpSize > 0 {
		a = append(a, "--tmp-size", fmt.Sprint(f.TmpSize))
	}
	for _, c := range f.Cgroups {
		a = append(a, "--cgroup", c)
	}
	if f.CgroupV2 {
		a = append(a, "--cgroup-v2")
	}
	if f.ResolvConf != "" {
		a = append(a, "--resolv-conf", f.ResolvConf)
	}
	return a
}

func parseFlags(args []string, stderr io.Writer) (Flags, error) {
	var f Flags
	fs := flag.NewFlagSet("corral init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: corral init [flags]   (PID 1 of a sandbox: reaps zombies until SIGTERM)")
		fs.PrintDefaults()
	}
	fs.StringVar(&f.Serve, "serve", "", "serve exec requests on this unix socket (process runtime supervisor)")
	fs.IntVar(&f.ReadyFD, "ready-fd", 0, "write \"ok\" or an error to this fd once set up, then close it")
	fs.BoolVar(&f.Proc, "proc", false, "make mounts private and mount a fresh /proc")
	fs.BoolVar(&f.Loopback, "loopback", false, "bring up the loopback interface")
	fs.StringVar(&f.Hostname, "hostname", "", "set the hostname")
	fs.Int64Var(&f.NoFile, "nofile", 0, "RLIMIT_NOFILE for every command")
	fs.StringVar(&f.Proxy, "proxy", "", "relay "+proxyAddr+" to the egress proxy at this unix socket")
	fs.BoolVar(&f.Check, "check", false, "set up, report on --ready-fd or stderr, and exit")
	fs.BoolVar(&f.Confine, "confine", false, "with --proc: read-only host file system, fresh /tmp, writable --home only")
	fs.StringVar(&f.Home, "home", "", "the workspace directory, kept writable")
	fs.Int64Var(&f.TmpSize, "tmp-size", 0, "with --confine, size of /tmp and /dev/shm in bytes")
	fs.Func("hide", "cover this directory with an empty tmpfs, keeping --home and --proxy reachable (repeatable)", func(v string) error {
		f.Hide = append(f.Hide, v)
		return nil
	})
	fs.Func("cgroup", "start commands in this cgroup directory (repeatable: one per v1 hierarchy)", func(v string) error {
		f.Cgroups = append(f.Cgroups, v)
		return nil
	})
	fs.BoolVar(&f.CgroupV2, "cgroup-v2", false, "--cgroup is a single cgroup v2 directory")
	fs.StringVar(&f.ResolvConf, "resolv-conf", "", "with --confine, bind this file read-only over /etc/resolv.conf")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return f, nil
}

// Main runs `corral init` with the arguments after "init" and returns the
// exit code.
func Main(args []string) int {
	f, err := parseFlags(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "corral init:", err)
		return 2
	}
	if f.Serve == "" && !f.Check {
		// PID 1 of a container: reap, and relay to the egress proxy when
		// the workspace's network mode is allowlist.
		if f.Proxy != "" {
			go func() {
				if err := Forward(context.Background(), proxyAddr, f.Proxy); err != nil {
					fmt.Fprintln(os.Stderr, "corral init: egress forwarder:", err)
				}
			}()
		}
		reapForever()
		return 0
	}
	if err := supervise(f); err != nil {
		fmt.Fprintln(os.Stderr, "corral init:", err)
		return 1
	}
	return 0
}

// reapForever reaps children until SIGTERM, SIGINT or SIGHUP arrives.
func reapForever() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			return
		}
		reap()
	}
}

// reap collects every exited child without blocking.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
