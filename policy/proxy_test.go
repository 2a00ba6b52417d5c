package policy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/internal/nettest"
	"github.com/corralhq/corral/policy"
	"github.com/hashicorp/go-hclog"
)

// tableResolver resolves the fake names the tests use.
type tableResolver map[string][]netip.Addr

func (r tableResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := r[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// denials collects what the proxy reports.
type denials struct {
	mu sync.Mutex
	ds []policy.Denial
	ws []string
}

func (d *denials) add(ws string, x policy.Denial) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ds = append(d.ds, x)
	d.ws = append(d.ws, ws)
}

func (d *denials) all() ([]string, []policy.Denial) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.ws...), append([]policy.Denial(nil), d.ds...)
}

// upstreams holds each test's private host: another machine, at a private
// address that is not this machine's, which an operator's AllowPrivate
// lets allowlists reach (loopback and this machine's addresses it never
// does).
var upstreams sync.Map // test name -> *nettest.PrivateHost

// upstream is t's private host, made on first use.
func upstream(t *testing.T) *nettest.PrivateHost {
	t.Helper()
	if h, ok := upstreams.Load(t.Name()); ok {
		return h.(*nettest.PrivateHost)
	}
	h := nettest.StartPrivateHost(t)
	upstreams.Store(t.Name(), h)
	t.Cleanup(func() { upstreams.Delete(t.Name()) })
	return h
}

// serveOn starts srv on a listener of t's upstream host (TLS if tls).
func serveOn(t *testing.T, srv *httptest.Server, tls bool) {
	t.Helper()
	srv.Listener.Close()
	srv.Listener = upstream(t).Listen(t)
	if tls {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
}

// origin is a real HTTP server on t's upstream host that echoes what it
// received.
func origin(t *testing.T) (*httptest.Server, int) {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var proxyHdrs []string
		for k := range r.Header {
			if strings.HasPrefix(k, "Proxy-") || k == "Connection" && r.Header.Get(k) != "close" {
				proxyHdrs = append(proxyHdrs, k)
			}
		}
		fmt.Fprintf(w, "origin host=%s method=%s uri=%s body=%s leaked=%v", r.Host, r.Method, r.RequestURI, body, proxyHdrs)
	}))
	serveOn(t, srv, false)
	return srv, srv.Listener.Addr().(*net.TCPAddr).Port
}

func newProxy(t *testing.T, allowPrivate bool) (*policy.Proxy, *denials) {
	t.Helper()
	d := &denials{}
	// A short directory: unix socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "cp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Only tests that reach an upstream make the private host.
	var up []netip.Addr
	if allowPrivate {
		up = []netip.Addr{upstream(t).Addr}
	} else {
		up = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	}
	p := &policy.Proxy{
		Dir: dir,
		Resolver: tableResolver{
			"allowed.test":     up,
			"api.allowed.test": up,
			"other.test":       up,
			"metadata.test":    {netip.MustParseAddr("169.254.169.254")},
			"mixed.test":       {netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("127.0.0.1")},
		},
		AllowPrivate: allowPrivate,
		Logger:       hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: testWriter{t}}),
		OnDeny:       d.add,
	}
	t.Cleanup(func() {
		if err := p.Shutdown(context.Background()); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return p, d
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func open(t *testing.T, p *policy.Proxy, id string, allowed ...string) string {
	t.Helper()
	sock, err := p.Open(id, allowed)
	if err != nil {
		t.Fatalf("open %s: %v", id, err)
	}
	return sock
}

// httpClient sends every request through the proxy socket.
func httpClient(sock string, roots *tls.Config) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: "proxy.invalid:3128"}),
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		TLSClientConfig: roots,
	}}
}

// rawRequest writes a raw request to the proxy socket and reads the answer.
func rawRequest(t *testing.T, sock, req string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Only against hanging forever if the proxy is broken; no test relies on it.
	c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	method, _, _ := strings.Cut(req, " ")
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read proxy answer to %q: %v", req, err)
	}
	if method == http.MethodConnect && resp.StatusCode == http.StatusOK {
		return resp, "" // a tunnel: what follows is not a body
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

func connectReq(hostport string) string {
	return "CONNECT " + hostport + " HTTP/1.1\r\nHost: " + hostport + "\r\n\r\n"
}

func getReq(hostport string) string {
	return "GET http://" + hostport + "/x HTTP/1.1\r\nHost: " + hostport + "\r\nConnection: close\r\n\r\n"
}

func TestProxyPlainHTTPAllowed(t *testing.T) {
	_, port := origin(t)
	p, d := newProxy(t, true)
	sock := open(t, p, "ws1", "allowed.test:"+strconv.Itoa(port))
	c := httpClient(sock, nil)

	for i := range 3 { // keep-alive: several requests on one proxy connection
		target := fmt.Sprintf("http://allowed.test:%d/path?q=%d", port, i)
		req, _ := http.NewRequest(http.MethodPost, target, strings.NewReader("payload"))
		req.Header.Set("Proxy-Authorization", "Basic c2VjcmV0")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v", target, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := fmt.Sprintf("origin host=allowed.test:%d method=POST uri=/path?q=%d body=payload leaked=[]", port, i)
		if resp.StatusCode != 200 || string(body) != want {
			t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, body, want)
		}
	}
	if _, ds := d.all(); len(ds) != 0 {
		t.Errorf("denials for allowed requests: %+v", ds)
	}
}

func TestProxyConnectAllowed(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tls origin host=%s", r.Host)
	}))
	serveOn(t, srv, true)
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	p, _ := newProxy(t, true)
	sock := open(t, p, "ws1", "*.allowed.test")

	tlsConf := srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	tlsConf.ServerName = "example.com" // the name httptest's certificate holds
	c := httpClient(sock, tlsConf)
	resp, err := c.Get(fmt.Sprintf("https://api.allowed.test:%d/", port))
	if err != nil {
		t.Fatalf("https through CONNECT: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("tls origin host=api.allowed.test:%d", port); string(body) != want {
		t.Fatalf("got %q, want %q", body, want)
	}
}

// TestProxyConnectHalfClose checks that a tunnel carries raw TCP both ways,
// including bytes sent right behind the CONNECT header, and passes a
// half-close on so the client still reads the whole answer.
func TestProxyConnectHalfClose(t *testing.T) {
	ln := upstream(t).Listen(t)
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		in, _ := io.ReadAll(c) // until the client's half-close arrives
		fmt.Fprintf(c, "got %d bytes: %s", len(in), in)
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	p, _ := newProxy(t, true)
	sock := open(t, p, "ws1", fmt.Sprintf("allowed.test:%d", port))

	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hp := fmt.Sprintf("allowed.test:%d", port)
	if _, err := io.WriteString(c, connectReq(hp)+"early "); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	io.WriteString(c, "late")
	c.(*net.UnixConn).CloseWrite()
	out, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	if want := "got 10 bytes: early late"; string(out) != want {
		t.Fatalf("got %q, want %q", out, want)
	}
}

func TestProxyDenials(t *testing.T) {
	_, port := origin(t)
	ps := strconv.Itoa(port)
	p, d := newProxy(t, true)
	sock := open(t, p, "ws-deny", "allowed.test:"+ps, "*.wild.test", "127.0.0.2")

	for _, tc := range []struct {
		name, req, host string
		port            int
	}{
		{"name not listed, CONNECT", connectReq("other.test:" + ps), "other.test", port},
		{"name not listed, GET", getReq("other.test:" + ps), "other.test", port},
		{"wildcard does not match its apex", connectReq("wild.test:443"), "wild.test", 443},
		{"wildcard does not match another domain", connectReq("notwild.test:443"), "notwild.test", 443},
		{"wrong port", connectReq("allowed.test:1"), "allowed.test", 1},
		{"wrong port, GET default port", "GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n", "allowed.test", 80},
		{"IP literal not listed", connectReq("127.0.0.1:" + ps), "127.0.0.1", port},
		{"IP literal not listed, GET", getReq("127.0.0.1:" + ps), "127.0.0.1", port},
		{"IPv6 literal not listed", connectReq("[::1]:" + ps), "::1", port},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, before := d.all()
			resp, body := rawRequest(t, sock, tc.req)
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "not in this workspace's allowed hosts") {
				t.Fatalf("got %d %q, want 403 naming the allowlist", resp.StatusCode, body)
			}
			ws, after := d.all()
			if len(after) != len(before)+1 {
				t.Fatalf("OnDeny called %d times, want once", len(after)-len(before))
			}
			got := after[len(after)-1]
			if ws[len(ws)-1] != "ws-deny" || got.Host != tc.host || got.Port != tc.port ||
				got.Reason != policy.DenyNotAllowed || got.Time.IsZero() || got.Detail == "" {
				t.Fatalf("denial = %s %+v, want ws-deny host %s port %d reason %s", ws[len(ws)-1], got, tc.host, tc.port, policy.DenyNotAllowed)
			}
		})
	}
}

func TestProxyRefusesPrivateAddresses(t *testing.T) {
	var hits int
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	ps := strconv.Itoa(srv.Listener.Addr().(*net.TCPAddr).Port)
	p, d := newProxy(t, false)
	sock := open(t, p, "ws1", "allowed.test", "metadata.test", "mixed.test", "169.254.169.254", "127.0.0.1")

	for _, tc := range []struct{ name, req, host, addr string }{
		{"allowed name resolving to loopback", connectReq("allowed.test:" + ps), "allowed.test", "127.0.0.1"},
		{"allowed name resolving to loopback, GET", getReq("allowed.test:" + ps), "allowed.test", "127.0.0.1"},
		{"allowed name resolving to metadata", connectReq("metadata.test:80"), "metadata.test", "169.254.169.254"},
		{"allowed metadata IP", connectReq("169.254.169.254:80"), "169.254.169.254", "169.254.169.254"},
		{"allowed metadata IP, GET", getReq("169.254.169.254"), "169.254.169.254", "169.254.169.254"},
		{"allowed loopback IP", connectReq("127.0.0.1:" + ps), "127.0.0.1", "127.0.0.1"},
		{"name with only private addresses", connectReq("mixed.test:" + ps), "mixed.test", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, before := d.all()
			resp, body := rawRequest(t, sock, tc.req)
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "does not allow") {
				t.Fatalf("got %d %q, want 403", resp.StatusCode, body)
			}
			_, after := d.all()
			if len(after) != len(before)+1 {
				t.Fatalf("OnDeny called %d times, want once", len(after)-len(before))
			}
			got := after[len(after)-1]
			if got.Reason != policy.DenyAddress || got.Host != tc.host || tc.addr != "" && got.Addr.String() != tc.addr {
				t.Fatalf("denial %+v, want reason %s host %s addr %s", got, policy.DenyAddress, tc.host, tc.addr)
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if hits != 0 {
		t.Fatalf("the loopback origin received %d requests through a proxy that must refuse loopback", hits)
	}
}

// TestProxyRefusesOwnAddresses: the server itself is off limits even at an
// address outside the private ranges.
func TestProxyRefusesOwnAddresses(t *testing.T) {
	var own netip.Addr
	ifas, _ := net.InterfaceAddrs()
	for _, ifa := range ifas {
		if pfx, err := netip.ParsePrefix(ifa.String()); err == nil && !policy.IsDenied(pfx.Addr()) {
			own = pfx.Addr()
			break
		}
	}
	if !own.IsValid() {
		t.Skip("this machine has no address outside the denied ranges")
	}
	p, d := newProxy(t, false)
	sock := open(t, p, "ws1", own.String())
	resp, _ := rawRequest(t, sock, connectReq(netip.AddrPortFrom(own, 9).String()))
	_, ds := d.all()
	if resp.StatusCode != http.StatusForbidden || len(ds) != 1 || ds[0].Reason != policy.DenyAddress {
		t.Fatalf("CONNECT to own address %s: %d, denials %+v", own, resp.StatusCode, ds)
	}
}

// TestProxyAllowPrivateKeepsThisMachineOff: the operator's AllowPrivate
// opens private addresses of other machines, never loopback nor any
// address of this machine, whatever an allowlist names or a name resolves
// to (issue 7); the private host's address, just as private, is reached.
func TestProxyAllowPrivateKeepsThisMachineOff(t *testing.T) {
	up := upstream(t)
	own, err := policy.HostAddresses()
	if err != nil {
		t.Fatal(err)
	}
	var hits int
	var mu sync.Mutex
	// One service, listening on every address of this machine.
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
	}))
	srv.Listener.Close()
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	port := ln.Addr().(*net.TCPAddr).Port
	_, oport := origin(t)

	p, d := newProxy(t, true)
	p.Resolver = tableResolver{
		"loop.test":    {netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")},
		"gateway.test": {up.Gateway},
		"private.test": {up.Addr},
	}
	allowed := []string{"loop.test", "gateway.test", "private.test"}
	targets := []struct{ host, addr string }{
		{"loop.test", ""},
		{"gateway.test", up.Gateway.String()},
		{"127.0.0.1", "127.0.0.1"},
		{"::1", "::1"},
	}
	for _, a := range own {
		if a.Is6() && a.IsLinkLocalUnicast() {
			continue // a CONNECT target cannot carry the zone it needs
		}
		allowed = append(allowed, a.String())
		targets = append(targets, struct{ host, addr string }{a.String(), a.String()})
	}
	sock, err := p.Open("ws1", allowed)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range targets {
		hp := net.JoinHostPort(tc.host, strconv.Itoa(port))
		for _, req := range []string{connectReq(hp), getReq(hp)} {
			_, before := d.all()
			resp, body := rawRequest(t, sock, req)
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("%s with AllowPrivate: %d %q, want 403", hp, resp.StatusCode, body)
				continue
			}
			_, after := d.all()
			if len(after) != len(before)+1 {
				t.Fatalf("%s: OnDeny called %d times, want once", hp, len(after)-len(before))
			}
			got := after[len(after)-1]
			if got.Reason != policy.DenyAddress || tc.addr != "" && got.Addr.String() != tc.addr {
				t.Errorf("%s: denial %+v, want reason %s addr %s", hp, got, policy.DenyAddress, tc.addr)
			}
		}
	}
	resp, body := rawRequest(t, sock, getReq("private.test:"+strconv.Itoa(oport)))
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(body, "origin host=private.test") {
		t.Fatalf("private host through AllowPrivate: %d %q", resp.StatusCode, body)
	}
	mu.Lock()
	defer mu.Unlock()
	if hits != 0 {
		t.Fatalf("this machine's service received %d requests through the proxy", hits)
	}
}

func TestProxyBadRequests(t *testing.T) {
	p, d := newProxy(t, true)
	sock := open(t, p, "ws1", "allowed.test")
	for _, tc := range []struct {
		name, req string
		code      int
	}{
		{"origin-form request", "GET /x HTTP/1.1\r\nHost: allowed.test\r\n\r\n", 400},
		{"ftp scheme", "GET ftp://allowed.test/x HTTP/1.1\r\nHost: allowed.test\r\n\r\n", 400},
		{"CONNECT without port", connectReq("allowed.test"), 400},
		{"CONNECT port 0", connectReq("allowed.test:0"), 400},
		{"garbage", "HELLO\r\n\r\n", 400},
		{"header too large", "GET http://allowed.test/ HTTP/1.1\r\nX-Big: " + strings.Repeat("a", 200<<10) + "\r\n\r\n", 431},
		{"unresolvable allowed name", "CONNECT nowhere.allowed.test:80 HTTP/1.1\r\n\r\n", 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := rawRequest(t, sock, tc.req)
			if resp.StatusCode != tc.code {
				t.Fatalf("got %d %q, want %d", resp.StatusCode, body, tc.code)
			}
		})
	}
	// Only the last case is a denial: nowhere.allowed.test is not listed.
	if _, ds := d.all(); len(ds) != 1 {
		t.Fatalf("denials %+v, want one", ds)
	}

	// An allowed name that does not resolve is a gateway error, not a denial.
	open(t, p, "ws1", "allowed.test", "nowhere.test")
	resp, _ := rawRequest(t, sock, connectReq("nowhere.test:80"))
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("unresolvable allowed name: %d, want 502", resp.StatusCode)
	}
}

func TestProxyOpenClose(t *testing.T) {
	_, port := origin(t)
	ps := strconv.Itoa(port)
	p, _ := newProxy(t, true)

	sock := open(t, p, "ws1", "other.test")
	if want := filepath.Join(p.Dir, "ws1", "proxy.sock"); sock != want {
		t.Fatalf("socket %s, want %s", sock, want)
	}
	st, err := os.Stat(sock)
	if err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o666 {
		t.Fatalf("socket %v, %v; want a 0666 socket", st, err)
	}
	if st, err := os.Stat(filepath.Dir(sock)); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("socket dir %v, %v; want 0755", st, err)
	}
	if resp, _ := rawRequest(t, sock, getReq("allowed.test:"+ps)); resp.StatusCode != 403 {
		t.Fatalf("before re-open: %d, want 403", resp.StatusCode)
	}

	// Re-opening replaces the allowlist, same socket.
	again := open(t, p, "ws1", "allowed.test:"+ps)
	if again != sock {
		t.Fatalf("re-open moved the socket: %s, was %s", again, sock)
	}
	if resp, body := rawRequest(t, sock, getReq("allowed.test:"+ps)); resp.StatusCode != 200 {
		t.Fatalf("after re-open: %d %q, want 200", resp.StatusCode, body)
	}

	// Workspaces are apart: ws2's socket applies ws2's list.
	sock2 := open(t, p, "ws2", "other.test:"+ps)
	if resp, _ := rawRequest(t, sock2, getReq("allowed.test:"+ps)); resp.StatusCode != 403 {
		t.Fatalf("ws2 reached ws1's host: %d", resp.StatusCode)
	}

	if err := p.Close("ws1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(sock)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket dir after Close: %v", err)
	}
	if err := p.Close("ws1"); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := p.Close("never-opened"); err != nil {
		t.Fatalf("Close of unknown workspace: %v", err)
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Fatal("closed socket still accepts")
	}

	for _, id := range []string{"", "../x", "A", strings.Repeat("a", 65)} {
		if _, err := p.Open(id, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Open(%q): %v, want invalid argument", id, err)
		}
	}
	if _, err := p.Open("ws3", []string{"not a host"}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Open with a bad entry: %v, want invalid argument", err)
	}

	// Shutdown keeps the directories (sandboxes may have them mounted) and
	// refuses new workspaces.
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(sock2)); err != nil {
		t.Fatalf("Shutdown removed ws2's directory: %v", err)
	}
	if _, err := net.Dial("unix", sock2); err == nil {
		t.Fatal("socket still accepts after Shutdown")
	}
	if _, err := p.Open("ws4", nil); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("Open after Shutdown: %v, want unavailable", err)
	}

	// A new proxy (the next server process) serves the same directory.
	p2, _ := newProxy(t, true)
	p2.Dir = p.Dir
	if s := open(t, p2, "ws2", "allowed.test:"+ps); s != sock2 {
		t.Fatalf("re-served at %s, want %s", s, sock2)
	}
	if resp, _ := rawRequest(t, sock2, getReq("allowed.test:"+ps)); resp.StatusCode != 200 {
		t.Fatalf("after restart: %d, want 200", resp.StatusCode)
	}
}

// TestProxyMaxConns: a workspace cannot hold more connections than allowed,
// and Close ends a tunnel that is still open.
func TestProxyMaxConns(t *testing.T) {
	ln := upstream(t).Listen(t)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	hp := fmt.Sprintf("allowed.test:%d", ln.Addr().(*net.TCPAddr).Port)
	p, _ := newProxy(t, true)
	p.MaxConns = 1
	sock := open(t, p, "ws1", hp)

	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, connectReq(hp))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first CONNECT: %v %v", resp, err)
	}
	io.WriteString(c, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo through tunnel: %q %v", buf, err)
	}

	if resp, _ := rawRequest(t, sock, connectReq(hp)); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("second connection: %d, want 503", resp.StatusCode)
	}

	if err := p.Close("ws1"); err != nil {
		t.Fatal(err)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("tunnel still open after Close")
	}
}

func BenchmarkProxyConnect(b *testing.B) {
	up := nettest.StartPrivateHost(b)
	ln := up.Listen(b)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { c.Write([]byte("x")); c.Close() }()
		}
	}()
	hp := fmt.Sprintf("allowed.test:%d", ln.Addr().(*net.TCPAddr).Port)
	dir, _ := os.MkdirTemp("", "cp")
	defer os.RemoveAll(dir)
	p := &policy.Proxy{Dir: dir, AllowPrivate: true,
		Resolver: tableResolver{"allowed.test": {up.Addr}}}
	defer p.Shutdown(context.Background())
	sock, err := p.Open("bench", []string{hp})
	if err != nil {
		b.Fatal(err)
	}
	req := []byte(connectReq(hp))
	b.ResetTimer()
	for b.Loop() {
		c, err := net.Dial("unix", sock)
		if err != nil {
			b.Fatal(err)
		}
		c.Write(req)
		out, _ := io.ReadAll(c)
		c.Close()
		if !strings.HasSuffix(string(out), "\r\n\r\nx") {
			b.Fatalf("got %q", out)
		}
	}
}

// TestProxyHTTPDetails: Expect: 100-continue is answered by the proxy, chunked
// bodies pass, and a narrowed allowlist applies to the next request of a
// kept-alive connection.
func TestProxyHTTPDetails(t *testing.T) {
	_, port := origin(t)
	hp := "allowed.test:" + strconv.Itoa(port)
	p, d := newProxy(t, true)
	sock := open(t, p, "ws1", hp, "other.test")

	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute)) // against hanging only
	br := bufio.NewReader(c)

	io.WriteString(c, "POST http://"+hp+"/up HTTP/1.1\r\nHost: "+hp+"\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusContinue {
		t.Fatalf("want 100 Continue first: %v %v", resp, err)
	}
	io.WriteString(c, "hello")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if want := "origin host=" + hp + " method=POST uri=/up body=hello leaked=[]"; string(body) != want {
		t.Fatalf("got %q, want %q", body, want)
	}

	io.WriteString(c, "POST http://"+hp+"/chunked HTTP/1.1\r\nHost: "+hp+"\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	if want := "origin host=" + hp + " method=POST uri=/chunked body=abcde leaked=[]"; string(body) != want {
		t.Fatalf("got %q, want %q", body, want)
	}

	open(t, p, "ws1", "other.test") // narrow the list under the open connection
	io.WriteString(c, "GET http://"+hp+"/again HTTP/1.1\r\nHost: "+hp+"\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("request after narrowing: %v %v, want 403", resp, err)
	}
	if _, ds := d.all(); len(ds) != 1 || ds[0].Host != "allowed.test" {
		t.Fatalf("denials %+v", ds)
	}
}

// TestProxyBadNamesAndUpstreams: an invalid name is a bad request, not a
// denial; an upstream with an endless header is cut off with 502.
func TestProxyBadNamesAndUpstreams(t *testing.T) {
	ln := upstream(t).Listen(t)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Huge: ")
				chunk := []byte(strings.Repeat("a", 64<<10))
				for { // one endless header line, until the proxy hangs up
					if _, err := c.Write(chunk); err != nil {
						return
					}
				}
			}()
		}
	}()
	hp := fmt.Sprintf("allowed.test:%d", ln.Addr().(*net.TCPAddr).Port)
	p, d := newProxy(t, true)
	sock := open(t, p, "ws1", hp)

	if resp, _ := rawRequest(t, sock, getReq(hp)); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("endless upstream header: %d, want 502", resp.StatusCode)
	}
	for _, bad := range []string{"bad!name:80", "under score:80", "-x.test:80"} {
		if resp, body := rawRequest(t, sock, connectReq(bad)); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("CONNECT %s: %d %q, want 400", bad, resp.StatusCode, body)
		}
	}
	if _, ds := d.all(); len(ds) != 0 {
		t.Fatalf("bad requests reported as denials: %+v", ds)
	}
}

// TestProxyDeniedUploadReadsAnswer: a client whose request body is still
// coming when the proxy refuses it gets the 403, not a reset.
func TestProxyDeniedUploadReadsAnswer(t *testing.T) {
	p, d := newProxy(t, true)
	sock := open(t, p, "ws1", "allowed.test")
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute)) // against hanging only
	body := strings.Repeat("x", 1<<20)
	go func() {
		io.WriteString(c, "POST http://other.test/upload HTTP/1.1\r\nHost: other.test\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n")
		io.WriteString(c, body) // may fail once the proxy hangs up
	}()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("denied upload: %v %v, want 403", resp, err)
	}
	if _, ds := d.all(); len(ds) != 1 || ds[0].Method != "POST" || ds[0].Host != "other.test" || ds[0].Port != 80 {
		t.Fatalf("denials %+v", ds)
	}
}
