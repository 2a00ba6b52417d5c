// Package sandboxinit is `corral init`: the program that runs as PID 1 inside
// every sandbox. The corral binary is static, so drivers bind-mount it
// read-only into containers and run it there; the process driver starts it in
// the workspace's namespaces. As PID 1 it reaps every orphaned process, so no
// zombie outlives its command, and exits when told to stop.
package sandboxinit

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// Main runs `corral init` with the arguments after "init" and returns the
// exit code.
func Main(args []string) int {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprintln(os.Stderr, "usage: corral init   (PID 1 of a sandbox: reaps zombies until SIGTERM)")
		return 0
	}
	reapForever()
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
