// Package policy holds what a workspace may use: resource limits, network
// modes and allowed hosts. It validates requests, fills in the operator's
// defaults, enforces the operator's maximums and refuses, before anything is
// created, whatever the chosen runtime cannot enforce on this host. Every
// driver receives an already resolved Policy and translates it into engine
// settings; none of them decides policy on its own.
package policy

import (
	"fmt"
	"math"
	goruntime "runtime"
	"sort"
	"strings"

	"github.com/corralhq/corral/errdefs"
)

// Limits are the resource limits of a workspace. A zero field means "not
// set": Resolve fills it from the operator's defaults.
type Limits struct {
	Memory      Bytes    `json:"memory,omitempty"`       // RAM + swap cap for the whole workspace
	CPUs        float64  `json:"cpus,omitempty"`         // CPU share, 0.5 = half a core
	Pids        int64    `json:"pids,omitempty"`         // max processes/threads
	Disk        Bytes    `json:"disk,omitempty"`         // size of the workspace's writable files
	NoFile      int64    `json:"nofile,omitempty"`       // RLIMIT_NOFILE for commands
	Timeout     Duration `json:"timeout,omitempty"`      // default per-command timeout
	IdleTimeout Duration `json:"idle_timeout,omitempty"` // stop the workspace after this long unused
	Lifetime    Duration `json:"lifetime,omitempty"`     // delete the workspace this long after creation
	Upload      Bytes    `json:"upload,omitempty"`       // max size of one upload
	Output      Bytes    `json:"output,omitempty"`       // max stdout+stderr kept by one execute
}

// Mode is a network mode.
type Mode string

const (
	// NetworkNone leaves the sandbox with loopback only.
	NetworkNone Mode = "none"
	// NetworkAllowlist gives the sandbox loopback only plus an HTTP(S)
	// proxy that lets it reach the allowed hosts and nothing else.
	NetworkAllowlist Mode = "allowlist"
	// NetworkOpen is the driver's normal network.
	NetworkOpen Mode = "open"
)

// Modes lists the network modes in a stable order.
var Modes = []Mode{NetworkNone, NetworkAllowlist, NetworkOpen}

// Network is a workspace's network policy.
type Network struct {
	Mode         Mode     `json:"mode"`
	AllowedHosts []string `json:"allowed_hosts,omitempty"`
}

// Policy is everything a runtime must enforce for one workspace.
type Policy struct {
	Limits  Limits  `json:"limits"`
	Network Network `json:"network"`
}

// Config is the operator's policy: defaults for what a request leaves out and
// maximums no request may exceed (a zero maximum means no maximum).
type Config struct {
	Defaults       Limits
	Max            Limits
	DefaultNetwork Mode
	// AllowPrivate lets allowlists name link-local (metadata included),
	// CGNAT and private addresses. Off by default. It never opens loopback
	// ("localhost" included), unspecified, multicast or reserved ranges, nor
	// this machine's own addresses: the egress proxy refuses those at
	// connect time whatever an allowlist says (policy.CheckAddress).
	AllowPrivate bool
	// HostCPUs is how many CPUs workspaces share on this host; a cpus limit
	// above it is refused ("limit_exceeds_host"), whatever Max says. Zero
	// means the CPUs this process may run on (runtime.NumCPU).
	HostCPUs int
}

// DefaultDisk is the default disk limit: 10 GiB.
const DefaultDisk Bytes = 10 << 30

// DefaultConfig is what the server uses when the operator sets nothing.
func DefaultConfig() Config {
	return Config{
		Defaults: Limits{
			Memory: 1 << 30,
			CPUs:   1,
			Pids:   512,
			// A disk cap by default where the runtime can enforce one, so
			// that no workspace fills the host's file system unless an
			// operator chooses so (--default-limits '{"disk":0}').
			Disk:        DefaultDisk,
			NoFile:      4096,
			Timeout:     Duration(60e9),
			IdleTimeout: Duration(15 * 60e9),
			Upload:      100 << 20,
			Output:      1 << 20,
		},
		Max: Limits{
			Memory:  8 << 30,
			CPUs:    4,
			Pids:    4096,
			Disk:    20 << 30,
			NoFile:  65536,
			Timeout: Duration(3600e9),
			Upload:  1 << 30,
			Output:  16 << 20,
		},
		DefaultNetwork: NetworkOpen,
	}
}

// Support says which parts of a Policy a runtime can enforce on this host. It
// is measured by the driver at start-up, never assumed.
type Support struct {
	Memory bool `json:"memory"`
	CPU    bool `json:"cpu"`
	Pids   bool `json:"pids"`
	Disk   bool `json:"disk"`
	NoFile bool `json:"nofile"`
	// Network lists the modes the runtime can enforce.
	Network []Mode `json:"network"`
	// Why explains, per missing feature ("memory", "network:allowlist"...),
	// what the host lacks. Shown to clients in refusals.
	Why map[string]string `json:"why,omitempty"`
}

// SupportsNetwork reports whether m is among s.Network.
func (s Support) SupportsNetwork(m Mode) bool {
	for _, x := range s.Network {
		if x == m {
			return true
		}
	}
	return false
}

// Resolve validates a requested policy, fills what it leaves out from the
// operator's defaults and refuses values above the maximums. Errors are
// errdefs.ErrInvalidArgument with a stable code.
func (c Config) Resolve(req Policy) (Policy, error) {
	out := req
	l := &out.Limits
	d := c.Defaults
	if l.CPUs < 0 || l.Pids < 0 || l.NoFile < 0 || l.Memory < 0 || l.Disk < 0 || l.Upload < 0 || l.Output < 0 ||
		l.Timeout < 0 || l.IdleTimeout < 0 || l.Lifetime < 0 {
		return Policy{}, errdefs.Invalid("invalid_limit", "limits must not be negative")
	}
	if math.IsNaN(l.CPUs) || math.IsInf(l.CPUs, 0) {
		return Policy{}, errdefs.Invalid("invalid_limit", "cpus limit must be a finite number")
	}
	if l.CPUs != 0 && l.CPUs < 0.01 {
		return Policy{}, errdefs.Invalid("invalid_limit", "cpus limit %g is below the minimum of 0.01", l.CPUs)
	}
	if l.Memory != 0 && l.Memory < 4<<20 {
		return Policy{}, errdefs.Invalid("invalid_limit", "memory limit %s is below the minimum of 4MiB", l.Memory)
	}
	if l.Disk != 0 && l.Disk < 1<<20 {
		return Policy{}, errdefs.Invalid("invalid_limit", "disk limit %s is below the minimum of 1MiB", l.Disk)
	}
	// A default never exceeds the maximum, whatever the operator set.
	m := c.Max
	host := float64(c.HostCPUs)
	if host <= 0 {
		host = float64(goruntime.NumCPU())
	}
	fill(&l.Memory, capAt(d.Memory, m.Memory))
	fill(&l.CPUs, capAt(capAt(d.CPUs, m.CPUs), host))
	fill(&l.Pids, capAt(d.Pids, m.Pids))
	fill(&l.Disk, capAt(d.Disk, m.Disk))
	fill(&l.NoFile, capAt(d.NoFile, m.NoFile))
	fill(&l.Timeout, capAt(d.Timeout, m.Timeout))
	fill(&l.IdleTimeout, capAt(d.IdleTimeout, m.IdleTimeout))
	fill(&l.Lifetime, capAt(d.Lifetime, m.Lifetime))
	fill(&l.Upload, capAt(d.Upload, m.Upload))
	fill(&l.Output, capAt(d.Output, m.Output))

	for _, x := range []struct {
		name      string
		got, max  float64
		formatted string
	}{
		{"memory", float64(l.Memory), float64(m.Memory), l.Memory.String()},
		{"cpus", l.CPUs, m.CPUs, fmt.Sprint(l.CPUs)},
		{"pids", float64(l.Pids), float64(m.Pids), fmt.Sprint(l.Pids)},
		{"disk", float64(l.Disk), float64(m.Disk), l.Disk.String()},
		{"nofile", float64(l.NoFile), float64(m.NoFile), fmt.Sprint(l.NoFile)},
		{"timeout", float64(l.Timeout), float64(m.Timeout), l.Timeout.String()},
		{"idle_timeout", float64(l.IdleTimeout), float64(m.IdleTimeout), l.IdleTimeout.String()},
		{"lifetime", float64(l.Lifetime), float64(m.Lifetime), l.Lifetime.String()},
		{"upload", float64(l.Upload), float64(m.Upload), l.Upload.String()},
		{"output", float64(l.Output), float64(m.Output), l.Output.String()},
	} {
		if x.max > 0 && x.got > x.max {
			return Policy{}, errdefs.Invalid("limit_exceeds_max", "%s limit %s exceeds this server's maximum", x.name, x.formatted)
		}
	}
	if l.CPUs > host {
		return Policy{}, errdefs.Invalid("limit_exceeds_host", "cpus limit %g exceeds the %g CPUs of this host", l.CPUs, host)
	}

	n := &out.Network
	if n.Mode == "" {
		n.Mode = c.DefaultNetwork
		if n.Mode == "" {
			n.Mode = NetworkOpen
		}
	}
	switch n.Mode {
	case NetworkNone, NetworkOpen:
		if len(n.AllowedHosts) > 0 {
			return Policy{}, errdefs.Invalid("invalid_network", "allowed_hosts needs network mode %q, not %q", NetworkAllowlist, n.Mode)
		}
	case NetworkAllowlist:
		hosts := make([]string, 0, len(n.AllowedHosts))
		for _, h := range n.AllowedHosts {
			p, err := ParseHost(h)
			if err != nil {
				return Policy{}, errdefs.Invalid("invalid_network", "%v", err)
			}
			if p.local() {
				return Policy{}, errdefs.Invalid("host_not_allowed", "allowed host %q is this machine (loopback), or an unspecified, multicast or reserved address; no server allows those", h)
			}
			if !c.AllowPrivate && p.private() {
				return Policy{}, errdefs.Invalid("host_not_allowed", "allowed host %q is a loopback, link-local or private address; this server does not allow those", h)
			}
			hosts = append(hosts, p.String())
		}
		n.AllowedHosts = hosts
	default:
		return Policy{}, errdefs.Invalid("invalid_network", "unknown network mode %q (want one of %s)", n.Mode, modeList())
	}
	return out, nil
}

func fill[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// capAt returns v, or max if max is set and v exceeds it.
func capAt[T int64 | float64 | Bytes | Duration](v, max T) T {
	if max > 0 && v > max {
		return max
	}
	return v
}

func modeList() string {
	s := make([]string, len(Modes))
	for i, m := range Modes {
		s[i] = string(m)
	}
	return strings.Join(s, ", ")
}

// Check refuses a resolved policy that the runtime named rt cannot enforce
// with this Support. It fails closed: every limit that is set must be
// enforceable. The error is errdefs.ErrFailedPrecondition with the code
// "unsupported_limit" or "unsupported_network", naming the runtime, the
// feature and why the host lacks it.
func Check(rt string, p Policy, s Support) error {
	var missing []string
	l := p.Limits
	for _, x := range []struct {
		name string
		set  bool
		ok   bool
	}{
		{"memory", l.Memory > 0, s.Memory},
		{"cpu", l.CPUs > 0, s.CPU},
		{"pids", l.Pids > 0, s.Pids},
		{"disk", l.Disk > 0, s.Disk},
		{"nofile", l.NoFile > 0, s.NoFile},
	} {
		if x.set && !x.ok {
			missing = append(missing, explain(x.name, s))
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return errdefs.New(errdefs.ErrFailedPrecondition, "unsupported_limit",
			"runtime %q cannot enforce these limits on this host: %s", rt, strings.Join(missing, "; "))
	}
	if !s.SupportsNetwork(p.Network.Mode) {
		return errdefs.New(errdefs.ErrFailedPrecondition, "unsupported_network",
			"runtime %q cannot enforce network mode %q on this host: %s", rt, p.Network.Mode,
			explain("network:"+string(p.Network.Mode), s))
	}
	return nil
}

// Enforceable returns l without the limits that s cannot enforce, and the
// names of those it dropped. The server uses it on its own defaults at
// start-up (and logs what it dropped), so that an operator's defaults never
// make every request fail; explicit requests still go through Check.
func (s Support) Enforceable(l Limits) (Limits, []string) {
	var dropped []string
	drop := func(name string, ok bool, clear func()) {
		if !ok {
			clear()
			dropped = append(dropped, explain(name, s))
		}
	}
	if l.Memory > 0 {
		drop("memory", s.Memory, func() { l.Memory = 0 })
	}
	if l.CPUs > 0 {
		drop("cpu", s.CPU, func() { l.CPUs = 0 })
	}
	if l.Pids > 0 {
		drop("pids", s.Pids, func() { l.Pids = 0 })
	}
	if l.Disk > 0 {
		drop("disk", s.Disk, func() { l.Disk = 0 })
	}
	if l.NoFile > 0 {
		drop("nofile", s.NoFile, func() { l.NoFile = 0 })
	}
	return l, dropped
}

func explain(feature string, s Support) string {
	if why := s.Why[feature]; why != "" {
		return feature + " (" + why + ")"
	}
	return feature
}
