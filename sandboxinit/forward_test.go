package sandboxinit_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corralhq/corral/internal/nettest"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/sandboxinit"
)

// startForward runs Forward on a free loopback port and returns its address
// once it accepts connections. Cancelling the returned func stops it and
// checks that Forward returned nil.
func startForward(t *testing.T, socketPath string) (string, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sandboxinit.Forward(ctx, addr, socketPath) }()
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		select {
		case err := <-done:
			cancel()
			t.Fatalf("Forward on %s returned early: %v", addr, err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Forward returned %v after cancel, want nil", err)
			}
		})
	}
	t.Cleanup(stop)
	return addr, stop
}

func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fw") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestForwardRelaysBothWaysWithHalfClose: bytes go through unchanged, and
// the client's half-close reaches the server, whose answer still comes back.
func TestForwardRelaysBothWaysWithHalfClose(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s.sock")
	uln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer uln.Close()
	go func() {
		for {
			c, err := uln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				in, _ := io.ReadAll(c) // until the relayed half-close
				fmt.Fprintf(c, "%d:%s", len(in), strings.ToUpper(string(in)))
			}()
		}
	}()
	addr, _ := startForward(t, sock)

	var wg sync.WaitGroup
	for i := range 8 { // concurrent connections stay apart
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			msg := fmt.Sprintf("hello %d %s", i, strings.Repeat("x", 100<<10))
			if _, err := io.WriteString(c, msg); err != nil {
				t.Error(err)
				return
			}
			c.(*net.TCPConn).CloseWrite()
			out, err := io.ReadAll(c)
			if want := fmt.Sprintf("%d:%s", len(msg), strings.ToUpper(msg)); err != nil || string(out) != want {
				t.Errorf("connection %d: got %d bytes (%v), want %d", i, len(out), err, len(want))
			}
		}()
	}
	wg.Wait()
}

// TestForwardStopsOnCancel: cancelling closes the listener and the relayed
// connections, and Forward returns nil.
func TestForwardStopsOnCancel(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s.sock")
	uln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer uln.Close()
	// The relay of the test's connection is the one that brings an "x"
	// (startForward's probe brings nothing).
	accepted := make(chan net.Conn, 1)
	go func() {
		for {
			c, err := uln.Accept()
			if err != nil {
				return
			}
			go func() {
				b := make([]byte, 1)
				if _, err := c.Read(b); err == nil && b[0] == 'x' {
					accepted <- c
					return
				}
				c.Close()
			}()
		}
	}()
	addr, stop := startForward(t, sock)

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "x") // makes sure the relay has dialled the socket
	server := <-accepted
	defer server.Close()

	stop()
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("relayed connection still open after cancel (read %d bytes)", n)
	}
	server.SetDeadline(time.Now().Add(time.Minute)) // against hanging only
	if _, err := io.ReadAll(server); err != nil {
		t.Fatalf("the proxy side of the relay did not see it end: %v", err)
	}
	if c2, err := net.Dial("tcp", addr); err == nil {
		c2.Close()
		t.Fatal("listener still accepts after cancel")
	}
}

// TestForwardUnreachableSocket: with no proxy behind it, the client is
// answered 502 rather than left hanging.
func TestForwardUnreachableSocket(t *testing.T) {
	addr, _ := startForward(t, filepath.Join(shortTempDir(t), "missing.sock"))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute)) // against hanging only
	go func() {
		io.WriteString(c, "POST http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 1048576\r\n\r\n")
		io.WriteString(c, strings.Repeat("x", 1<<20)) // may fail once the forwarder hangs up
	}()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || string(body) != "corral: the egress proxy is not reachable\n" {
		t.Fatalf("got %d %q, want 502", resp.StatusCode, body)
	}
}

func TestForwardListenError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = sandboxinit.Forward(context.Background(), ln.Addr().String(), "/nonexistent.sock")
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Forward on a busy address: %v", err)
	}
}

type resolver map[string][]netip.Addr

func (r resolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := r[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// TestForwardThroughProxy is the sandbox's whole path: a client using
// HTTP_PROXY → Forward on loopback → the workspace's unix socket → the
// egress proxy → the origin, and a refusal for a host not allowed.
func TestForwardThroughProxy(t *testing.T) {
	// The origin is another machine at a private address, which the
	// operator's AllowPrivate opens (loopback it never does).
	up := nettest.StartPrivateHost(t)
	origin := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s", r.Host)
	}))
	origin.Listener.Close()
	origin.Listener = up.Listen(t)
	origin.Start()
	defer origin.Close()
	port := origin.Listener.Addr().(*net.TCPAddr).Port

	var mu sync.Mutex
	var denied []policy.Denial
	p := &policy.Proxy{
		Dir:          shortTempDir(t),
		Resolver:     resolver{"allowed.test": {up.Addr}, "other.test": {up.Addr}},
		AllowPrivate: true,
		OnDeny: func(ws string, d policy.Denial) {
			mu.Lock()
			denied = append(denied, d)
			mu.Unlock()
		},
	}
	defer p.Shutdown(context.Background())
	sock, err := p.Open("ws-e2e", []string{fmt.Sprintf("allowed.test:%d", port)})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := startForward(t, sock)

	proxyURL := &url.URL{Scheme: "http", Host: addr}
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}}
	defer client.CloseIdleConnections()

	resp, err := client.Get(fmt.Sprintf("http://allowed.test:%d/", port))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("hello from allowed.test:%d", port); resp.StatusCode != 200 || string(body) != want {
		t.Fatalf("allowed host: %d %q, want 200 %q", resp.StatusCode, body, want)
	}

	resp, err = client.Get(fmt.Sprintf("http://other.test:%d/", port))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "not in this workspace's allowed hosts") {
		t.Fatalf("other host: %d %q, want 403", resp.StatusCode, body)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(denied) != 1 || denied[0].Host != "other.test" || denied[0].Port != port {
		t.Fatalf("denials %+v, want one for other.test:%d", denied, port)
	}
}

func BenchmarkForwardThroughput(b *testing.B) {
	dir, _ := os.MkdirTemp("", "fw")
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s.sock")
	uln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	defer uln.Close()
	go func() {
		for {
			c, err := uln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sandboxinit.Forward(ctx, addr, sock) }()
	defer func() { cancel(); <-done }()
	var c net.Conn
	for c == nil {
		c, _ = net.Dial("tcp", addr)
	}
	defer c.Close()
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTunnelThroughProxy measures bulk transfer over the whole path a
// sandbox uses: forwarder → unix socket → egress proxy CONNECT tunnel → a
// TCP sink on a private host.
func BenchmarkTunnelThroughProxy(b *testing.B) {
	up := nettest.StartPrivateHost(b)
	sink := up.Listen(b)
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	hp := fmt.Sprintf("allowed.test:%d", sink.Addr().(*net.TCPAddr).Port)
	dir, _ := os.MkdirTemp("", "fw")
	defer os.RemoveAll(dir)
	p := &policy.Proxy{Dir: dir, AllowPrivate: true, Resolver: resolver{"allowed.test": {up.Addr}}}
	defer p.Shutdown(context.Background())
	sock, err := p.Open("bench", []string{hp})
	if err != nil {
		b.Fatal(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sandboxinit.Forward(ctx, addr, sock) }()
	defer func() { cancel(); <-done }()
	var c net.Conn
	for c == nil {
		c, _ = net.Dial("tcp", addr)
	}
	defer c.Close()
	io.WriteString(c, "CONNECT "+hp+" HTTP/1.1\r\n\r\n")
	resp := make([]byte, len("HTTP/1.1 200 Connection established\r\n\r\n"))
	if _, err := io.ReadFull(c, resp); err != nil || !strings.Contains(string(resp), " 200 ") {
		b.Fatalf("CONNECT: %q %v", resp, err)
	}
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// TestForwardDeniedUploadReadsAnswer: when the proxy refuses a request whose
// body is still coming, the client behind the forwarder gets the 403 rather
// than a reset.
func TestForwardDeniedUploadReadsAnswer(t *testing.T) {
	p := &policy.Proxy{Dir: shortTempDir(t), Resolver: resolver{}}
	defer p.Shutdown(context.Background())
	sock, err := p.Open("ws-up", []string{"allowed.test"})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := startForward(t, sock)
	for i := range 20 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(time.Minute)) // against hanging only
		body := strings.Repeat("x", 4<<20)
		go func() {
			io.WriteString(c, "POST http://other.test/upload HTTP/1.1\r\nHost: other.test\r\nContent-Length: "+fmt.Sprint(len(body))+"\r\n\r\n")
			io.WriteString(c, body) // fails once the proxy hangs up
		}()
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("attempt %d: denied upload through the forwarder: %v %v, want 403", i, resp, err)
		}
	}
}
