package podman

import (
	"path"
	"sort"

	"github.com/containers/podman/v5/pkg/specgen"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
)

// cpuPeriod is the CFS period the CPU limit is expressed in (the kernel's
// default, 100ms).
const cpuPeriod = 100_000

// cpuShares is every workspace's CPU weight (cgroup v1 cpu.shares; mapped
// to cpu.weight on v2).
const cpuShares = 1024

// proxyDirInSandbox is the directory the host directory holding a
// workspace's proxy socket is bind-mounted on.
var proxyDirInSandbox = path.Dir(runtime.ProxySocketInSandbox)

// containerName and volumeName are the engine names of a workspace's
// container and volume.
func containerName(id string) string { return "corral-" + id }
func volumeName(id string) string    { return "corral-" + id }

// resources translates the resource limits of a resolved policy into an OCI
// resources block; nil if no limit applies. Memory caps RAM and swap
// together (swap limit = memory limit means no swap on top).
func resources(l policy.Limits) *specs.LinuxResources {
	var r specs.LinuxResources
	set := false
	if l.Memory > 0 {
		m := int64(l.Memory)
		r.Memory = &specs.LinuxMemory{Limit: &m, Swap: &m}
		set = true
	}
	if l.CPUs > 0 {
		quota := int64(l.CPUs * cpuPeriod)
		if quota < 1000 { // the kernel's minimum quota is 1ms
			quota = 1000
		}
		period := uint64(cpuPeriod)
		// Equal weight for every workspace: under contention one tenant's
		// spinners get no more CPU than another's shell.
		shares := uint64(cpuShares)
		r.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period, Shares: &shares}
		set = true
	}
	if l.Pids > 0 {
		r.Pids = &specs.LinuxPids{Limit: l.Pids}
		set = true
	}
	if !set {
		return nil
	}
	return &r
}

// hostLimits are the rlimits a rootful service must set itself: through
// its API (unlike its CLI) Podman ignores containers.conf's default_ulimits
// and asks for 1048576 open files and processes, which a root without
// CAP_SYS_RESOURCE cannot grant. Zero fields are left to the service.
type hostLimits struct {
	NoFile uint64 // used when the policy sets no nofile limit
	NProc  uint64
}

// rlimits translates the open-files limit (and the host's defaults) into
// the container's rlimits, which exec sessions inherit.
func rlimits(l policy.Limits, host hostLimits) []specs.POSIXRlimit {
	var out []specs.POSIXRlimit
	nofile := host.NoFile
	if l.NoFile > 0 {
		nofile = uint64(l.NoFile)
	}
	if nofile > 0 {
		out = append(out, specs.POSIXRlimit{Type: "nofile", Hard: nofile, Soft: nofile})
	}
	if host.NProc > 0 {
		out = append(out, specs.POSIXRlimit{Type: "nproc", Hard: host.NProc, Soft: host.NProc})
	}
	return out
}

// network is how a network mode becomes a container's network namespace,
// mounts, entrypoint arguments and environment.
type network struct {
	NetNS specgen.Namespace
	// Mounts are extra bind mounts (the proxy socket's directory).
	Mounts []specs.Mount
	// InitArgs are appended to `corral init`.
	InitArgs []string
	// Env is added to the workspace's environment.
	Env map[string]string
}

// networkFor translates a network mode. none and allowlist get a network
// namespace with loopback only; allowlist also gets the proxy socket's
// directory bind-mounted at the directory of runtime.ProxySocketInSandbox,
// `corral init --proxy` to forward runtime.ProxyListenAddr to it, and the
// proxy environment. open starts from the engine's default (bridge when
// rootful, slirp4netns when rootless), which Create replaces with the
// server's isolated network (network.go) unless the operator chose
// --unsafe-shared-network.
func networkFor(mode policy.Mode, proxySocket string) network {
	switch mode {
	case policy.NetworkNone:
		return network{NetNS: specgen.Namespace{NSMode: specgen.NoNetwork}}
	case policy.NetworkAllowlist:
		return network{
			NetNS: specgen.Namespace{NSMode: specgen.NoNetwork},
			Mounts: []specs.Mount{{
				Type:        "bind",
				Source:      path.Dir(proxySocket),
				Destination: proxyDirInSandbox,
				Options:     []string{"rbind", "ro"},
			}},
			InitArgs: []string{"--proxy", runtime.ProxySocketInSandbox},
			Env:      runtime.ProxyEnv(),
		}
	default:
		return network{NetNS: specgen.Namespace{NSMode: specgen.Default}}
	}
}

// labels are the labels of everything created for a workspace: the
// caller's, then ours, which win.
func labels(serverID, id string, extra map[string]string) map[string]string {
	out := make(map[string]string, len(extra)+3)
	for k, v := range extra {
		out[k] = v
	}
	out[runtime.LabelManaged] = "true"
	out[runtime.LabelWorkspace] = id
	out[runtime.LabelServer] = serverID
	return out
}

// specFor builds the container of a workspace: a long-lived `corral init`
// as PID 1 (the static corral binary bind-mounted read-only), the
// workspace's volume at runtime.WorkspaceDir as working directory and HOME,
// and the policy's limits and network.
func specFor(serverID, initPath string, host hostLimits, s runtime.Spec) *specgen.SpecGenerator {
	g := specgen.NewSpecGenerator(s.Image, false)
	g.Name = containerName(s.ID)
	g.Hostname = "workspace"
	g.Labels = labels(serverID, s.ID, s.Labels)
	net := networkFor(s.Policy.Network.Mode, s.ProxySocket)

	g.Env = map[string]string{"HOME": runtime.WorkspaceDir}
	for k, v := range s.Env {
		g.Env[k] = v
	}
	for k, v := range net.Env {
		g.Env[k] = v
	}
	g.Entrypoint = append([]string{runtime.InitPathInSandbox, "init"}, net.InitArgs...)
	g.Command = []string{}
	g.WorkDir = runtime.WorkspaceDir
	g.Volumes = []*specgen.NamedVolume{{Name: volumeName(s.ID), Dest: runtime.WorkspaceDir}}
	g.Mounts = append([]specs.Mount{{
		Type:        "bind",
		Source:      initPath,
		Destination: runtime.InitPathInSandbox,
		Options:     []string{"bind", "ro"},
	}}, net.Mounts...)
	g.NetNS = net.NetNS
	g.ResourceLimits = resources(s.Policy.Limits)
	g.Rlimits = rlimits(s.Policy.Limits, host)
	// corral init exits on SIGTERM at once; a short timeout is plenty.
	stop := uint(5)
	g.StopTimeout = &stop
	return g
}

// envList turns an environment map into sorted KEY=VALUE strings.
func envList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}
