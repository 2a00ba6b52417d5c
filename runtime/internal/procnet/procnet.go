// Package procnet reads what a container's processes do from the host's
// /proc, for drivers whose engine runs on this machine.
package procnet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
)

// Listening reports whether a TCP socket in process pid's network namespace
// listens on addr (an IPv4 address and port). It reads /proc/PID/net/tcp,
// so it works for any process the caller may inspect, in any namespace.
func Listening(pid int, addr netip.AddrPort) bool {
	if pid <= 0 || !addr.Addr().Is4() {
		return false
	}
	a := addr.Addr().As4()
	// /proc/net/tcp writes the address as a little-endian hex word.
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], addr.Port())
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/net/tcp")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && f[1] == want && f[3] == "0A" { // 0A: TCP_LISTEN
			return true
		}
	}
	return false
}

// ErrExited is returned by WaitListening when alive reports false.
var ErrExited = errors.New("the process exited before it listened")

// WaitListening returns nil once Listening(pid, addr), ErrExited as soon as
// alive() is false, or ctx's error. It polls every 5ms: a forwarder
// listens within milliseconds of its start.
func WaitListening(ctx context.Context, pid int, addr netip.AddrPort, alive func() bool) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if Listening(pid, addr) {
			return nil
		}
		if !alive() {
			return ErrExited
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// ForwarderWait bounds how long WaitForwarder waits.
const ForwarderWait = 10 * time.Second

// WaitForwarder returns once the egress forwarder of `corral init --proxy`
// listens on runtime.ProxyListenAddr in the network namespace of the
// container whose PID 1 is host process pid, so that a workspace's first
// command finds it. alive reports whether pid is still that container's
// PID 1. A forwarder that never listens is errdefs.ErrFailedPrecondition
// (init_failed or proxy_unavailable).
func WaitForwarder(ctx context.Context, pid int, alive func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, ForwarderWait)
	defer cancel()
	err := WaitListening(ctx, pid, netip.MustParseAddrPort(runtime.ProxyListenAddr), alive)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrExited):
		return errdefs.New(errdefs.ErrFailedPrecondition, "init_failed", "corral init exited in the workspace (see the container's log)")
	case errors.Is(err, context.DeadlineExceeded):
		return errdefs.New(errdefs.ErrFailedPrecondition, "proxy_unavailable",
			"the egress proxy forwarder did not listen on %s within %s", runtime.ProxyListenAddr, ForwarderWait)
	}
	return err
}
