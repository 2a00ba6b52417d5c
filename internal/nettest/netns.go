package nettest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	goruntime "runtime"

	"github.com/vishvananda/netns"
)

// NewNetns makes a network namespace and returns a handle to it, leaving
// the calling goroutine's thread where it was. The caller closes it.
func NewNetns() (netns.NsHandle, error) {
	type res struct {
		ns  netns.NsHandle
		err error
	}
	c := make(chan res, 1)
	go func() {
		goruntime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			c <- res{err: err}
			return // the thread dies with the locked goroutine
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			c <- res{err: err}
			return
		}
		if err := netns.Set(orig); err != nil {
			ns.Close()
			c <- res{err: errors.Join(err, errors.New("thread left in the new namespace"))}
			return // still in ns: let the thread die
		}
		goruntime.UnlockOSThread()
		c <- res{ns: ns}
	}()
	r := <-c
	return r.ns, r.err
}

// ListenIn opens a TCP listener on addr inside ns (a socket belongs to the
// namespace it was made in, wherever it is used after).
func ListenIn(ns netns.NsHandle, addr netip.AddrPort) (net.Listener, error) {
	type res struct {
		ln  net.Listener
		err error
	}
	c := make(chan res, 1)
	go func() {
		goruntime.LockOSThread()
		// Never unlocked: the thread, moved to ns, ends with this goroutine.
		if err := netns.Set(ns); err != nil {
			c <- res{err: err}
			return
		}
		ln, err := net.Listen("tcp", addr.String())
		c <- res{ln, err}
	}()
	r := <-c
	if r.err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, r.err)
	}
	return r.ln, nil
}
