package sandboxinit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// Forward is the sandbox's end of the egress proxy for network mode
// allowlist. It listens on listenAddr (runtime.ProxyListenAddr, which
// HTTP_PROXY and friends point at) and relays every TCP connection, byte for
// byte, to the unix socket at socketPath, where the server's proxy decides
// what the sandbox may reach. The relay is protocol-blind: the proxy speaks
// HTTP to the client.
//
// Each direction is copied until EOF and then half-closed, so a client that
// shuts down its write side still reads the whole answer. If the socket
// cannot be dialled (the server is restarting, say) the client is answered
// 502 Bad Gateway.
//
// Forward returns nil once ctx is done, after closing the listener and every
// relayed connection, or an error if it cannot listen or accepting fails
// for good.
func Forward(ctx context.Context, listenAddr, socketPath string) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", listenAddr)
	if err != nil {
		return fmt.Errorf("proxy forwarder: %w", err)
	}
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		conns = nil
		mu.Unlock()
	})
	defer stop()
	// track registers c to be closed when ctx is done; false if it already is.
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if conns == nil {
			return false
		}
		conns[c] = struct{}{}
		return true
	}
	untrack := func(c net.Conn) {
		mu.Lock()
		if conns != nil {
			delete(conns, c)
		}
		mu.Unlock()
		c.Close()
	}

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				wg.Wait()
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			ln.Close()
			wg.Wait()
			return fmt.Errorf("proxy forwarder: accept on %s: %w", listenAddr, err)
		}
		backoff = 0
		if !track(c) {
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer untrack(c)
			var d net.Dialer
			u, err := d.DialContext(ctx, "unix", socketPath)
			if err != nil {
				if ctx.Err() != nil {
					return // stopping: just close
				}
				// Clients of this address speak HTTP to a proxy: tell them.
				c.SetDeadline(time.Now().Add(time.Second))
				io.WriteString(c, proxyUnreachable)
				closeWrite(c)
				io.CopyN(io.Discard, c, 256<<10)
				return
			}
			if !track(u) {
				u.Close()
				return
			}
			defer untrack(u)
			relay(c, u)
		}()
	}
}

const proxyUnreachable = "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n" +
	"Content-Length: 42\r\nConnection: close\r\n\r\ncorral: the egress proxy is not reachable\n"

// relay copies both ways between the client c and the proxy connection u
// until both directions have ended. io.Copy between a TCP and a unix stream
// socket uses splice(2) on Linux, so no bytes pass through user space.
//
// The end of one direction is passed on as a half-close, never as a close,
// so that the other direction still delivers everything: when the proxy
// refuses a request and hangs up while the client is still sending its
// body, the client must still read the refusal. Only a failure to write to
// the client ends everything at once.
func relay(c, u net.Conn) {
	done := make(chan struct{})
	go func() {
		io.Copy(u, c) // ends at the client's EOF, or when the proxy stops reading
		closeWrite(u)
		close(done)
	}()
	if _, err := io.Copy(c, u); err != nil {
		c.Close()
		u.Close()
	} else {
		closeWrite(c)
	}
	<-done
	// Input the client sent that nobody read would make closing c reset
	// the connection, which can destroy the answer still on its way.
	c.SetReadDeadline(time.Now().Add(time.Second))
	io.CopyN(io.Discard, c, 256<<10)
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}
