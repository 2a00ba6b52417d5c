package policy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/hashicorp/go-hclog"
)

// Resolver looks up host names for the egress proxy. *net.Resolver
// implements it; tests give a fixed table.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Denial is one connection attempt the egress proxy refused.
type Denial struct {
	Host   string     `json:"host"`          // name or IP literal the sandbox asked for
	Port   int        `json:"port"`          // port it asked for
	Addr   netip.Addr `json:"addr,omitzero"` // the refused address, for "address_denied"
	Method string     `json:"method"`        // "CONNECT", "GET"...
	Reason string     `json:"reason"`        // "host_not_allowed" or "address_denied"
	Detail string     `json:"detail"`        // for humans
	Time   time.Time  `json:"time"`
}

// Denial reasons.
const (
	// DenyNotAllowed: the host and port match no entry of the allowlist.
	DenyNotAllowed = "host_not_allowed"
	// DenyAddress: the host is allowed but resolves to (or is) a loopback,
	// link-local, private or other denied address, or one of this
	// machine's own addresses, and the proxy does not allow those.
	DenyAddress = "address_denied"
)

// Defaults for the Proxy's bounds.
const (
	DefaultProxyDialTimeout    = 10 * time.Second
	DefaultProxyHeaderTimeout  = 10 * time.Second
	DefaultProxyIdleTimeout    = 5 * time.Minute
	DefaultProxyMaxHeaderBytes = 64 << 10
	DefaultProxyMaxConns       = 128
)

// maxResponseHeaderBytes bounds an upstream response's header, as net/http's
// Transport does.
const maxResponseHeaderBytes = 1 << 20

// Proxy is the egress proxy that enforces network mode allowlist. It serves
// one unix socket per workspace; the socket is what identifies the
// workspace, so whatever arrives on it is checked against that workspace's
// allowlist. It speaks HTTP/1.1 forward proxying: absolute-URI requests for
// http:// URLs, and CONNECT host:port for everything else (https, ssh, any
// TCP). Names are resolved by the proxy with Resolver, never by the sandbox,
// and the proxy dials exactly the address it checked, so DNS rebinding cannot
// reach a denied address.
//
// Set the exported fields before the first Open and do not change them
// afterwards. The zero value needs only Dir.
type Proxy struct {
	// Dir holds one directory per workspace with its socket:
	// Dir/<workspace>/proxy.sock. Unix socket paths are limited to 107
	// bytes, so keep Dir short.
	Dir string
	// Resolver resolves allowed names; nil means net.DefaultResolver.
	Resolver Resolver
	// AllowPrivate lets sandboxes reach link-local, CGNAT and private
	// addresses (when their allowlist names them); never loopback or this
	// machine's own addresses (see CheckAddress). Set it from
	// Config.AllowPrivate.
	AllowPrivate bool
	// DialTimeout bounds resolving and connecting to an upstream host.
	DialTimeout time.Duration
	// HeaderTimeout bounds reading one request's header once it has begun.
	HeaderTimeout time.Duration
	// IdleTimeout closes a connection on which nothing has moved, in either
	// direction, for this long: between keep-alive requests, during a
	// transfer, in a CONNECT tunnel.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds one request's header.
	MaxHeaderBytes int
	// MaxConns bounds concurrent connections per workspace; more are
	// answered 503.
	MaxConns int
	// Logger receives the proxy's own diagnostics; nil discards them.
	Logger hclog.Logger
	// OnDeny, if set, is called for every refused attempt, from the
	// connection's goroutine (so concurrently): it must be safe for
	// concurrent use and should not block for long.
	OnDeny func(workspaceID string, d Denial)

	mu       sync.Mutex
	ws       map[string]*proxyWorkspace
	shutdown bool
}

// proxyWorkspace is the listener and live state of one workspace.
type proxyWorkspace struct {
	id    string
	path  string
	ln    *net.UnixListener
	hosts atomic.Pointer[[]Host]
	sem   chan struct{}
	log   hclog.Logger

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Open starts serving workspaceID's egress proxy with the given allowlist
// (entries as ParseHost reads them, normally a resolved Policy's
// Network.AllowedHosts) and returns the host path of its unix socket,
// Dir/<workspaceID>/proxy.sock. The directory is 0755 and the socket 0666,
// so that a sandbox running as another user (rootless containers) can
// connect.
//
// Drivers should bind-mount the socket's directory, not the socket file, into
// containers: a server restart re-creates the socket in the same directory,
// and only a directory mount lets running sandboxes see the new one.
//
// Idempotent: opening an open workspace replaces its allowlist (new
// connections and new requests on open keep-alive connections see the new
// list) and returns the same path. Errors: errdefs.ErrInvalidArgument for a
// bad workspace ID or allowlist entry, errdefs.ErrUnavailable after
// Shutdown, or the filesystem/socket error.
func (p *Proxy) Open(workspaceID string, allowed []string) (string, error) {
	if !validWorkspaceID(workspaceID) {
		return "", errdefs.Invalid("invalid_id", "proxy: invalid workspace id %q", workspaceID)
	}
	hosts := make([]Host, 0, len(allowed))
	for _, a := range allowed {
		h, err := ParseHost(a)
		if err != nil {
			return "", errdefs.Invalid("invalid_network", "proxy for %s: %v", workspaceID, err)
		}
		hosts = append(hosts, h)
	}
	if p.Dir == "" {
		return "", errdefs.New(errdefs.ErrFailedPrecondition, "proxy_unconfigured", "proxy: no socket directory configured")
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shutdown {
		return "", errdefs.New(errdefs.ErrUnavailable, "proxy_shut_down", "proxy is shut down")
	}
	if w := p.ws[workspaceID]; w != nil {
		if _, err := os.Stat(w.path); err == nil {
			w.hosts.Store(&hosts)
			return w.path, nil
		}
		// The socket file vanished under us: serve a new one.
		w.close()
		delete(p.ws, workspaceID)
	}

	dir := filepath.Join(p.Dir, workspaceID)
	path := filepath.Join(dir, "proxy.sock")
	if len(path) > 107 {
		return "", errdefs.New(errdefs.ErrFailedPrecondition, "proxy_path_too_long",
			"proxy socket path %q is longer than the 107 bytes a unix socket allows; use a shorter data directory", path)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("proxy for %s: %w", workspaceID, err)
	}
	if err := os.Chmod(dir, 0o755); err != nil { // MkdirAll is subject to umask
		return "", fmt.Errorf("proxy for %s: %w", workspaceID, err)
	}
	// A socket left by a previous server process is stale: nobody serves it.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("proxy for %s: remove stale socket: %w", workspaceID, err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return "", fmt.Errorf("proxy for %s: %w", workspaceID, err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		ln.Close()
		return "", fmt.Errorf("proxy for %s: %w", workspaceID, err)
	}

	w := &proxyWorkspace{
		id:    workspaceID,
		path:  path,
		ln:    ln,
		sem:   make(chan struct{}, orDefault(p.MaxConns, DefaultProxyMaxConns)),
		log:   p.logger().With("workspace_id", workspaceID),
		conns: map[net.Conn]struct{}{},
	}
	w.hosts.Store(&hosts)
	if p.ws == nil {
		p.ws = map[string]*proxyWorkspace{}
	}
	p.ws[workspaceID] = w
	w.wg.Add(1)
	go p.accept(w)
	w.log.Debug("proxy opened", "socket", path, "allowed_hosts", len(hosts))
	return path, nil
}

// Close stops serving workspaceID's proxy, closes its connections and
// removes its socket directory. Idempotent: closing a workspace that is not
// open (or was never opened by this process) still removes the directory,
// and succeeds if there is none.
func (p *Proxy) Close(workspaceID string) error {
	if !validWorkspaceID(workspaceID) {
		return errdefs.Invalid("invalid_id", "proxy: invalid workspace id %q", workspaceID)
	}
	// Held throughout, so that a concurrent Open of the same workspace
	// cannot create a socket that this Close then deletes.
	p.mu.Lock()
	defer p.mu.Unlock()
	if w := p.ws[workspaceID]; w != nil {
		delete(p.ws, workspaceID)
		w.close()
	}
	if p.Dir == "" {
		return nil
	}
	if err := os.RemoveAll(filepath.Join(p.Dir, workspaceID)); err != nil {
		return fmt.Errorf("proxy for %s: %w", workspaceID, err)
	}
	return nil
}

// Shutdown stops every workspace's proxy and closes every connection, then
// waits for their goroutines until ctx is done (returning ctx's error). It
// leaves the socket directories in place, so that the next server process
// can Open the same workspaces and sandboxes that bind-mounted a directory
// find the new socket there. Open fails afterwards. Idempotent.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.shutdown = true
	all := make([]*proxyWorkspace, 0, len(p.ws))
	for _, w := range p.ws {
		all = append(all, w)
	}
	p.ws = nil
	p.mu.Unlock()

	done := make(chan struct{})
	go func() {
		for _, w := range all {
			w.close()
		}
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("proxy shutdown: %w", ctx.Err())
	}
}

// close stops w's listener and connections and waits for its goroutines.
func (w *proxyWorkspace) close() {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		w.ln.Close() // unlinks the socket
		for c := range w.conns {
			c.Close()
		}
	}
	w.mu.Unlock()
	w.wg.Wait()
}

// track registers c for closing with w; false if w is already closed.
func (w *proxyWorkspace) track(c net.Conn) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	w.conns[c] = struct{}{}
	w.wg.Add(1)
	return true
}

func (w *proxyWorkspace) untrack(c net.Conn) {
	w.mu.Lock()
	delete(w.conns, c)
	w.mu.Unlock()
	w.wg.Done()
}

func (p *Proxy) accept(w *proxyWorkspace) {
	defer w.wg.Done()
	var backoff time.Duration
	for {
		c, err := w.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			w.log.Warn("proxy accept failed; retrying", "error", err, "backoff", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !w.track(c) {
			c.Close()
			return
		}
		select {
		case w.sem <- struct{}{}:
			go func() {
				defer w.untrack(c)
				defer func() { <-w.sem }()
				defer lingerClose(c)
				p.serve(w, c)
			}()
		default:
			go func() {
				defer w.untrack(c)
				defer lingerClose(c)
				c.SetWriteDeadline(time.Now().Add(orDefault(p.HeaderTimeout, DefaultProxyHeaderTimeout)))
				writeError(c, http.StatusServiceUnavailable, "too many concurrent connections through this workspace's proxy\n")
			}()
		}
	}
}

// headerLimit is an io.Reader that stops after n bytes; serve resets n
// before each request header and lifts it for bodies.
type headerLimit struct {
	r io.Reader
	n int64 // < 0: unlimited
}

func (l *headerLimit) Read(b []byte) (int, error) {
	if l.n < 0 {
		return l.r.Read(b)
	}
	if l.n == 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(b)) > l.n {
		b = b[:l.n]
	}
	n, err := l.r.Read(b)
	l.n -= int64(n)
	return n, err
}

var errHeaderTooLarge = errors.New("request header too large")

// serve handles one sandbox connection: keep-alive HTTP requests, or one
// CONNECT tunnel.
func (p *Proxy) serve(w *proxyWorkspace, c net.Conn) {
	headerTimeout := orDefault(p.HeaderTimeout, DefaultProxyHeaderTimeout)
	idle := orDefault(p.IdleTimeout, DefaultProxyIdleTimeout)
	maxHeader := int64(orDefault(p.MaxHeaderBytes, DefaultProxyMaxHeaderBytes))
	const bufSize = 4096
	lim := &headerLimit{r: c}
	br := bufio.NewReaderSize(lim, bufSize)
	var up *upstream
	defer func() {
		if up != nil {
			up.conn.Close()
		}
	}()

	for first := true; ; first = false {
		// Wait for the next request, then give its header a deadline.
		if first {
			c.SetReadDeadline(time.Now().Add(headerTimeout))
		} else {
			c.SetReadDeadline(time.Now().Add(idle))
		}
		lim.n = maxHeader + bufSize
		if _, err := br.Peek(1); err != nil {
			return
		}
		c.SetReadDeadline(time.Now().Add(headerTimeout))
		req, err := http.ReadRequest(br)
		if err != nil {
			if errors.Is(err, errHeaderTooLarge) {
				writeError(c, http.StatusRequestHeaderFieldsTooLarge, "request header too large\n")
			} else if !errors.Is(err, io.EOF) && !isTimeout(err) {
				writeError(c, http.StatusBadRequest, "malformed proxy request\n")
			}
			return
		}
		lim.n = -1
		c.SetDeadline(time.Time{})

		if req.Method == http.MethodConnect {
			p.connect(w, c, br, req)
			return
		}
		var keep bool
		up, keep = p.forward(w, c, br, req, up)
		if !keep {
			return
		}
	}
}

// target parses the lower-case host and the port a request asks to reach.
// On a malformed target it answers 400 itself and returns ok=false.
func (p *Proxy) target(c net.Conn, req *http.Request) (host string, port int, ok bool) {
	var hostport string
	if req.Method == http.MethodConnect {
		hostport = req.RequestURI
	} else {
		if !req.URL.IsAbs() || req.URL.Host == "" {
			writeError(c, http.StatusBadRequest, "this is a forward proxy: send absolute http:// URLs, or CONNECT host:port\n")
			return "", 0, false
		}
		if req.URL.Scheme != "http" {
			writeError(c, http.StatusBadRequest, fmt.Sprintf("unsupported scheme %q: use CONNECT for anything but http://\n", req.URL.Scheme))
			return "", 0, false
		}
		hostport = req.URL.Host
		if req.URL.Port() == "" {
			hostport = net.JoinHostPort(req.URL.Hostname(), "80")
		}
	}
	h, ps, err := net.SplitHostPort(hostport)
	n, perr := strconv.Atoi(ps)
	if err != nil || perr != nil || n < 1 || n > 65535 || h == "" {
		writeError(c, http.StatusBadRequest, fmt.Sprintf("invalid target %q: want host:port\n", hostport))
		return "", 0, false
	}
	return strings.TrimSuffix(strings.ToLower(h), "."), n, true
}

// allowed reports whether host (a lower-case name or an IP literal) and port
// match an entry of hosts: names by name, IP literals by IP/CIDR entries.
func allowed(hosts []Host, host string, port int) bool {
	a, err := netip.ParseAddr(host)
	for _, h := range hosts {
		if err == nil && h.MatchAddr(a.Unmap(), port) || err != nil && h.MatchName(host, port) {
			return true
		}
	}
	return false
}

// deny reports a refused attempt and answers it 403.
func (p *Proxy) deny(w *proxyWorkspace, c net.Conn, d Denial) {
	d.Time = time.Now().UTC()
	w.log.Debug("proxy denied", "host", d.Host, "port", d.Port, "reason", d.Reason, "addr", d.Addr)
	if p.OnDeny != nil {
		p.OnDeny(w.id, d)
	}
	writeError(c, http.StatusForbidden, "corral: "+d.Detail+"\n")
}

// dial checks host:port against w's allowlist and the denied ranges and
// connects to the first allowed address that answers, within DialTimeout.
// On a denial or failure it answers the client (403, 400 or 502) and
// returns nil. The returned connection is tracked by w.
func (p *Proxy) dial(w *proxyWorkspace, c net.Conn, method, host string, port int) net.Conn {
	target := net.JoinHostPort(host, strconv.Itoa(port))
	literal, litErr := netip.ParseAddr(host)
	if litErr != nil && !validName(host) {
		writeError(c, http.StatusBadRequest, fmt.Sprintf("invalid host name %q\n", host))
		return nil
	}
	d := Denial{Host: host, Port: port, Method: method, Reason: DenyNotAllowed,
		Detail: target + " is not in this workspace's allowed hosts"}
	if !allowed(*w.hosts.Load(), host, port) {
		p.deny(w, c, d)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), orDefault(p.DialTimeout, DefaultProxyDialTimeout))
	defer cancel()

	var addrs []netip.Addr
	if litErr == nil {
		addrs = []netip.Addr{literal.Unmap()}
	} else {
		res := p.Resolver
		if res == nil {
			res = net.DefaultResolver
		}
		found, err := res.LookupNetIP(ctx, "ip", host)
		if err != nil || len(found) == 0 {
			w.log.Trace("proxy cannot resolve", "host", host, "error", err)
			writeError(c, http.StatusBadGateway, fmt.Sprintf("corral: cannot resolve %s\n", host))
			return nil
		}
		addrs = found
	}
	// Keep only what may be reached; dialling exactly these addresses is
	// what defeats DNS rebinding.
	ok := addrs[:0:0]
	for _, a := range addrs {
		a = a.Unmap()
		if CheckAddress(a, p.AllowPrivate) != nil {
			d.Addr = a
			continue
		}
		ok = append(ok, a)
	}
	if len(ok) == 0 {
		d.Reason = DenyAddress
		d.Detail = target + " is a loopback, link-local, private or server address, which this server does not allow"
		if p.AllowPrivate {
			d.Detail = target + " is a loopback, reserved or server address, which no server allows"
		}
		if litErr != nil {
			d.Detail = fmt.Sprintf("%s resolves to %s, a loopback, link-local, private or server address, which this server does not allow", target, d.Addr)
		}
		p.deny(w, c, d)
		return nil
	}

	// The dialer checks again what it actually connects to: the one
	// address policy, applied at connect time.
	dialer := net.Dialer{Control: DialControl(p.AllowPrivate)}
	var lastErr error
	for _, a := range ok {
		up, err := dialer.DialContext(ctx, "tcp", netip.AddrPortFrom(a, uint16(port)).String())
		if err == nil {
			if !w.track(up) {
				up.Close()
				return nil
			}
			return &trackedConn{Conn: up, w: w}
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	w.log.Trace("proxy upstream unreachable", "target", target, "error", lastErr)
	writeError(c, http.StatusBadGateway, fmt.Sprintf("corral: cannot connect to %s\n", target))
	return nil
}

// connect serves a CONNECT request: check, dial, answer 200, splice.
func (p *Proxy) connect(w *proxyWorkspace, c net.Conn, br *bufio.Reader, req *http.Request) {
	host, port, ok := p.target(c, req)
	if !ok {
		return
	}
	up := p.dial(w, c, req.Method, host, port)
	if up == nil {
		return
	}
	defer up.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	// Bytes the client sent right behind its CONNECT header belong upstream.
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		if _, err := up.Write(b); err != nil {
			return
		}
	}
	splice(c, up.(*trackedConn).Conn, orDefault(p.IdleTimeout, DefaultProxyIdleTimeout))
}

// upstream is a connection to an origin server kept across keep-alive
// requests to the same target.
type upstream struct {
	target string
	conn   *idleConn
	lim    *headerLimit // bounds response headers; lifted for bodies
	br     *bufio.Reader
}

// forward serves one plain-HTTP request and reports whether the client
// connection may carry another. up is the upstream kept from the previous
// request (may be nil); forward returns the one to keep, having closed any
// other.
func (p *Proxy) forward(w *proxyWorkspace, c net.Conn, br *bufio.Reader, req *http.Request, up *upstream) (*upstream, bool) {
	host, port, ok := p.target(c, req)
	if !ok {
		return up, false
	}
	target := net.JoinHostPort(host, strconv.Itoa(port))
	if up != nil && (up.target != target || !allowed(*w.hosts.Load(), host, port)) {
		// Another target, or the allowlist changed since up was dialled
		// (the address itself was checked then).
		up.conn.Close()
		up = nil
	}
	idle := orDefault(p.IdleTimeout, DefaultProxyIdleTimeout)
	if up == nil {
		conn := p.dial(w, c, req.Method, host, port)
		if conn == nil {
			return nil, false
		}
		ic := &idleConn{Conn: conn, idle: idle}
		lim := &headerLimit{r: ic, n: -1}
		up = &upstream{target: target, conn: ic, lim: lim, br: bufio.NewReader(lim)}
	}
	fail := func(code int, msg string) (*upstream, bool) {
		up.conn.Close()
		if code != 0 {
			writeError(c, code, msg)
		}
		return nil, false
	}
	client := &idleConn{Conn: c, idle: idle}

	expect := strings.EqualFold(req.Header.Get("Expect"), "100-continue")
	prepareRequest(req)
	if expect {
		// Clients wait for this before sending the body; the upstream
		// will not send it, because Expect was removed.
		if _, err := io.WriteString(client, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
			return fail(0, "")
		}
	}
	if req.Body != nil && req.Body != http.NoBody {
		req.Body = &deadlineBody{ReadCloser: req.Body, c: client}
	}
	if err := req.Write(up.conn); err != nil {
		return fail(http.StatusBadGateway, fmt.Sprintf("corral: sending the request to %s failed\n", target))
	}
	var resp *http.Response
	for {
		var err error
		up.lim.n = maxResponseHeaderBytes
		resp, err = http.ReadResponse(up.br, req)
		up.lim.n = -1
		if err != nil {
			return fail(http.StatusBadGateway, fmt.Sprintf("corral: no valid response from %s\n", target))
		}
		// Interim responses are passed on and the final one follows. (101
		// never comes: Upgrade was removed from the request.)
		if resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			if err := resp.Write(client); err != nil {
				return fail(0, "")
			}
			continue
		}
		break
	}
	removeHopByHop(resp.Header)
	resp.Close = req.Close || resp.Close || resp.StatusCode == http.StatusSwitchingProtocols
	err := resp.Write(client)
	resp.Body.Close()
	if err != nil || resp.Close {
		return fail(0, "")
	}
	return up, true
}

// prepareRequest turns a proxy request into an origin request: origin-form
// URI, no hop-by-hop or Proxy-* headers, no Expect, no Go User-Agent.
func prepareRequest(req *http.Request) {
	req.RequestURI = ""
	req.Header.Del("Expect")
	removeHopByHop(req.Header)
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header["User-Agent"] = []string{""} // Request.Write adds Go's otherwise
	}
}

// hopByHop are the headers that belong to one connection (RFC 9110 7.6.1)
// plus the proxy's own.
var hopByHop = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for _, f := range strings.Split(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, k := range hopByHop {
		h.Del(k)
	}
	for k := range h {
		if strings.HasPrefix(k, "Proxy-") {
			delete(h, k)
		}
	}
}

// deadlineBody extends the client connection's read deadline before each
// read of a request body (which http.ReadRequest reads from the raw conn).
type deadlineBody struct {
	io.ReadCloser
	c *idleConn
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	b.c.Conn.SetReadDeadline(time.Now().Add(b.c.idle))
	return b.ReadCloser.Read(p)
}

// idleConn extends its deadline before every read and write, so that a
// transfer fails only when nothing moves for idle.
type idleConn struct {
	net.Conn
	idle time.Duration
}

func (c *idleConn) Read(b []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	return c.Conn.Read(b)
}

func (c *idleConn) Write(b []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.idle))
	return c.Conn.Write(b)
}

// trackedConn untracks an upstream connection from its workspace when
// closed, once.
type trackedConn struct {
	net.Conn
	w    *proxyWorkspace
	once sync.Once
}

func (t *trackedConn) Close() error {
	err := t.Conn.Close()
	t.once.Do(func() { t.w.untrack(t.Conn) })
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// orDefault is v, or d if v is not positive.
func orDefault[T int | time.Duration](v, d T) T {
	if v > 0 {
		return v
	}
	return d
}

var tunnelBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// splice copies both ways between a and b until both directions are done,
// passing each half-close on, or until nothing moved either way for idle.
func splice(a, b net.Conn, idle time.Duration) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	done := make(chan struct{}, 2)
	go func() { pipe(b, a, idle, &last); done <- struct{}{} }()
	go func() { pipe(a, b, idle, &last); done <- struct{}{} }()
	<-done
	<-done
}

// pipe copies src to dst, then half-closes dst's write side (or closes both
// on an error, which also ends the other direction).
func pipe(dst, src net.Conn, idle time.Duration, last *atomic.Int64) {
	bp := tunnelBufs.Get().(*[]byte)
	defer tunnelBufs.Put(bp)
	buf := *bp
	for {
		src.SetReadDeadline(time.Now().Add(idle))
		n, err := src.Read(buf)
		if n > 0 {
			last.Store(time.Now().UnixNano())
			dst.SetWriteDeadline(time.Now().Add(idle))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				dst.Close()
				return
			}
		}
		if err == nil {
			continue
		}
		if isTimeout(err) && time.Since(time.Unix(0, last.Load())) < idle {
			continue // the other direction is busy: keep this one open
		}
		if errors.Is(err, io.EOF) {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
				return
			}
		}
		src.Close()
		dst.Close()
		return
	}
}

// lingerClose closes a client connection so that the client reads our last
// answer: closing a socket with unread input (a request body after a 403,
// say) resets it, and the reset can destroy the answer before the client
// reads it. So the write side is shut first and input drained for a moment.
func lingerClose(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		c.SetReadDeadline(time.Now().Add(time.Second))
		io.CopyN(io.Discard, c, 256<<10)
	}
	c.Close()
}

// writeError answers a proxy request with a short text body and closes the
// exchange (Connection: close).
func writeError(w io.Writer, code int, body string) {
	fmt.Fprintf(w, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		code, http.StatusText(code), len(body), body)
}

func (p *Proxy) logger() hclog.Logger {
	if p.Logger == nil {
		return hclog.NewNullLogger()
	}
	return p.Logger.Named("proxy")
}

// validWorkspaceID accepts what runtime.Spec.ID allows: [a-z0-9_-], 1 to 64
// bytes. It keeps the ID safe as a path element.
func validWorkspaceID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
