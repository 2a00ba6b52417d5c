package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/corralhq/corral/api"
	"github.com/corralhq/corral/conversation"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/store"
	"github.com/corralhq/corral/workspace"
)

// serveConfig is everything `corral serve` reads from flags and environment.
type serveConfig struct {
	runtime, addr, dataDir      string
	logFormat, logLevel         string
	image, engineHost, initPath string
	defaultLimits, maxLimits    string
	defaultNetwork              string
	allowPrivate                bool
	unsafeSharedNetwork         bool
	subnet                      string
	engineTimeout               string
	checkInterval, drainTimeout string
	bootstrapAdmin              bool
	apiKeys                     string
}

func serve(args []string) error {
	var c serveConfig
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&c.runtime, "runtime", env("CORRAL_RUNTIME", "process"), "runtime driver: "+strings.Join(runtime.Drivers(), ", ")+" (env CORRAL_RUNTIME)")
	fs.StringVar(&c.addr, "addr", env("CORRAL_ADDR", "127.0.0.1:8080"), "listen address (env CORRAL_ADDR)")
	fs.StringVar(&c.dataDir, "data-dir", env("CORRAL_DATA_DIR", "data"), "data directory: database, workspaces, sockets (env CORRAL_DATA_DIR)")
	fs.StringVar(&c.logFormat, "log-format", env("CORRAL_LOG_FORMAT", "text"), "log format: text or json (env CORRAL_LOG_FORMAT)")
	fs.StringVar(&c.logLevel, "log-level", env("CORRAL_LOG_LEVEL", "info"), "log level: trace, debug, info, warn, error (env CORRAL_LOG_LEVEL)")
	fs.StringVar(&c.image, "image", env("CORRAL_IMAGE", "debian:12"), "default image for container runtimes (env CORRAL_IMAGE)")
	fs.StringVar(&c.engineHost, "engine-host", env("CORRAL_ENGINE_HOST", ""), "engine socket, e.g. unix:///var/run/docker.sock (env CORRAL_ENGINE_HOST; else DOCKER_HOST / CONTAINER_HOST / the engine's default)")
	fs.StringVar(&c.initPath, "init-path", env("CORRAL_INIT_PATH", ""), "static corral binary run as PID 1 in sandboxes (env CORRAL_INIT_PATH; default this executable)")
	fs.StringVar(&c.defaultLimits, "default-limits", env("CORRAL_DEFAULT_LIMITS", ""), `JSON limits for requests that set none, e.g. '{"memory":"512MiB","pids":256}' (env CORRAL_DEFAULT_LIMITS)`)
	fs.StringVar(&c.maxLimits, "max-limits", env("CORRAL_MAX_LIMITS", ""), `JSON maximum limits, e.g. '{"memory":"4GiB","cpus":2}' (env CORRAL_MAX_LIMITS)`)
	fs.StringVar(&c.defaultNetwork, "default-network", env("CORRAL_DEFAULT_NETWORK", "open"), "network mode of requests that set none: none, allowlist or open (env CORRAL_DEFAULT_NETWORK)")
	fs.BoolVar(&c.allowPrivate, "allow-private-egress", env("CORRAL_ALLOW_PRIVATE_EGRESS", "") == "true", "let allowlists and open sandboxes reach link-local and private addresses of other machines, never loopback or this host's own (env CORRAL_ALLOW_PRIVATE_EGRESS=true)")
	fs.BoolVar(&c.unsafeSharedNetwork, "unsafe-shared-network", env("CORRAL_UNSAFE_SHARED_NETWORK", "") == "true", "UNSAFE: put open-mode workspaces on a shared network where they can reach each other and the host (env CORRAL_UNSAFE_SHARED_NETWORK=true)")
	fs.StringVar(&c.subnet, "subnet", env("CORRAL_SUBNET", runtime.DefaultSubnet.String()), "IPv4 range for open-mode sandbox addresses; servers sharing a host need disjoint ranges (env CORRAL_SUBNET)")
	fs.StringVar(&c.engineTimeout, "engine-timeout", env("CORRAL_ENGINE_TIMEOUT", runtime.DefaultEngineTimeout.String()), "deadline of every call to the container engine (env CORRAL_ENGINE_TIMEOUT)")
	fs.StringVar(&c.checkInterval, "check-interval", env("CORRAL_CHECK_INTERVAL", workspace.DefaultCheckInterval.String()), "how often running workspaces are checked for a sandbox that died (restarted, or marked error) (env CORRAL_CHECK_INTERVAL)")
	fs.StringVar(&c.drainTimeout, "drain-timeout", env("CORRAL_DRAIN_TIMEOUT", defaultDrainTimeout.String()), "on SIGTERM, how long running requests may finish before they are answered 503 shutting_down (env CORRAL_DRAIN_TIMEOUT)")
	fs.BoolVar(&c.bootstrapAdmin, "bootstrap-admin", false, "create user admin with a key, printed once, if it has none")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c.apiKeys = os.Getenv("CORRAL_API_KEYS")

	log := hclog.New(&hclog.LoggerOptions{
		Name: "corral", Level: hclog.LevelFromString(c.logLevel), JSONFormat: c.logFormat == "json",
		Output: os.Stderr, TimeFormat: time.RFC3339,
	})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return run(ctx, c, log)
}

func run(ctx context.Context, c serveConfig, log hclog.Logger) error {
	pol, err := policyConfig(c)
	if err != nil {
		return err
	}
	dataDir, err := filepath.Abs(c.dataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	db, err := store.Open(ctx, filepath.Join(dataDir, "corral.db"))
	if err != nil {
		return err
	}
	defer db.Close()
	if err := importKeys(ctx, db, c.apiKeys); err != nil {
		return err
	}

	serverID, err := loadServerID(dataDir)
	if err != nil {
		return err
	}
	initPath := c.initPath
	if initPath == "" {
		if initPath, err = os.Executable(); err != nil {
			return fmt.Errorf("find own executable for sandboxes' init: %w", err)
		}
	}
	// "hide": sandboxes that share the host's file system (the process
	// runtime) never see the data directory: the database, other
	// workspaces, proxy sockets. Container runtimes ignore it.
	opts := map[string]string{"image": c.image, "hide": dataDir}
	if c.engineHost != "" {
		opts["host"] = c.engineHost
	}
	rtDir := filepath.Join(dataDir, "runtime", c.runtime)
	if err := os.MkdirAll(rtDir, 0o711); err != nil {
		return fmt.Errorf("runtime dir: %w", err)
	}
	subnet, err := netip.ParsePrefix(c.subnet)
	if err != nil || !subnet.Addr().Is4() || subnet.Bits() > 28 {
		return fmt.Errorf("--subnet %q: want an IPv4 range of /28 or wider, e.g. 10.213.0.0/16", c.subnet)
	}
	engineTimeout, err := time.ParseDuration(c.engineTimeout)
	if err != nil || engineTimeout <= 0 || engineTimeout > time.Hour {
		return fmt.Errorf("--engine-timeout %q: want a duration between 1s and 1h, e.g. 30s", c.engineTimeout)
	}
	checkInterval, err := time.ParseDuration(c.checkInterval)
	if err != nil || checkInterval < time.Second {
		return fmt.Errorf("--check-interval %q: want a duration of 1s or more, e.g. 15s", c.checkInterval)
	}
	drainTimeout, err := time.ParseDuration(c.drainTimeout)
	if err != nil || drainTimeout < 0 {
		return fmt.Errorf("--drain-timeout %q: want a duration, e.g. 30s", c.drainTimeout)
	}
	rt, err := runtime.Open(c.runtime, runtime.Config{
		DataDir: rtDir, ServerID: serverID, InitPath: initPath, Options: opts, Logger: log,
		Network: runtime.NetworkConfig{
			AllowPrivate: c.allowPrivate,
			UnsafeShared: c.unsafeSharedNetwork,
			Subnet:       subnet.Masked(),
		},
		EngineTimeout: engineTimeout,
	})
	if err != nil {
		return err
	}
	defer rt.Close()
	caps := rt.Capabilities()
	log.Info("runtime ready", "runtime", rt.Name(), "isolation", caps.Isolation, "network", caps.Policy.Network, "memory", caps.Policy.Memory, "cpu", caps.Policy.CPU, "pids", caps.Policy.Pids, "disk", caps.Policy.Disk)

	proxy := &policy.Proxy{Dir: filepath.Join(dataDir, "proxy"), AllowPrivate: pol.AllowPrivate, Logger: log.Named("egress")}
	proxy.OnDeny = func(workspaceID string, d policy.Denial) {
		log.Info("egress denied", "workspace_id", workspaceID, "host", d.Host, "port", d.Port, "reason", d.Reason)
		detail, _ := json.Marshal(d)
		owner := ""
		if w, err := db.Workspace(context.Background(), workspaceID); err == nil {
			owner = w.UserID
		}
		if err := db.Audit(context.Background(), owner, "egress.denied", workspaceID, string(detail)); err != nil {
			log.Warn("record egress denial", "workspace_id", workspaceID, "error", err)
		}
	}
	defer proxy.Shutdown(context.Background())

	mgr := workspace.New(workspace.Config{
		DB: db, Runtime: rt, Policy: pol, Proxy: proxy, Logger: log.Named("workspace"), DefaultImage: c.image,
	})
	defer mgr.Close() // before the store closes: exec records still being written
	if err := mgr.Reconcile(ctx); err != nil {
		return fmt.Errorf("reconcile workspaces: %w", err)
	}

	ccfg := conversation.ConfigFromEnv()
	ccfg.Logger = log.Named("conversation")
	convs, err := conversation.New(db, mgr, ccfg)
	if err != nil {
		return fmt.Errorf("conversations: %w", err)
	}
	if n, err := convs.Recover(ctx); err != nil {
		return err
	} else if n > 0 {
		log.Info("marked conversations interrupted by the restart", "count", n)
	}
	bg, cancelBG := context.WithCancel(context.WithoutCancel(ctx))
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		watchDone := make(chan struct{})
		go func() {
			defer close(watchDone)
			mgr.Watch(bg, checkInterval)
		}()
		mgr.Run(bg, 30*time.Second)
		<-watchDone
	}()
	// Before the store closes: Run saves last-use times as it ends, and
	// a check may be under way.
	defer func() {
		cancelBG()
		<-runDone
	}()

	srv := api.New(api.Config{DB: db, Workspaces: mgr, Conversations: convs, Logger: log.Named("api"), Version: version})
	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		return err
	}
	// Requests are cancelled with api.ErrShuttingDown when a shutdown's
	// drain deadline passes, so they answer 503 shutting_down.
	base, cutOff := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cutOff(nil)
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		BaseContext: func(net.Listener) context.Context { return base }}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()

	url := "http://" + ln.Addr().String()
	log.Info("listening", "url", url, "data_dir", dataDir)
	if c.bootstrapAdmin {
		if err := bootstrapAdmin(ctx, db, url); err != nil {
			return err
		}
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down; workspaces keep running and are adopted at the next start", "drain_timeout", drainTimeout)
	err = shutdown(hs, srv, cutOff, drainTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if cerr := convs.Close(sctx); cerr != nil {
		log.Warn("stop conversations", "error", cerr)
	}
	return err
}

// defaultDrainTimeout is --drain-timeout's default.
const defaultDrainTimeout = 30 * time.Second

// shutdownGrace is how long requests cut off at the drain deadline have to
// write their 503 before their connections are closed.
const shutdownGrace = 5 * time.Second

// shutdown stops hs: no new connections; every WebSocket closed with 1001
// and a reason; running requests get drain to finish, then are cancelled
// with api.ErrShuttingDown (cutOff), which makes them answer 503
// shutting_down, and get shutdownGrace to do so before their connections
// are closed.
func shutdown(hs *http.Server, srv *api.Server, cutOff context.CancelCauseFunc, drain time.Duration) error {
	dctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- hs.Shutdown(dctx) }()
	srv.CloseSockets(dctx)
	err := <-done
	if errors.Is(err, context.DeadlineExceeded) {
		cutOff(api.ErrShuttingDown)
		gctx, gcancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer gcancel()
		if err = hs.Shutdown(gctx); errors.Is(err, context.DeadlineExceeded) {
			err = hs.Close()
		}
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// policyConfig builds the operator's policy from flags.
func policyConfig(c serveConfig) (policy.Config, error) {
	pol := policy.DefaultConfig()
	pol.AllowPrivate = c.allowPrivate
	pol.DefaultNetwork = policy.Mode(c.defaultNetwork)
	for _, x := range []struct {
		name, val string
		into      *policy.Limits
	}{{"default-limits", c.defaultLimits, &pol.Defaults}, {"max-limits", c.maxLimits, &pol.Max}} {
		if x.val == "" {
			continue
		}
		dec := json.NewDecoder(strings.NewReader(x.val))
		dec.DisallowUnknownFields()
		if err := dec.Decode(x.into); err != nil {
			return pol, fmt.Errorf("--%s: %w", x.name, err)
		}
	}
	// A request that sets nothing gets the defaults: if they cannot be
	// resolved, every create would fail with an error blaming the client.
	if _, err := pol.Resolve(policy.Policy{}); err != nil {
		return pol, fmt.Errorf("--default-network / --default-limits: %w", err)
	}
	return pol, nil
}

// importKeys creates the users and keys of CORRAL_API_KEYS=alice:KEY1,bob:KEY2.
func importKeys(ctx context.Context, db *store.DB, spec string) error {
	for _, pair := range strings.Split(spec, ",") {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		name, key, ok := strings.Cut(pair, ":")
		if !ok || name == "" || key == "" {
			return fmt.Errorf("CORRAL_API_KEYS: want user:key pairs separated by commas")
		}
		u, err := db.EnsureUser(ctx, name)
		if err != nil {
			return fmt.Errorf("CORRAL_API_KEYS: user %q: %w", name, err)
		}
		if _, err := db.ImportKey(ctx, u.ID, key); err != nil {
			return fmt.Errorf("CORRAL_API_KEYS: key of %q: %w", name, err)
		}
	}
	return nil
}

// bootstrapAdmin makes sure user admin exists and, if it has no usable key,
// creates one and prints it (once: only its hash is kept).
func bootstrapAdmin(ctx context.Context, db *store.DB, url string) error {
	u, err := db.EnsureUser(ctx, "admin")
	if err != nil {
		return err
	}
	list, err := db.ListKeys(ctx, u.ID)
	if err != nil {
		return err
	}
	for _, k := range list {
		if k.RevokedAt == nil {
			fmt.Fprintf(os.Stderr, "\nCorral is listening on %s\nUser admin already has a key (printed when it was created). New one: corral keys create --user admin\n\n", url)
			return nil
		}
	}
	secret, _, err := db.CreateKey(ctx, u.ID)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "\nCorral is listening on %s\nAPI key for user admin (shown only now, keep it):\n\n    %s\n\nTry:  curl -H 'Authorization: Bearer %s' %s/workspaces\n\n", url, secret, secret, url)
	return nil
}

// loadServerID returns this server's ID, made on first start and kept in
// the data directory. Drivers label what they create with it.
func loadServerID(dataDir string) (string, error) {
	p := filepath.Join(dataDir, "server-id")
	if b, err := os.ReadFile(p); err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id, nil
		}
	}
	var b [8]byte
	rand.Read(b[:])
	id := "srv_" + hex.EncodeToString(b[:])
	if err := os.WriteFile(p, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("save server id: %w", err)
	}
	return id, nil
}
