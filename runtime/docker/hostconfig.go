package docker

import (
	"path"
	"path/filepath"
	"sort"

	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
)

// This file translates an already resolved and checked policy into engine
// settings. Every function here is pure, so table tests cover it.

// proxyDirInSandbox is where the directory holding the workspace's proxy
// socket is bind-mounted.
var proxyDirInSandbox = path.Dir(runtime.ProxySocketInSandbox)

// cpuShares is every workspace's CPU weight (cgroup v1 cpu.shares; the
// engine maps it to cpu.weight on v2).
const cpuShares = 1024

// resources turns limits into cgroup settings. Memory caps RAM and swap
// together (memory-swap = memory), so a workspace cannot swap its way past
// the limit.
func resources(l policy.Limits) container.Resources {
	var r container.Resources
	if l.Memory > 0 {
		r.Memory = int64(l.Memory)
		r.MemorySwap = int64(l.Memory)
	}
	if l.CPUs > 0 {
		r.NanoCPUs = int64(l.CPUs * 1e9)
		// Equal weight for every workspace, whatever the engine's default:
		// under contention one tenant's spinners get no more CPU than
		// another's shell.
		r.CPUShares = cpuShares
	}
	if l.Pids > 0 {
		p := l.Pids
		r.PidsLimit = &p
	}
	if l.NoFile > 0 {
		r.Ulimits = []*container.Ulimit{{Name: "nofile", Soft: l.NoFile, Hard: l.NoFile}}
	}
	return r
}

// networkMode is the container network for a policy mode: none and allowlist
// get a namespace with loopback only (allowlist reaches the outside only
// through the proxy socket); open gets the engine's default bridge, which
// Create replaces with the server's isolated network (network.go) unless
// the operator chose --unsafe-shared-network.
func networkMode(m policy.Mode) container.NetworkMode {
	switch m {
	case policy.NetworkNone, policy.NetworkAllowlist:
		return "none"
	default:
		return "bridge"
	}
}

// proxySocketInSandbox is where the proxy socket appears inside the sandbox:
// its directory is mounted at /run/corral, so a socket named proxy.sock is at
// runtime.ProxySocketInSandbox. Mounting the directory rather than the
// socket keeps it working when the proxy re-creates the socket.
func proxySocketInSandbox(hostSocket string) string {
	return path.Join(proxyDirInSandbox, filepath.Base(hostSocket))
}

// entrypoint runs the bind-mounted corral binary as PID 1, with the egress
// forwarder for allowlist workspaces.
func entrypoint(m policy.Mode, hostSocket string) []string {
	ep := []string{runtime.InitPathInSandbox, "init"}
	if m == policy.NetworkAllowlist {
		ep = append(ep, "--proxy", proxySocketInSandbox(hostSocket))
	}
	return ep
}

// mounts are the workspace volume, the init binary (read-only) and, for
// allowlist, the proxy socket's directory.
func mounts(volume, initPath string, m policy.Mode, hostSocket string) []mount.Mount {
	ms := []mount.Mount{
		{Type: mount.TypeVolume, Source: volume, Target: runtime.WorkspaceDir},
		{Type: mount.TypeBind, Source: initPath, Target: runtime.InitPathInSandbox, ReadOnly: true},
	}
	if m == policy.NetworkAllowlist {
		// Read-only: connecting to a socket needs no write access to its
		// filesystem, and the sandbox cannot delete or replace the socket.
		ms = append(ms, mount.Mount{Type: mount.TypeBind, Source: filepath.Dir(hostSocket), Target: proxyDirInSandbox, ReadOnly: true})
	}
	return ms
}

// containerEnv is the workspace's environment as KEY=VALUE, sorted: HOME is
// the workspace, the proxy variables come with allowlist, and the spec's own
// variables override neither of those.
func containerEnv(env map[string]string, m policy.Mode) []string {
	all := make(map[string]string, len(env)+10)
	for k, v := range env {
		all[k] = v
	}
	all["HOME"] = runtime.WorkspaceDir
	if m == policy.NetworkAllowlist {
		for k, v := range runtime.ProxyEnv() {
			all[k] = v
		}
	}
	return envList(all)
}

func envList(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// containerSpec is the whole create request for a workspace.
func containerSpec(spec runtime.Spec, image, name, initPath string, labels map[string]string) (*container.Config, *container.HostConfig) {
	mode := spec.Policy.Network.Mode
	cfg := &container.Config{
		Image:      image,
		Entrypoint: entrypoint(mode, spec.ProxySocket),
		Cmd:        []string{},
		Env:        containerEnv(spec.Env, mode),
		WorkingDir: runtime.WorkspaceDir,
		Labels:     labels,
		Hostname:   "workspace",
	}
	hc := &container.HostConfig{
		Resources:   resources(spec.Policy.Limits),
		NetworkMode: networkMode(mode),
		Mounts:      mounts(name, initPath, mode, spec.ProxySocket),
		SecurityOpt: []string{"no-new-privileges"},
		LogConfig:   container.LogConfig{Type: "json-file", Config: map[string]string{"max-size": "1m", "max-file": "1"}},
	}
	return cfg, hc
}
