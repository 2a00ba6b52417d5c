// Package docker is Corral's Docker Engine runtime. A workspace is one
// long-lived container running `corral init` as PID 1, with a named volume
// mounted at /workspace that outlives stops and starts; commands run in it
// through the exec API.
//
// The engine client is github.com/moby/moby/client (+ moby/moby/api): the
// Docker project's own, maintained client (github.com/docker/docker is frozen
// at v28), small next to the alternatives, and it negotiates the API version
// (1.41 with Debian's dockerd 20.10). It is pre-1.0 and its option types
// change between minor versions, so it is pinned exactly in go.mod and none
// of its types leave this package.
//
// The exec API cannot signal a command. The engine makes every exec a
// session and process-group leader, so when the container's processes are
// visible from here (engine on this machine, checked per container) the
// driver signals the group from the host and reads the memory cgroup's OOM
// counter; otherwise a shell inside the container signals the command's
// processes, found by a marker in their environment, and OOM kills are not
// told apart from other SIGKILLs.
//
// Disk limits are not supported: the volume's filesystem has no quotas on
// hosts like ours, and a size-capped tmpfs volume loses its files when the
// container stops; Capabilities says so and policy.Check refuses them.
package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/internal/engineguard"
	"github.com/docker/go-connections/sockets"
	"github.com/hashicorp/go-hclog"
	"github.com/moby/moby/client"
)

// Name is the name the driver is registered under.
const Name = "docker"

// DefaultHost is the engine socket used when neither the "host" option nor
// DOCKER_HOST is set.
const DefaultHost = "unix:///var/run/docker.sock"

func init() { runtime.Register(Name, New) }

// Driver runs workspaces as Docker containers.
type Driver struct {
	cli      *client.Client
	log      hclog.Logger
	serverID string
	initPath string
	image    string
	host     string
	// timeout bounds each engine call (engineguard); 0 means unbounded.
	timeout time.Duration
	caps    runtime.Capabilities
	// local is true when the engine listens on a unix socket, so it may
	// run on this machine; each container's view confirms it (see view).
	local bool

	// spool is where uploads are checked before they go to the engine
	// (see spoolDir).
	spool string

	net *openNet // how network mode open is served (network.go)

	locks sync.Map // workspace ID → *sync.Mutex, serialising lifecycle calls
	views sync.Map // container name → hostView
}

var (
	_ runtime.Runtime        = (*Driver)(nil)
	_ runtime.ImagePuller    = (*Driver)(nil)
	_ runtime.LeftoverLister = (*Driver)(nil)
)

// New opens the docker driver. Options: "host" (engine address, else
// DOCKER_HOST, else DefaultHost) and "image" (the image used when a Spec
// names none). It pings the engine and measures its capabilities; an
// unreachable engine fails with errdefs.ErrUnavailable.
func New(cfg runtime.Config) (runtime.Runtime, error) {
	return Open(context.Background(), cfg)
}

// Open is New with a context for the start-up probes.
func Open(ctx context.Context, cfg runtime.Config) (*Driver, error) {
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	host := cfg.Options["host"]
	if host == "" {
		host = os.Getenv("DOCKER_HOST")
	}
	if host == "" {
		host = DefaultHost
	}
	initPath := cfg.InitPath
	if initPath == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("docker: find the corral binary for init: %w", err)
		}
		initPath = exe
	}
	if st, err := os.Stat(initPath); err != nil || st.IsDir() {
		return nil, errdefs.Invalid("invalid_config", "docker: init binary %q is not a file: %v", initPath, err)
	}
	hc, err := guardedHTTPClient(host, cfg.EngineTimeout)
	if err != nil {
		return nil, errdefs.Invalid("invalid_config", "docker: host %q: %v", host, err)
	}
	cli, err := client.New(client.WithHost(host), client.WithHTTPClient(hc))
	if err != nil {
		return nil, errdefs.Invalid("invalid_config", "docker: client for %q: %v", host, err)
	}
	d := &Driver{
		cli:      cli,
		log:      log.Named("docker"),
		serverID: cfg.ServerID,
		initPath: initPath,
		image:    cfg.Options["image"],
		host:     host,
		timeout:  cfg.EngineTimeout,
	}
	if d.spool, err = spoolDir(cfg.DataDir); err != nil {
		cli.Close()
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := cli.Ping(pctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		cli.Close()
		return nil, fmt.Errorf("docker: ping engine at %s: %w", host, engineguard.Unavailable(Name, err))
	}
	info, err := cli.Info(pctx, client.InfoOptions{})
	if err != nil {
		cli.Close()
		return nil, engineErr(err, "docker: engine info")
	}
	d.local = engineIsLocal(host)
	d.caps = capabilitiesFrom(info.Info, d.local)
	d.setupOpen(cfg.Network, slices.Contains(info.Info.SecurityOptions, "name=rootless"))
	d.refreshOpen(pctx)
	d.log.Info("opened", "host", host, "api_version", cli.ClientVersion(),
		"server_version", info.Info.ServerVersion, "cgroup_version", info.Info.CgroupVersion,
		"local", d.local, "isolation", d.caps.Isolation)
	return d, nil
}

// engineIsLocal reports whether the engine may run on this machine. Whether
// its containers' processes are visible from here is checked per container.
func engineIsLocal(host string) bool {
	return strings.HasPrefix(host, "unix://")
}

// Name returns "docker".
func (d *Driver) Name() string { return Name }

// Capabilities reports what was measured when the driver was opened.
func (d *Driver) Capabilities() runtime.Capabilities { return d.caps }

// Close releases the client's connections; workspaces keep running. When
// none of the server's workspaces is left, it also removes the open-mode
// network and the server's firewall.
func (d *Driver) Close() error {
	d.closeOpen()
	return d.cli.Close()
}

// lock serialises lifecycle calls on one workspace inside this process.
func (d *Driver) lock(id string) func() {
	m, _ := d.locks.LoadOrStore(id, &sync.Mutex{})
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

var validID = regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)

func checkID(id string) error {
	if !validID.MatchString(id) {
		return errdefs.Invalid("invalid_id", "workspace ID %q must be 1-64 characters of [a-z0-9_-]", id)
	}
	return nil
}

var nameUnsafe = regexp.MustCompile(`[^a-zA-Z0-9_.-]+`)

// objectName is the name of the workspace's container and of its volume. It
// holds the server ID so that two servers on one engine never collide.
func (d *Driver) objectName(id string) string {
	if s := nameUnsafe.ReplaceAllString(d.serverID, "_"); s != "" {
		return "corral-" + s + "-" + id
	}
	return "corral-" + id
}

// labels are the ownership labels on everything the driver creates.
func (d *Driver) labels(id string, extra map[string]string) map[string]string {
	l := make(map[string]string, len(extra)+3)
	for k, v := range extra {
		l[k] = v
	}
	l[runtime.LabelManaged] = "true"
	l[runtime.LabelWorkspace] = id
	l[runtime.LabelServer] = d.serverID
	return l
}

// engineErr classifies an engine error at the driver boundary: the caller
// sees errdefs classes, never the client's.
func engineErr(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	msg := fmt.Sprintf(format, args...) + ": " + err.Error()
	var e *errdefs.Error
	if errors.As(err, &e) {
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
	}
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
	case client.IsErrConnectionFailed(err), isEngineGone(err):
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), engineguard.Unavailable(Name, err))
	case isNotFound(err):
		return errdefs.NotFound("%s", msg)
	case isConflict(err):
		return errdefs.New(errdefs.ErrConflict, "conflict", "%s", msg)
	case isInvalid(err):
		return errdefs.Invalid("invalid_argument", "%s", msg)
	}
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
}

// isEngineGone reports a connection to the engine that broke or could not
// be made: the engine is down or restarting.
func isEngineGone(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, io.ErrUnexpectedEOF)
}

// guardedHTTPClient is the engine client's HTTP client: a transport for
// host whose every call is bounded by timeout (engineguard).
func guardedHTTPClient(host string, timeout time.Duration) (*http.Client, error) {
	u, err := client.ParseHostURL(host)
	if err != nil {
		return nil, err
	}
	base := &http.Transport{}
	if err := sockets.ConfigureTransport(base, u.Scheme, u.Host); err != nil {
		return nil, err
	}
	return &http.Client{Transport: engineguard.Transport(base, Name, timeout)}, nil
}

func isNotFound(err error) bool { return cerrdefs.IsNotFound(err) }
func isConflict(err error) bool { return cerrdefs.IsConflict(err) }
func isInvalid(err error) bool  { return cerrdefs.IsInvalidArgument(err) }
