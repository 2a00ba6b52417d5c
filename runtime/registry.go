package runtime

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Config is what every driver is opened with.
type Config struct {
	// DataDir is a directory the driver may keep state in (the process
	// driver keeps workspaces' files there). Created by the caller.
	DataDir string
	// ServerID identifies this Corral server. Drivers label everything they
	// create with it and List only what carries it, so that two servers on
	// one engine never reap each other's workspaces.
	ServerID string
	// InitPath is the host path of a static corral binary that drivers run
	// as PID 1 (`corral init`) inside sandboxes. Defaults to the running
	// executable.
	InitPath string
	// Options are driver-specific settings from flags and environment, e.g.
	// "host" (engine socket) and "image" (default image).
	Options map[string]string
	Logger  hclog.Logger
	// Network is how open-mode workspaces reach the outside.
	Network NetworkConfig
	// EngineTimeout bounds every call a driver makes to its engine; a call
	// past it fails with errdefs.ErrUnavailable. Zero means 30s.
	EngineTimeout time.Duration
}

// NetworkConfig is the operator's network settings, the same for every
// driver.
type NetworkConfig struct {
	// AllowPrivate opens private and link-local ranges to open-mode
	// workspaces, as --allow-private-egress does for allowlists. The host's
	// own addresses, the server and other workspaces stay out of reach.
	AllowPrivate bool
	// UnsafeShared puts open-mode workspaces on the engine's shared network
	// (or, for the process driver, the host's), where they can reach each
	// other and the host. Only an operator's explicit
	// --unsafe-shared-network sets it.
	UnsafeShared bool
	// Subnet is the IPv4 range a driver may take addresses for open-mode
	// sandboxes from (the process driver leases a /30 per workspace). Zero
	// means 10.213.0.0/16. Servers sharing a host need disjoint subnets.
	Subnet netip.Prefix
}

// DefaultSubnet is NetworkConfig.Subnet's default.
var DefaultSubnet = netip.MustParsePrefix("10.213.0.0/16")

// DefaultEngineTimeout is Config.EngineTimeout's default.
const DefaultEngineTimeout = 30 * time.Second

// Factory opens a driver. It probes the host and fails with a clear error if
// the engine is unreachable.
type Factory func(Config) (Runtime, error)

var (
	mu      sync.RWMutex
	drivers = map[string]Factory{}
)

// Register makes a driver available under name. It panics if name is empty,
// f is nil, or name is already registered: drivers call it from init.
func Register(name string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	if name == "" || f == nil {
		panic("runtime: Register with empty name or nil factory")
	}
	if _, dup := drivers[name]; dup {
		panic("runtime: Register called twice for driver " + name)
	}
	drivers[name] = f
}

// Drivers returns the registered driver names, sorted.
func Drivers() []string {
	mu.RLock()
	defer mu.RUnlock()
	names := make([]string, 0, len(drivers))
	for n := range drivers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Open opens the driver registered as name.
func Open(name string, cfg Config) (Runtime, error) {
	mu.RLock()
	f, ok := drivers[name]
	mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("unknown runtime %q (valid: %s; forgotten import?)", name, strings.Join(Drivers(), ", "))
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Options == nil {
		cfg.Options = map[string]string{}
	}
	return f(cfg)
}
