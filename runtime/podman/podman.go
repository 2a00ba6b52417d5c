// Package podman is Corral's Podman runtime driver, registered as "podman".
// It talks to a Podman service (`podman system service`), rootful or
// rootless, through the github.com/containers/podman/v5 bindings.
//
// Building: the bindings need the build tags
//
//	remote exclude_graphdriver_btrfs containers_image_openpgp
//
// and build with CGO_ENABLED=0 (without containers_image_openpgp the gpgme
// package wants cgo). The bindings never negotiate an API version and
// refuse services older than 4.0; Debian 12's service is 4.3.1, so this
// driver avoids the calls that need newer ones (exec removal needs 4.8).
//
// A workspace is one long-lived container named corral-ID running the
// static corral binary, bind-mounted read-only at runtime.InitPathInSandbox,
// as PID 1 (`corral init`), plus a named volume corral-ID mounted at
// runtime.WorkspaceDir, which is the working directory and HOME. Both carry
// the labels runtime.LabelManaged, runtime.LabelWorkspace and
// runtime.LabelServer.
//
// Options (runtime.Config.Options):
//
//	host                 service URI (unix:///…); else $CONTAINER_HOST, else
//	                     $XDG_RUNTIME_DIR/podman/podman.sock when not root,
//	                     else unix:///run/podman/podman.sock
//	image                default image when a Spec names none
//	insecure_registries  comma-separated registries (host[:port]) pulled
//	                     from without TLS verification, e.g. 127.0.0.1:5001
//
// What it enforces is probed from the service when it is opened: rootless
// Podman on cgroup v1 ignores memory, CPU and pids limits, so the driver
// reports them unsupported there and the policy layer refuses them. Disk
// limits put the workspace's volume on a loop-mounted ext4 image of that
// size (disk.go): rootful, with the driver running as root on the service's
// host and runtime.Config.DataDir set; New checks it by doing it once.
//
// The driver talks to a local service only (unix socket): it reads the
// workspace's volume on the host to resolve symlinks safely (files.go), and
// signals commands' process groups from the host, or from inside the
// sandbox when it may not (exec.go).
//
// Commands without a TTY run as `/bin/sh -c 'exec setsid "$@"'` so that
// they lead their own process group: images need /bin/sh (and setsid for
// timeouts to reach background children). Exec sessions are not removed by
// the driver (the endpoint needs 4.8); the service removes each one itself
// a few minutes after it exits (its exit_command_delay), or at restart.
package podman

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containers/podman/v5/libpod/define"
	"github.com/containers/podman/v5/pkg/bindings"
	"github.com/containers/podman/v5/pkg/bindings/containers"
	"github.com/containers/podman/v5/pkg/bindings/images"
	"github.com/containers/podman/v5/pkg/bindings/system"
	"github.com/containers/podman/v5/pkg/bindings/volumes"
	entities "github.com/containers/podman/v5/pkg/domain/entities/types"
	"github.com/hashicorp/go-hclog"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/internal/engineguard"
	"github.com/corralhq/corral/runtime/internal/procnet"
)

// Name is the name the driver is registered under.
const Name = "podman"

func init() { runtime.Register(Name, New) }

// Driver runs workspaces as Podman containers. Safe for concurrent use.
type Driver struct {
	log      hclog.Logger
	serverID string
	dataDir  string
	initPath string
	image    string
	insecure map[string]bool

	// conn only carries values: the bindings look their connection and
	// the service's version up in the context of every call. Calls use
	// the caller's context for cancellation (see ctx).
	conn     context.Context
	sockPath string        // unix socket of the service, for exec streams
	timeout  time.Duration // bounds each call to the service (engineguard); 0: none
	rootless bool
	cgroupV2 bool
	caps     runtime.Capabilities
	version  string
	limits   hostLimits
	net      *openNet // how network mode open is served (network.go)

	// volumeDirs caches the host directory of each workspace's volume.
	volumeDirs sync.Map
	// known caches, per workspace that ran a command, the host path of its
	// memory.oom_control ("" if unreadable); see running.
	known sync.Map
	// signalInside makes Process.Signal always signal from inside the
	// sandbox, as it does when the host may not; tests set it.
	signalInside bool
}

var (
	_ runtime.Runtime        = (*Driver)(nil)
	_ runtime.ImagePuller    = (*Driver)(nil)
	_ runtime.LeftoverLister = (*Driver)(nil)
)

// New opens the driver: it connects to the service, checks its version and
// probes what it can enforce. It fails with errdefs.ErrUnavailable if the
// service does not answer and errdefs.ErrInvalidArgument for a bad option.
func New(cfg runtime.Config) (runtime.Runtime, error) {
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	log = log.Named(Name)
	initPath := cfg.InitPath
	if initPath == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("podman: find corral binary for init: %w", err)
		}
		initPath = exe
	}
	if st, err := os.Stat(initPath); err != nil || !st.Mode().IsRegular() {
		return nil, errdefs.Invalid("invalid_config", "podman: init binary %q is not a regular file", initPath)
	}
	uri := serviceURI(cfg.Options["host"], os.Getenv("CONTAINER_HOST"), os.Getenv("XDG_RUNTIME_DIR"), os.Geteuid())
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "unix" || u.Path == "" {
		return nil, errdefs.Invalid("invalid_config", "podman: host %q is not a unix:///path URI", uri)
	}
	d := &Driver{
		log:      log,
		serverID: cfg.ServerID,
		dataDir:  cfg.DataDir,
		initPath: initPath,
		image:    cfg.Options["image"],
		insecure: map[string]bool{},
		sockPath: u.Path,
	}
	for _, r := range strings.Split(cfg.Options["insecure_registries"], ",") {
		if r = strings.TrimSpace(r); r != "" {
			d.insecure[r] = true
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := bindings.NewConnection(ctx, uri)
	if err != nil {
		return nil, fmt.Errorf("podman: connect to %s: %w", uri, engineguard.Unavailable(Name, err))
	}
	d.conn = conn
	info, err := system.Info(d.ctx(ctx), nil)
	if err != nil {
		return nil, fmt.Errorf("podman: probe %s: %w", uri, mapErr(err))
	}
	d.rootless = info.Host.Security.Rootless
	d.cgroupV2 = info.Host.CgroupsVersion == "v2"
	d.version = info.Version.Version
	d.caps = capabilities(info, proxySupported(initPath))
	if !d.rootless {
		d.limits = defaultUlimits(confFiles)
	}
	if ok, why := d.probeDisk(ctx); ok {
		d.caps.Policy.Disk = true
		delete(d.caps.Policy.Why, "disk")
		if err := d.remountDisks(ctx); err != nil {
			return nil, fmt.Errorf("podman: %w", err)
		}
	} else {
		d.caps.Policy.Why["disk"] = why
	}
	// From here on every call the bindings make is bounded (engineguard).
	// The start-up probes above are not: the service's info is slow to
	// compute (seconds on a busy host), and ctx bounds them. The connection
	// is this driver's own, so changing it races with no one.
	c, err := bindings.GetClient(conn)
	if err != nil {
		return nil, fmt.Errorf("podman: connection to %s: %w", uri, err)
	}
	c.Client.Transport = engineguard.Transport(c.Client.Transport, Name, cfg.EngineTimeout)
	d.timeout = cfg.EngineTimeout
	d.setupOpen(cfg.Network)
	d.refreshOpen(ctx)
	log.Info("connected", "uri", uri, "version", d.version, "rootless", d.rootless,
		"cgroups", info.Host.CgroupsVersion, "isolation", d.caps.Isolation)
	return d, nil
}

// serviceURI picks the service to talk to: the "host" option, else
// $CONTAINER_HOST, else the rootless user's default socket, else root's.
func serviceURI(opt, env, xdg string, euid int) string {
	switch {
	case opt != "":
		return opt
	case env != "":
		return env
	case euid != 0 && xdg != "":
		return "unix://" + xdg + "/podman/podman.sock"
	default:
		return "unix:///run/podman/podman.sock"
	}
}

// confFiles are the containers.conf files whose default_ulimits the driver
// applies, later ones overriding earlier ones, as Podman reads them.
var confFiles = []string{"/usr/share/containers/containers.conf", "/etc/containers/containers.conf"}

// defaultUlimits returns the nofile and nproc limits of containers.conf's
// default_ulimits. The podman CLI applies them to the containers it
// creates; the service does not for containers created through its API, so
// the driver does (rootful only: a rootless service clamps to its user's
// limits itself).
func defaultUlimits(files []string) hostLimits {
	var l hostLimits
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		nofile, nproc := parseUlimits(string(b))
		if nofile > 0 {
			l.NoFile = nofile
		}
		if nproc > 0 {
			l.NProc = nproc
		}
	}
	return l
}

var (
	ulimitsRE = regexp.MustCompile(`(?ms)^\s*default_ulimits\s*=\s*\[(.*?)\]`)
	ulimitRE  = regexp.MustCompile(`"(nofile|nproc)=(-?\d+)(?::(-?\d+))?"`)
)

// parseUlimits reads the hard nofile and nproc limits from a
// containers.conf; 0 if it does not set them.
func parseUlimits(conf string) (nofile, nproc uint64) {
	m := ulimitsRE.FindStringSubmatch(conf)
	if m == nil {
		return 0, 0
	}
	for _, u := range ulimitRE.FindAllStringSubmatch(m[1], -1) {
		v := u[2]
		if u[3] != "" {
			v = u[3]
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			continue
		}
		if u[1] == "nofile" {
			nofile = n
		} else {
			nproc = n
		}
	}
	return nofile, nproc
}

// proxySupported reports whether the init binary can run the egress
// forwarder (`corral init --proxy`), which network mode allowlist needs.
func proxySupported(initPath string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, initPath, "init", "--help").CombinedOutput()
	return strings.Contains(string(out), "-proxy")
}

// capabilities derives what the driver can enforce from the service's
// facts. Rootless Podman on cgroup v1 cannot limit resources at all
// ("Resource limits are not supported and ignored on cgroups V1 rootless
// systems"); rootless on v2 can limit what is delegated to the user.
func capabilities(info *define.Info, proxy bool) runtime.Capabilities {
	s := policy.Support{
		NoFile:  true,
		Network: []policy.Mode{policy.NetworkNone},
		Why: map[string]string{
			"disk": "podman here has no size-capped storage: --storage-opt size needs XFS project quotas, which this host lacks",
		},
	}
	if proxy {
		s.Network = append(s.Network, policy.NetworkAllowlist)
	} else {
		s.Why["network:allowlist"] = "the corral init binary has no egress forwarder (--proxy)"
	}
	s.Network = append(s.Network, policy.NetworkOpen)

	rootless := info.Host.Security.Rootless
	v2 := info.Host.CgroupsVersion == "v2"
	mode := "rootful"
	if rootless {
		mode = "rootless"
	}
	switch {
	case !rootless:
		s.Memory, s.CPU, s.Pids = true, true, true
	case !v2:
		why := "rootless podman on cgroup v1 ignores resource limits (\"Resource limits are not supported and ignored on cgroups V1 rootless systems\")"
		s.Why["memory"], s.Why["cpu"], s.Why["pids"] = why, why, why
	default:
		delegated := map[string]bool{}
		for _, c := range info.Host.CgroupControllers {
			delegated[c] = true
		}
		for _, x := range []struct {
			name, ctrl string
			ok         *bool
		}{
			{"memory", "memory", &s.Memory},
			{"cpu", "cpu", &s.CPU},
			{"pids", "pids", &s.Pids},
		} {
			*x.ok = delegated[x.ctrl]
			if !*x.ok {
				s.Why[x.name] = "the cgroup v2 " + x.ctrl + " controller is not delegated to the rootless user"
			}
		}
	}
	return runtime.Capabilities{
		Policy:    s,
		TTY:       true,
		Isolation: fmt.Sprintf("container (podman %s, %s, cgroup %s)", info.Version.Version, mode, info.Host.CgroupsVersion),
	}
}

// ctx returns a context that carries the bindings' connection and ends with
// parent.
func (d *Driver) ctx(parent context.Context) context.Context {
	return connCtx{Context: parent, conn: d.conn}
}

// connCtx is parent's deadline and cancellation with the connection's
// values, which the bindings look up in every call.
type connCtx struct {
	context.Context
	conn context.Context
}

func (c connCtx) Value(key any) any {
	if v := c.conn.Value(key); v != nil {
		return v
	}
	return c.Context.Value(key)
}

// Name implements runtime.Runtime.
func (d *Driver) Name() string { return Name }

// Capabilities implements runtime.Runtime: what was probed at New.
func (d *Driver) Capabilities() runtime.Capabilities { return d.caps }

// Rootless reports whether the service runs rootless.
func (d *Driver) Rootless() bool { return d.rootless }

// Create implements runtime.Runtime. It creates the volume, then the
// container (pulling the image first if it is missing); if a step fails it
// removes what it made.
// errdefs.ErrAlreadyExists if the workspace exists, ErrInvalidArgument
// ("image_not_found") for an image that cannot be found,
// ErrFailedPrecondition for a policy this host cannot enforce.
func (d *Driver) Create(ctx context.Context, spec runtime.Spec) error {
	if spec.Image == "" {
		spec.Image = d.image
	}
	if spec.Image == "" {
		return errdefs.Invalid("invalid_image", "create workspace %s: no image given and the podman runtime has no default image", spec.ID)
	}
	if err := policy.Check(Name, spec.Policy, d.caps.Policy); err != nil {
		return fmt.Errorf("create workspace %s: %w", spec.ID, err)
	}
	if n := d.limits.NoFile; n > 0 && uint64(spec.Policy.Limits.NoFile) > n {
		return errdefs.New(errdefs.ErrFailedPrecondition, "unsupported_limit",
			"create workspace %s: runtime %q cannot raise the open-files limit above %d (default_ulimits in containers.conf)", spec.ID, Name, n)
	}
	if spec.Policy.Network.Mode == policy.NetworkAllowlist && spec.ProxySocket == "" {
		return errdefs.Invalid("invalid_spec", "create workspace %s: network mode allowlist needs a proxy socket", spec.ID)
	}
	openNet := spec.Policy.Network.Mode == policy.NetworkOpen && d.net.on
	if openNet {
		if err := d.ensureOpen(ctx); err != nil {
			return fmt.Errorf("create workspace %s: %w", spec.ID, err)
		}
	}
	c := d.ctx(ctx)
	name := containerName(spec.ID)
	// The volume comes first: creating it is the existence check (a
	// workspace's volume outlives its container only until Remove).
	vol := volumeName(spec.ID)
	volLabels := labels(d.serverID, spec.ID, spec.Labels)
	disk := int64(spec.Policy.Limits.Disk)
	if disk > 0 {
		volLabels[labelDisk] = formatSize(disk)
	}
	v, err := volumes.Create(c, entities.VolumeCreateOptions{Name: vol, Labels: volLabels}, nil)
	if err != nil {
		err = mapErr(err)
		if errors.Is(err, errdefs.ErrConflict) || strings.Contains(err.Error(), "already exists") {
			err = errdefs.New(errdefs.ErrAlreadyExists, "already_exists", "workspace %s already exists (volume %s)", spec.ID, vol)
		}
		return fmt.Errorf("create workspace %s: %w", spec.ID, err)
	}
	if disk > 0 {
		if err := d.attachDisk(ctx, spec.ID, v.Mountpoint, disk); err != nil {
			d.removeVolume(vol)
			return fmt.Errorf("create workspace %s: disk: %w", spec.ID, err)
		}
	}
	g := specFor(d.serverID, d.initPath, d.limits, spec)
	if openNet {
		d.net.applyOpen(g, d.rootless)
	}
	resp, err := containers.CreateWithSpec(c, g, nil)
	if err != nil && !errors.Is(mapErr(err), errdefs.ErrConflict) {
		// Pull a missing image only now, sparing present ones a call.
		if ok, xerr := images.Exists(c, spec.Image, nil); xerr == nil && !ok {
			if err = d.Pull(ctx, spec.Image, nil); err == nil {
				resp, err = containers.CreateWithSpec(c, g, nil)
			}
		}
	}
	if err == nil {
		err = d.checkWarnings(spec, resp.Warnings)
		if err != nil {
			d.removeContainer(name)
		}
	}
	if err != nil {
		if disk > 0 {
			if derr := d.detachDisk(context.Background(), spec.ID, v.Mountpoint); derr != nil {
				d.log.Warn("remove disk after failed create", "workspace_id", spec.ID, "error", derr)
			}
		}
		d.removeVolume(vol)
		err = mapErr(err)
		if errors.Is(err, errdefs.ErrConflict) {
			err = errdefs.New(errdefs.ErrAlreadyExists, "already_exists", "workspace %s already exists: %v", spec.ID, err)
		}
		return fmt.Errorf("create workspace %s: %w", spec.ID, err)
	}
	d.log.Info("workspace created", "workspace_id", spec.ID, "container_id", short(resp.ID), "image", spec.Image)
	return nil
}

// checkWarnings fails closed if the engine says it ignored a limit that
// the policy sets (Capabilities should have refused it already).
func (d *Driver) checkWarnings(spec runtime.Spec, warnings []string) error {
	l := spec.Policy.Limits
	limited := l.Memory > 0 || l.CPUs > 0 || l.Pids > 0
	for _, w := range warnings {
		d.log.Trace("create warning", "workspace_id", spec.ID, "warning", w)
		if limited && strings.Contains(strings.ToLower(w), "limit") {
			return errdefs.New(errdefs.ErrFailedPrecondition, "unsupported_limit",
				"podman would not enforce this workspace's limits: %s", w)
		}
	}
	return nil
}

// removeContainer and removeVolume clean up after a failed Create, with a
// context of their own so that a cancelled request still cleans up.
func (d *Driver) removeContainer(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	force, timeout := true, uint(0)
	if _, err := containers.Remove(d.ctx(ctx), name, &containers.RemoveOptions{Force: &force, Timeout: &timeout}); err != nil && !errors.Is(mapErr(err), errdefs.ErrNotFound) {
		d.log.Warn("remove container after failed create", "container", name, "error", err)
	}
}

func (d *Driver) removeVolume(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	force := true
	if err := volumes.Remove(d.ctx(ctx), name, &volumes.RemoveOptions{Force: &force}); err != nil && !errors.Is(mapErr(err), errdefs.ErrNotFound) {
		d.log.Warn("remove volume after failed create", "volume", name, "error", err)
	}
}

// inspect returns the workspace's container, ErrNotFound if it does not
// exist or belongs to another server.
func (d *Driver) inspect(ctx context.Context, id string) (*define.InspectContainerData, error) {
	data, err := containers.Inspect(d.ctx(ctx), containerName(id), nil)
	if err != nil {
		err = mapErr(err)
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil, errdefs.NotFound("workspace %s not found", id)
		}
		return nil, err
	}
	if data.Config == nil || data.Config.Labels[runtime.LabelServer] != d.serverID {
		return nil, errdefs.NotFound("workspace %s not found", id)
	}
	return data, nil
}

// Start implements runtime.Runtime. Idempotent; errdefs.ErrNotFound if the
// workspace does not exist.
func (d *Driver) Start(ctx context.Context, id string) error {
	data, err := d.inspect(ctx, id)
	if err != nil {
		return fmt.Errorf("start workspace %s: %w", id, err)
	}
	open := d.usesOpen(data)
	if open {
		// After a restart of the server (or the host), before the
		// sandbox gets a network: the firewall must be in place.
		if err := d.ensureOpen(ctx); err != nil {
			return fmt.Errorf("start workspace %s: %w", id, err)
		}
	}
	if err := containers.Start(d.ctx(ctx), containerName(id), nil); err != nil {
		return fmt.Errorf("start workspace %s: %w", id, mapErr(err))
	}
	if open && !d.rootless {
		if err := d.checkBridge(); err != nil {
			timeout := uint(0)
			if serr := containers.Stop(d.ctx(ctx), containerName(id), &containers.StopOptions{Timeout: &timeout}); serr != nil {
				d.log.Warn("stop a workspace whose network cannot be firewalled", "workspace_id", id, "error", mapErr(serr))
			}
			return fmt.Errorf("start workspace %s: %w", id, err)
		}
	}
	if data.Config != nil && slices.Contains(data.Config.Entrypoint, "--proxy") {
		if err := d.waitForwarder(ctx, id); err != nil {
			return fmt.Errorf("start workspace %s: %w", id, err)
		}
	}
	d.log.Info("workspace started", "workspace_id", id)
	return nil
}

// waitForwarder returns once a started allowlist workspace's egress
// forwarder (`corral init --proxy`) listens, so that its first command
// finds it, as the docker driver does. It inspects the container for its
// new PID 1; one whose PID 1 the host cannot see (a remote engine) is not
// waited for.
func (d *Driver) waitForwarder(ctx context.Context, id string) error {
	data, err := d.inspect(ctx, id)
	if err != nil {
		return err
	}
	if data.State == nil || data.State.Pid <= 0 {
		return nil
	}
	// Rootless containers on cgroup v1 have no cgroup of their own to
	// recognise PID 1 by: it is alive while its /proc entry is.
	proc := "/proc/" + strconv.Itoa(data.State.Pid)
	if _, err := os.Stat(proc + "/net/tcp"); err != nil {
		return nil // not on this host
	}
	return procnet.WaitForwarder(ctx, data.State.Pid, func() bool {
		_, err := os.Stat(proc)
		return err == nil
	})
}

// Stop implements runtime.Runtime: PID 1 gets SIGTERM, everything else is
// killed with the container. Idempotent; errdefs.ErrNotFound if the
// workspace does not exist.
func (d *Driver) Stop(ctx context.Context, id string) error {
	if _, err := d.inspect(ctx, id); err != nil {
		return fmt.Errorf("stop workspace %s: %w", id, err)
	}
	timeout := uint(5)
	if err := containers.Stop(d.ctx(ctx), containerName(id), &containers.StopOptions{Timeout: &timeout}); err != nil {
		return fmt.Errorf("stop workspace %s: %w", id, mapErr(err))
	}
	d.log.Info("workspace stopped", "workspace_id", id)
	return nil
}

// Remove implements runtime.Runtime: the container, then its volume.
// Idempotent: a missing workspace (or a half-removed one) succeeds.
func (d *Driver) Remove(ctx context.Context, id string) error {
	c := d.ctx(ctx)
	d.volumeDirs.Delete(id)
	d.known.Delete(id)
	_, err := d.inspect(ctx, id)
	switch {
	case err == nil:
		force, timeout := true, uint(0)
		if _, err := containers.Remove(c, containerName(id), &containers.RemoveOptions{Force: &force, Timeout: &timeout}); err != nil && !errors.Is(mapErr(err), errdefs.ErrNotFound) {
			return fmt.Errorf("remove workspace %s: %w", id, mapErr(err))
		}
	case !errors.Is(err, errdefs.ErrNotFound):
		return fmt.Errorf("remove workspace %s: %w", id, err)
	}
	// The volume may outlive its container (a crash between the two
	// removals); remove it if it is ours.
	v, err := volumes.Inspect(c, volumeName(id), nil)
	if err != nil {
		if errors.Is(mapErr(err), errdefs.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("remove workspace %s: volume: %w", id, mapErr(err))
	}
	if v.Labels[runtime.LabelServer] != d.serverID {
		return nil
	}
	if v.Labels[labelDisk] != "" {
		if err := d.detachDisk(ctx, id, v.Mountpoint); err != nil {
			return fmt.Errorf("remove workspace %s: disk: %w", id, err)
		}
	}
	force := true
	if err := volumes.Remove(c, volumeName(id), &volumes.RemoveOptions{Force: &force}); err != nil && !errors.Is(mapErr(err), errdefs.ErrNotFound) {
		return fmt.Errorf("remove workspace %s: volume: %w", id, mapErr(err))
	}
	d.log.Info("workspace removed", "workspace_id", id)
	return nil
}

// Inspect implements runtime.Runtime. errdefs.ErrNotFound if the workspace
// does not exist.
func (d *Driver) Inspect(ctx context.Context, id string) (runtime.Status, error) {
	data, err := d.inspect(ctx, id)
	if err != nil {
		return runtime.Status{}, fmt.Errorf("inspect workspace %s: %w", id, err)
	}
	st := runtime.Status{
		ID:     id,
		State:  stateOf(data.State.Status),
		Detail: map[string]string{"container_id": data.ID, "image": data.ImageName},
	}
	if st.State == runtime.StateRunning {
		st.StartedAt = data.State.StartedAt
		st.Detail["pid"] = fmt.Sprint(data.State.Pid)
	}
	return st, nil
}

// stateOf maps a Podman container status to a workspace state.
func stateOf(status string) runtime.State {
	switch status {
	case "running", "paused":
		return runtime.StateRunning
	case "created", "configured", "initialized":
		return runtime.StateCreated
	default: // exited, stopped, stopping, removing, unknown
		return runtime.StateStopped
	}
}

// List implements runtime.Runtime: every container labelled with this
// server's ID.
func (d *Driver) List(ctx context.Context) ([]runtime.Status, error) {
	all := true
	list, err := containers.List(d.ctx(ctx), &containers.ListOptions{
		All:     &all,
		Filters: map[string][]string{"label": {runtime.LabelServer + "=" + d.serverID}},
	})
	if err != nil {
		return nil, fmt.Errorf("list workspaces: %w", mapErr(err))
	}
	out := make([]runtime.Status, 0, len(list))
	for _, c := range list {
		id := c.Labels[runtime.LabelWorkspace]
		if id == "" || c.Labels[runtime.LabelServer] != d.serverID {
			continue
		}
		st := runtime.Status{
			ID:     id,
			State:  stateOf(c.State),
			Detail: map[string]string{"container_id": c.ID, "image": c.Image},
		}
		if st.State == runtime.StateRunning {
			st.StartedAt = time.Unix(c.StartedAt, 0)
		}
		out = append(out, st)
	}
	return out, nil
}

// Close implements runtime.Runtime. Workspaces keep running.
func (d *Driver) Close() error {
	d.closeOpen()
	if c, err := bindings.GetClient(d.conn); err == nil {
		c.Client.CloseIdleConnections()
	}
	return nil
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Leftovers implements runtime.LeftoverLister: the workspaces that have a
// volume labelled with this server's ID (a Create cut off between volume
// and container leaves one without a container; Remove removes both).
func (d *Driver) Leftovers(ctx context.Context) ([]string, error) {
	list, err := volumes.List(d.ctx(ctx), &volumes.ListOptions{Filters: map[string][]string{
		"label": {runtime.LabelManaged + "=true", runtime.LabelServer + "=" + d.serverID},
	}})
	if err != nil {
		return nil, fmt.Errorf("list volumes: %w", mapErr(err))
	}
	var out []string
	for _, v := range list {
		if id := v.Labels[runtime.LabelWorkspace]; id != "" {
			out = append(out, id)
		}
	}
	return out, nil
}
