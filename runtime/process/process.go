// Package process is the runtime driver that runs workspaces as plain OS
// processes, isolated with Linux namespaces and cgroups where the host
// allows, with no container engine.
//
// A workspace is a directory, DataDir/workspaces/ID, whose home/ holds the
// workspace's files; commands run with it as HOME and working directory.
// Starting a workspace starts its supervisor, `corral init --serve`, in new
// mount, pid, ipc, uts and network namespaces (in every network mode: see
// network.go for how mode open reaches the internet and nothing else). The
// supervisor is PID 1 there: it reaps orphans and starts each command on
// request with stdio fds that the driver passes over a unix socket, so
// output flows straight from the command to the driver and an exec costs
// about one fork. Commands start inside the workspace's cgroups
// (the supervisor itself stays outside them). Stopping kills the supervisor
// and with it the whole pid namespace. Supervisors run in their own session
// and survive a server restart; a new driver on the same DataDir finds them
// again through their pid file and socket.
//
// In its mount namespace the supervisor confines the file system: the
// host's mounts are read-only, the runtime's data directory (other
// workspaces, sockets) is hidden under an empty tmpfs, /run (the host's
// daemon sockets) is covered, /tmp and /dev/shm are private tmpfs, and only
// the workspace's home is writable. Commands fork with a capability
// bounding set like Docker's default, so root cannot undo this. When the
// server is root, commands also run as an unprivileged uid of their own
// (sandboxUID), which owns the workspace's files: root's files and sockets
// are out of reach. Without root, commands are root of a user namespace
// mapped to the server's user. Commands still read the host's world-readable
// files: they run the host's programs. Without namespaces (option
// namespaces=false, or a host that forbids them) none of this applies:
// commands are plain processes of the server's user. Use a container
// runtime where a stronger boundary matters.
package process

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/firewall"
	"github.com/corralhq/corral/sandboxinit"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

func init() { runtime.Register("process", New) }

// Name is the name the driver registers under.
const Name = "process"

// Driver runs workspaces as processes. Open it with New (or runtime.Open).
type Driver struct {
	dataDir   string
	serverID  string
	initPath  string
	log       hclog.Logger
	caps      runtime.Capabilities
	ns        nsConfig
	cg        *cgroupHost // nil: no cgroups here
	disk      bool        // loop-mounted ext4 images work
	uidSep    bool        // commands run as a per-workspace unprivileged uid
	uidWhy    string      // why not, if not
	uidSepOff bool        // option uid_separation=false
	hide      []string    // option hide: more host directories sandboxes must not see
	netCfg    runtime.NetworkConfig
	open      openNet // how network mode open works here

	// sweep removes upload temporaries a killed server left (files.go);
	// Close stops it and waits.
	stopSweep context.CancelFunc
	sweeping  sync.WaitGroup
	// swept holds the homes this driver has swept whole (tarfs.SweepAll):
	// at start-up, or by the first file operation on a workspace.
	swept sync.Map

	mu       sync.Mutex
	children map[string]*supervisorProc // supervisors this driver started (it must reap them)
	metas    map[string]*meta           // cache of workspaces' meta.json

	spares map[string]*net.UnixConn // per workspace: a connection to its supervisor, dialed ahead (under mu)

	devnullOnce        sync.Once
	devnullR, devnullW *os.File // shared by the commands without stdin or stdout/stderr
	devnullErr         error
}

// supervisorProc is a supervisor started by this driver.
type supervisorProc struct {
	pid  int
	done chan struct{} // closed once reaped
}

// meta is what a workspace keeps in meta.json; it never changes after
// Create.
type meta struct {
	ID          string            `json:"id"`
	ServerID    string            `json:"server_id"`
	CreatedAt   time.Time         `json:"created_at"`
	Env         map[string]string `json:"env,omitempty"`
	Policy      policy.Policy     `json:"policy"`
	ProxySocket string            `json:"proxy_socket,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Disk        bool              `json:"disk,omitempty"` // home is a loop-mounted image
	// UID, if not 0, is the host uid (and gid) that owns home and runs
	// the workspace's commands (see sandboxUID).
	UID uint32 `json:"uid,omitempty"`
}

// pidFile is init.json: the running supervisor.
type pidFile struct {
	Pid       int       `json:"pid"`
	StartTime uint64    `json:"start_time"` // from /proc/PID/stat, against pid reuse
	StartedAt time.Time `json:"started_at"`
	Socket    string    `json:"socket"`
	PidNS     bool      `json:"pid_ns"`
}

// nsConfig is which namespaces supervisors get on this host.
type nsConfig struct {
	ok      bool // mount, pid, ipc, uts (and net when asked) namespaces work
	userns  bool // they need a user namespace (not root)
	why     string
	netWhy  string
	netOK   bool
	probeMs float64
}

var idRE = regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)

// New opens the process driver on cfg.DataDir. It probes what the host
// allows (root, namespaces, cgroups, loop devices) and reports it in
// Capabilities; it fails only if DataDir is unusable or the init binary
// cannot be found. Option "namespaces" ("true" by default) set to "false"
// runs supervisors without namespaces: then only network mode open is
// available. Option "uid_separation" ("true" by default) set to "false"
// runs commands as root when the server is root (see sandboxUID). Option
// "hide" lists (colon-separated) more host directories that sandboxes must
// not see, covered like DataDir: the server's own data directory (its
// database, keys, and every workspace's egress proxy socket) belongs there.
func New(cfg runtime.Config) (runtime.Runtime, error) {
	if cfg.DataDir == "" {
		return nil, errdefs.Invalid("invalid_config", "process runtime: DataDir is required")
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("process runtime: data dir: %w", err)
	}
	initPath := cfg.InitPath
	if initPath == "" {
		if initPath, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("process runtime: find corral binary for init: %w", err)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	d := &Driver{
		dataDir:  dataDir,
		serverID: cfg.ServerID,
		initPath: initPath,
		log:      log.Named("process"),
		children: map[string]*supervisorProc{},
		metas:    map[string]*meta{},
		netCfg:   cfg.Network,
	}
	for _, dir := range []string{d.wsRoot(), filepath.Join(dataDir, "sock")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("process runtime: %w", err)
		}
	}
	if len(d.sockPath(strings.Repeat("x", 64))) > 107 {
		return nil, errdefs.Invalid("invalid_config", "process runtime: data dir %s is too long for unix socket paths", dataDir)
	}
	noNS := false
	if v, ok := cfg.Options["namespaces"]; ok {
		on, err := strconv.ParseBool(v)
		if err != nil {
			return nil, errdefs.Invalid("invalid_config", "process runtime: option namespaces=%q is not a boolean", v)
		}
		noNS = !on
	}
	if v, ok := cfg.Options["uid_separation"]; ok {
		on, err := strconv.ParseBool(v)
		if err != nil {
			return nil, errdefs.Invalid("invalid_config", "process runtime: option uid_separation=%q is not a boolean", v)
		}
		d.uidSepOff = !on
	}
	if v := cfg.Options["hide"]; v != "" {
		for _, p := range filepath.SplitList(v) {
			if !filepath.IsAbs(p) || filepath.Clean(p) == "/" {
				return nil, errdefs.Invalid("invalid_config", "process runtime: option hide: %q is not an absolute directory other than /", p)
			}
			d.hide = append(d.hide, filepath.Clean(p))
		}
	}
	d.probe(noNS)
	d.log.Info("process runtime ready", "data_dir", dataDir, "isolation", d.caps.Isolation,
		"network", fmt.Sprint(d.caps.Policy.Network), "probe_ms", d.ns.probeMs)
	if len(d.caps.Policy.Why) > 0 {
		d.log.Warn("process runtime cannot enforce everything on this host", "missing", fmt.Sprint(d.caps.Policy.Why))
	}
	d.sweepAtStart()
	return d, nil
}

var _ runtime.Runtime = (*Driver)(nil)
var _ runtime.LeftoverLister = (*Driver)(nil)
var _ runtime.PathRemover = (*Driver)(nil)

// Name is "process".
func (d *Driver) Name() string { return Name }

// Capabilities reports what the host allowed when the driver was opened.
func (d *Driver) Capabilities() runtime.Capabilities { return d.caps }

// Close leaves supervisors running, to be found again by the next driver
// opened on the same DataDir. With no workspace left it removes the
// server's firewall table; with workspaces left the rules stay, guarding
// the running sandboxes.
func (d *Driver) Close() error {
	d.stopSweep()
	d.sweeping.Wait()
	if !d.open.isolated {
		return nil
	}
	ws, err := d.List(context.Background())
	if err != nil || len(ws) > 0 {
		return err
	}
	if err := firewall.Remove(d.serverID); err != nil {
		return fmt.Errorf("process runtime: %w", err)
	}
	return nil
}

// probe measures what this host allows and fills d.caps. noNS turns
// namespaces off (option namespaces=false), for hosts where creating them
// is allowed but unwanted.
func (d *Driver) probe(noNS bool) {
	why := map[string]string{}
	root := os.Geteuid() == 0
	if noNS {
		d.ns = nsConfig{why: "turned off by option namespaces=false"}
		d.ns.netWhy = d.ns.why
	} else {
		d.ns = d.probeNamespaces(root)
	}
	d.cg, why["cgroup"] = probeCgroups(root)
	d.disk, why["disk"] = probeDisk(root)

	d.probeOpen(d.netCfg)
	sup := policy.Support{NoFile: true}
	if d.ns.netOK {
		sup.Network = []policy.Mode{policy.NetworkNone, policy.NetworkAllowlist}
	} else {
		why["network:none"] = d.ns.netWhy
		why["network:allowlist"] = d.ns.netWhy
	}
	if d.open.isolated || d.open.shared {
		sup.Network = append(sup.Network, policy.NetworkOpen)
	} else {
		why["network:open"] = d.open.why
	}
	if d.cg != nil {
		sup.Memory, sup.CPU, sup.Pids = d.cg.memory != "", d.cg.cpu != "", d.cg.pids != ""
		if !sup.Memory {
			why["memory"] = "no memory cgroup controller available"
		} else if d.cg.version == "v1" && !d.cg.memsw && swapOn() {
			// A v1 memory limit without memsw leaves swap uncapped: a
			// command could use limit+swap. Fail closed, as Docker does.
			sup.Memory = false
			why["memory"] = "swap is on and the kernel has no memory.memsw (swap accounting): the limit would not cover swap"
		}
		if !sup.CPU {
			why["cpu"] = "no cpu cgroup controller available"
		}
		if !sup.Pids {
			why["pids"] = "no pids cgroup controller available"
		}
	} else {
		for _, k := range []string{"memory", "cpu", "pids"} {
			why[k] = why["cgroup"]
		}
	}
	delete(why, "cgroup")
	sup.Disk = d.disk
	if d.disk {
		delete(why, "disk")
	}
	for k, v := range why {
		if v == "" {
			delete(why, k)
		}
	}
	if len(why) > 0 {
		sup.Why = why
	}
	d.uidSep, d.uidWhy = d.probeUIDSeparation(root)
	iso := "plain processes (no namespaces: " + d.ns.why + ")"
	if d.ns.ok {
		iso = "namespaces: mount, pid, ipc, uts"
		if d.ns.netOK {
			iso += ", net"
		}
		switch {
		case d.open.isolated:
			iso += " (open: veth, NAT and nftables rules)"
		case d.open.shared:
			iso += " (open: the host's network, unsafe)"
		}
		if d.ns.userns {
			iso += ", user"
		}
		iso += "; host file system read-only, workspace writable"
		if d.uidSep {
			iso += "; commands run as an unprivileged uid per workspace"
		} else if root {
			iso += "; commands run as root (" + d.uidWhy + ")"
		}
	}
	if d.cg != nil {
		iso += "; cgroup " + d.cg.version
	}
	if d.disk {
		iso += "; disk: loop-mounted ext4"
	}
	_, ptyErr := os.Stat("/dev/ptmx")
	d.caps = runtime.Capabilities{Policy: sup, TTY: ptyErr == nil, Isolation: iso}
}

// uidBase and uidRange bound the uids of workspaces: far above the ranges
// that /etc/subuid hands out for rootless containers.
const (
	uidBase  = 1 << 30
	uidRange = 1 << 29
)

// sandboxUID is the host uid (and gid) that owns workspace id's files and
// runs its commands when the server is root: one per workspace, with no
// entry in /etc/passwd, so commands cannot read root's files or reach root's
// sockets, and workspaces cannot touch each other's files.
func sandboxUID(id string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(id))
	return uidBase + h.Sum32()%uidRange
}

// probeUIDSeparation decides whether commands can run as sandboxUID: the
// server must be root, supervisors confined (namespaces), option
// "uid_separation" not "false", and the workspace paths reachable by an
// unprivileged user inside the confinement (directories above DataDir, or
// above the hidden directory holding it (option hide), searchable by
// others, except under /tmp, which confinement replaces).
func (d *Driver) probeUIDSeparation(root bool) (bool, string) {
	switch {
	case !root:
		return false, "not root"
	case !d.ns.ok:
		return false, "no namespaces"
	case d.uidSepOff:
		return false, "turned off by option uid_separation=false"
	}
	// Inside the sandbox a hidden directory is a fresh tmpfs (mode 0755)
	// with the workspace's home bound back below it: only the directories
	// above the outermost hidden one that holds DataDir must be searchable.
	top := d.dataDir
	for _, h := range d.hide {
		if strings.HasPrefix(d.dataDir, h+"/") && len(h) < len(top) {
			top = h
		}
	}
	for dir := filepath.Dir(top); dir != "/"; dir = filepath.Dir(dir) {
		if dir == "/tmp" || strings.HasPrefix(dir, "/tmp/") {
			continue
		}
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false, fmt.Sprintf("%s is not searchable by other users", dir)
		}
	}
	return true, ""
}

// probeNamespaces starts `corral init --check` in the namespaces a
// workspace would get and reports what worked.
func (d *Driver) probeNamespaces(root bool) nsConfig {
	c := nsConfig{userns: !root}
	try := func(net bool) error {
		home := filepath.Join(d.dataDir, "probe")
		if err := os.MkdirAll(home, 0o755); err != nil {
			return err
		}
		flags := sandboxinit.Flags{Check: true, Proc: true, Confine: true, Home: home, Hide: []string{d.dataDir}, Loopback: net, Hostname: "corral-probe"}
		cmd := exec.Command(d.initPath, append([]string{"init"}, flags.Args()...)...)
		cmd.SysProcAttr = d.sysProcAttr(net, true)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	start := time.Now()
	if err := try(false); err != nil {
		c.why = fmt.Sprintf("cannot create namespaces: %v", err)
		c.netWhy = c.why
		return c
	}
	c.ok = true
	if err := try(true); err != nil {
		c.netWhy = fmt.Sprintf("cannot create network namespaces: %v", err)
	} else {
		c.netOK = true
	}
	c.probeMs = float64(time.Since(start).Microseconds()) / 1000
	return c
}

// sysProcAttr is how a supervisor is started: its own session (so it
// survives the server), and namespaces if the host allows.
func (d *Driver) sysProcAttr(netns, namespaces bool) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setsid: true}
	if !namespaces {
		return a
	}
	a.Cloneflags = syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS
	if netns {
		a.Cloneflags |= syscall.CLONE_NEWNET
	}
	if os.Geteuid() != 0 {
		a.Cloneflags |= syscall.CLONE_NEWUSER
		a.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}}
		a.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}}
		a.GidMappingsEnableSetgroups = false
	}
	return a
}

// Paths.

func (d *Driver) wsRoot() string           { return filepath.Join(d.dataDir, "workspaces") }
func (d *Driver) wsDir(id string) string   { return filepath.Join(d.wsRoot(), id) }
func (d *Driver) homeDir(id string) string { return filepath.Join(d.wsDir(id), "home") }
func (d *Driver) metaPath(id string) string {
	return filepath.Join(d.wsDir(id), "meta.json")
}
func (d *Driver) pidPath(id string) string { return filepath.Join(d.wsDir(id), "init.json") }
func (d *Driver) stoppedPath(id string) string {
	return filepath.Join(d.wsDir(id), "stopped")
}

// sockPath is the supervisor's socket. Unix socket paths are short (108
// bytes), so it lives in DataDir/sock under a hash of the ID.
func (d *Driver) sockPath(id string) string {
	h := sha256.Sum256([]byte(id))
	return filepath.Join(d.dataDir, "sock", hex.EncodeToString(h[:8]))
}

func checkID(id string) error {
	if !idRE.MatchString(id) {
		return errdefs.Invalid("invalid_id", "workspace ID %q must be 1-64 characters of [a-z0-9_-]", id)
	}
	return nil
}

// loadMeta reads a workspace's meta.json (cached). errdefs.ErrNotFound if
// the workspace does not exist.
func (d *Driver) loadMeta(id string) (*meta, error) {
	if err := checkID(id); err != nil {
		return nil, errdefs.NotFound("workspace %q not found", id)
	}
	d.mu.Lock()
	m := d.metas[id]
	d.mu.Unlock()
	if m != nil {
		return m, nil
	}
	b, err := os.ReadFile(d.metaPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errdefs.NotFound("workspace %q not found", id)
	}
	if err != nil {
		return nil, fmt.Errorf("read workspace %s: %w", id, err)
	}
	m = &meta{}
	if err := json.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("read workspace %s: %w", id, err)
	}
	if m.ServerID != d.serverID {
		return nil, errdefs.NotFound("workspace %q not found", id)
	}
	d.mu.Lock()
	d.metas[id] = m
	d.mu.Unlock()
	return m, nil
}

// lock takes the workspace's lifecycle lock, shared with other drivers on
// the same DataDir (flock). errdefs.ErrNotFound if it does not exist.
func (d *Driver) lock(id string) (func(), error) {
	if _, err := d.loadMeta(id); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(d.wsDir(id), "lock"), os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		d.forget(id)
		return nil, errdefs.NotFound("workspace %q not found", id)
	}
	if err != nil {
		return nil, fmt.Errorf("lock workspace %s: %w", id, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock workspace %s: %w", id, err)
	}
	// Removed while we waited?
	if _, err := os.Stat(d.metaPath(id)); err != nil {
		f.Close()
		d.forget(id)
		return nil, errdefs.NotFound("workspace %q not found", id)
	}
	return func() { f.Close() }, nil
}

func (d *Driver) forget(id string) {
	d.mu.Lock()
	delete(d.metas, id)
	d.mu.Unlock()
}

// Create makes the workspace's directory (and, with a disk limit, its
// size-capped file system) and leaves it stopped. errdefs.ErrAlreadyExists
// if the ID is taken; errdefs.ErrFailedPrecondition for a policy this host
// cannot enforce. On failure nothing is left behind.
func (d *Driver) Create(ctx context.Context, spec runtime.Spec) (err error) {
	if err := checkID(spec.ID); err != nil {
		return err
	}
	if err := policy.Check(Name, spec.Policy, d.caps.Policy); err != nil {
		return err
	}
	if spec.Policy.Network.Mode == policy.NetworkAllowlist && spec.ProxySocket == "" {
		return errdefs.Invalid("invalid_spec", "network mode allowlist needs a proxy socket")
	}
	dir := d.wsDir(spec.ID)
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return errdefs.New(errdefs.ErrAlreadyExists, "already_exists", "workspace %q already exists", spec.ID)
		}
		return fmt.Errorf("create workspace %s: %w", spec.ID, err)
	}
	defer func() {
		if err != nil {
			if d.disk {
				_ = unmountDisk(d.homeDir(spec.ID))
			}
			_ = os.RemoveAll(dir)
		}
	}()
	m := &meta{
		ID: spec.ID, ServerID: d.serverID, CreatedAt: time.Now().UTC(),
		Env: spec.Env, Policy: spec.Policy, ProxySocket: spec.ProxySocket, Labels: spec.Labels,
		Disk: spec.Policy.Limits.Disk > 0,
	}
	if d.uidSep {
		m.UID = sandboxUID(spec.ID)
	}
	if err := os.Mkdir(d.homeDir(spec.ID), 0o755); err != nil {
		return fmt.Errorf("create workspace %s: %w", spec.ID, err)
	}
	if m.Disk {
		if err := createDisk(ctx, dir, d.homeDir(spec.ID), int64(spec.Policy.Limits.Disk)); err != nil {
			return fmt.Errorf("create workspace %s: %w", spec.ID, err)
		}
	}
	if m.UID != 0 {
		if err := os.Chown(d.homeDir(spec.ID), int(m.UID), int(m.UID)); err != nil {
			return fmt.Errorf("create workspace %s: %w", spec.ID, err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "lock"), nil, 0o600); err != nil {
		return fmt.Errorf("create workspace %s: %w", spec.ID, err)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("create workspace %s: %w", spec.ID, err)
	}
	// meta.json is written last: its presence is what makes the workspace exist.
	if err := writeFileAtomic(d.metaPath(spec.ID), b); err != nil {
		return fmt.Errorf("create workspace %s: %w", spec.ID, err)
	}
	d.log.Info("workspace created", "workspace_id", spec.ID, "network", spec.Policy.Network.Mode, "disk", m.Disk)
	return nil
}

func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// running returns the workspace's live supervisor, or nil.
func (d *Driver) running(id string) *pidFile {
	b, err := os.ReadFile(d.pidPath(id))
	if err != nil {
		return nil
	}
	var p pidFile
	if json.Unmarshal(b, &p) != nil || p.Pid <= 0 {
		return nil
	}
	if st, ok := procStartTime(p.Pid); !ok || st != p.StartTime {
		return nil
	}
	return &p
}

// procStartTime returns the start time of a live (not zombie) process.
func procStartTime(pid int) (uint64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is the state, field 3; starttime is field 22.
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return 0, false
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	return st, err == nil
}

// Start starts the workspace's supervisor. Idempotent; errdefs.ErrNotFound
// if the workspace does not exist.
func (d *Driver) Start(ctx context.Context, id string) error {
	unlock, err := d.lock(id)
	if err != nil {
		return err
	}
	defer unlock()
	if d.running(id) != nil {
		return nil
	}
	m, err := d.loadMeta(id)
	if err != nil {
		return err
	}
	if err := d.start(ctx, m); err != nil {
		return fmt.Errorf("start workspace %s: %w", id, err)
	}
	return nil
}

func (d *Driver) start(ctx context.Context, m *meta) (err error) {
	id := m.ID
	home := d.homeDir(id)
	if m.Disk {
		if err := mountDisk(ctx, d.wsDir(id), home); err != nil {
			return err
		}
	}
	if d.cg != nil {
		if err := d.cg.create(id, m.Policy.Limits); err != nil {
			return err
		}
	}
	if m.UID != 0 && !d.uidSep {
		return errdefs.New(errdefs.ErrFailedPrecondition, "unsupported_isolation",
			"workspace %s runs its commands as uid %d, which this driver cannot do here: %s", id, m.UID, d.uidWhy)
	}
	open := m.Policy.Network.Mode == policy.NetworkOpen
	if open && !d.open.isolated && !d.open.shared {
		return errdefs.New(errdefs.ErrFailedPrecondition, "unsupported_network", "this host cannot isolate network mode open: %s", d.open.why)
	}
	netns := d.ownNetns(open)
	if netns && !d.ns.netOK {
		return errdefs.New(errdefs.ErrFailedPrecondition, "unsupported_network", "this host cannot create network namespaces: %s", d.ns.netWhy)
	}
	sock := d.sockPath(id)
	flags := sandboxinit.Flags{
		Serve:   sock,
		ReadyFD: 3,
		NoFile:  m.Policy.Limits.NoFile,
	}
	if d.ns.ok {
		flags.Proc = true
		flags.Loopback = netns
		flags.Hostname = id
		flags.Confine = true
		flags.Home = home
		flags.Hide = append([]string{d.dataDir}, d.hide...)
		// A disk limit caps the scratch space too.
		flags.TmpSize = int64(m.Policy.Limits.Disk)
	}
	if open && d.open.isolated {
		if flags.ResolvConf, err = d.writeResolvConf(id); err != nil {
			return err
		}
	}
	if m.Policy.Network.Mode == policy.NetworkAllowlist {
		flags.Proxy = m.ProxySocket
		// The proxy keeps every workspace's socket in a directory of its
		// own under one parent (policy.Proxy.Dir): hide the parent, so that
		// only this workspace's socket (bound back by confine) is
		// reachable, not another's with a longer allowlist.
		if d.ns.ok {
			flags.Hide = append(flags.Hide, filepath.Dir(filepath.Dir(m.ProxySocket)))
		}
	}
	if d.cg != nil {
		// Commands start in the cgroups; the supervisor stays out, so
		// its memory and threads are not counted against the limits.
		flags.Cgroups = d.cg.dirs(id)
		flags.CgroupV2 = d.cg.version == "v2"
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer readyR.Close()
	logf, err := os.OpenFile(filepath.Join(d.wsDir(id), "init.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		readyW.Close()
		return err
	}
	defer logf.Close()
	cmd := exec.Command(d.initPath, append([]string{"init"}, flags.Args()...)...)
	cmd.Dir = home
	cmd.Env = []string{"PATH=" + defaultPath}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{readyW}
	cmd.SysProcAttr = d.sysProcAttr(netns, d.ns.ok)
	err = cmd.Start()
	readyW.Close()
	if err != nil {
		return fmt.Errorf("start supervisor: %w", err)
	}
	sp := &supervisorProc{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(sp.done)
		d.mu.Lock()
		if d.children[id] == sp {
			delete(d.children, id)
		}
		d.mu.Unlock()
	}()
	defer func() {
		if err != nil {
			_ = syscall.Kill(sp.pid, syscall.SIGKILL)
			<-sp.done
			if d.cg != nil {
				d.cg.killAll(id)
			}
		}
	}()
	msg := make(chan string, 1)
	go func() {
		b := make([]byte, 4096)
		n, _ := readyR.Read(b)
		msg <- strings.TrimSpace(string(b[:n]))
	}()
	select {
	case s := <-msg:
		if s != "ok" {
			if s == "" {
				s = "supervisor exited before it was ready (see " + logf.Name() + ")"
			}
			return fmt.Errorf("supervisor: %s", s)
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	if open && d.open.isolated {
		if err := d.setupOpenNet(id, sp.pid); err != nil {
			return fmt.Errorf("network: %w", err)
		}
	}
	st, ok := procStartTime(sp.pid)
	if !ok {
		return fmt.Errorf("supervisor exited after it was ready (see %s)", logf.Name())
	}
	pf := pidFile{Pid: sp.pid, StartTime: st, StartedAt: time.Now().UTC(), Socket: sock, PidNS: d.ns.ok}
	b, _ := json.Marshal(pf)
	if err := writeFileAtomic(d.pidPath(id), b); err != nil {
		return err
	}
	_ = os.Remove(d.stoppedPath(id))
	d.mu.Lock()
	d.children[id] = sp
	d.mu.Unlock()
	d.log.Info("workspace started", "workspace_id", id, "pid", sp.pid)
	return nil
}

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Stop kills the supervisor and every process of the workspace, and waits
// until they are gone. Idempotent; errdefs.ErrNotFound if the workspace
// does not exist.
func (d *Driver) Stop(ctx context.Context, id string) error {
	unlock, err := d.lock(id)
	if err != nil {
		return err
	}
	defer unlock()
	if err := d.stop(ctx, id); err != nil {
		return fmt.Errorf("stop workspace %s: %w", id, err)
	}
	return nil
}

func (d *Driver) stop(ctx context.Context, id string) error {
	pf := d.running(id)
	if pf != nil {
		d.mu.Lock()
		child := d.children[id]
		d.mu.Unlock()
		if pf.PidNS {
			// PID 1 dying takes the whole pid namespace with it.
			_ = syscall.Kill(pf.Pid, syscall.SIGKILL)
		} else {
			// The supervisor kills its descendants on SIGTERM.
			_ = syscall.Kill(pf.Pid, syscall.SIGTERM)
		}
		if err := d.waitGone(ctx, pf, child); err != nil {
			return err
		}
		d.log.Info("workspace stopped", "workspace_id", id)
	}
	if d.open.isolated {
		d.teardownOpenNet(id)
	}
	if d.cg != nil {
		d.cg.killAll(id)
	}
	if pf != nil || fileExists(d.pidPath(id)) {
		if err := os.WriteFile(d.stoppedPath(id), nil, 0o600); err != nil {
			return err
		}
	}
	_ = os.Remove(d.pidPath(id))
	_ = os.Remove(d.sockPath(id))
	d.dropSpare(id)
	return nil
}

// waitGone waits until the supervisor has exited; in a pid namespace the
// kernel lets PID 1 finish exiting only once every process in it is gone.
func (d *Driver) waitGone(ctx context.Context, pf *pidFile, child *supervisorProc) error {
	if child != nil && child.pid == pf.Pid {
		select {
		case <-child.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for delay := 100 * time.Microsecond; ; delay = min(2*delay, 20*time.Millisecond) {
		if st, ok := procStartTime(pf.Pid); !ok || st != pf.StartTime {
			return nil
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(pf.Pid, syscall.SIGKILL)
			deadline = time.Now().Add(10 * time.Second)
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// Remove stops the workspace and deletes its directory, file system image
// and cgroups. Idempotent: a missing workspace succeeds.
func (d *Driver) Remove(ctx context.Context, id string) error {
	unlock, err := d.lock(id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return d.removeLeftover(id)
	}
	if err != nil {
		return err
	}
	defer unlock()
	m, err := d.loadMeta(id)
	if err != nil {
		return err
	}
	if err := d.stop(ctx, id); err != nil {
		return fmt.Errorf("remove workspace %s: %w", id, err)
	}
	if d.cg != nil {
		if err := d.cg.remove(id); err != nil {
			return fmt.Errorf("remove workspace %s: %w", id, err)
		}
	}
	if err := d.freeLease(id); err != nil {
		return fmt.Errorf("remove workspace %s: %w", id, err)
	}
	// meta.json goes first, so a half-removed workspace no longer exists.
	if err := os.Remove(d.metaPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove workspace %s: %w", id, err)
	}
	d.forget(id)
	if m.Disk || isMountPoint(d.homeDir(id)) {
		if err := unmountDisk(d.homeDir(id)); err != nil {
			return fmt.Errorf("remove workspace %s: %w", id, err)
		}
	}
	if err := os.RemoveAll(d.wsDir(id)); err != nil {
		return fmt.Errorf("remove workspace %s: %w", id, err)
	}
	d.log.Info("workspace removed", "workspace_id", id)
	return nil
}

// removeLeftover removes what a Create or Remove cut off by a crash left of
// workspace id: a directory without meta.json (Remove deletes meta.json
// first; Create writes it last), its disk image mount and its cgroups.
// A directory with a meta.json is a workspace, and is left alone.
func (d *Driver) removeLeftover(id string) error {
	if checkID(id) != nil {
		return nil
	}
	dir := d.wsDir(id)
	if fileExists(d.metaPath(id)) || !fileExists(dir) {
		return nil
	}
	if err := unmountDisk(d.homeDir(id)); err != nil {
		return fmt.Errorf("remove leftovers of %s: %w", id, err)
	}
	if d.cg != nil {
		d.cg.killAll(id)
		if err := d.cg.remove(id); err != nil {
			return fmt.Errorf("remove leftovers of %s: %w", id, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove leftovers of %s: %w", id, err)
	}
	d.log.Info("removed leftovers of an interrupted create or remove", "workspace_id", id)
	return nil
}

// Leftovers implements runtime.LeftoverLister: the workspace directories
// without a meta.json.
func (d *Driver) Leftovers(ctx context.Context) ([]string, error) {
	ents, err := os.ReadDir(d.wsRoot())
	if err != nil {
		return nil, fmt.Errorf("list workspaces: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && checkID(e.Name()) == nil && !fileExists(d.metaPath(e.Name())) {
			out = append(out, e.Name())
		}
	}
	return out, ctx.Err()
}

// Inspect reports the workspace's state. errdefs.ErrNotFound if it does not
// exist.
func (d *Driver) Inspect(ctx context.Context, id string) (runtime.Status, error) {
	m, err := d.loadMeta(id)
	if err != nil {
		return runtime.Status{}, err
	}
	if !fileExists(d.metaPath(id)) {
		d.forget(id)
		return runtime.Status{}, errdefs.NotFound("workspace %q not found", id)
	}
	return d.status(m), nil
}

func (d *Driver) status(m *meta) runtime.Status {
	st := runtime.Status{ID: m.ID, State: runtime.StateCreated, Detail: map[string]string{"dir": d.homeDir(m.ID)}}
	if m.UID != 0 {
		st.Detail["uid"] = strconv.FormatUint(uint64(m.UID), 10)
	}
	if pf := d.running(m.ID); pf != nil {
		st.State = runtime.StateRunning
		st.StartedAt = pf.StartedAt
		st.Detail["pid"] = strconv.Itoa(pf.Pid)
	} else if fileExists(d.stoppedPath(m.ID)) || fileExists(d.pidPath(m.ID)) {
		st.State = runtime.StateStopped
	}
	return st
}

// List returns every workspace in DataDir created by this server ID.
func (d *Driver) List(ctx context.Context) ([]runtime.Status, error) {
	ents, err := os.ReadDir(d.wsRoot())
	if err != nil {
		return nil, fmt.Errorf("list workspaces: %w", err)
	}
	var out []runtime.Status
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		m, err := d.loadMeta(e.Name())
		if err != nil {
			continue // not ours, or half made
		}
		out = append(out, d.status(m))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, ctx.Err()
}
