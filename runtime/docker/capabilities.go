package docker

import (
	"fmt"
	"slices"

	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/moby/moby/api/types/system"
)

// capabilitiesFrom derives what the driver can enforce from the engine's own
// report (`docker info`): its cgroup support flags, cgroup version and
// whether it runs rootless. local says whether commands' processes are
// visible from this host (needed to signal them).
func capabilitiesFrom(info system.Info, local bool) runtime.Capabilities {
	rootless := slices.ContainsFunc(info.SecurityOptions, func(s string) bool { return s == "name=rootless" })
	cgv := info.CgroupVersion
	if cgv == "" {
		cgv = "1"
	}
	s := policy.Support{
		Memory:  info.MemoryLimit && info.SwapLimit,
		CPU:     info.CPUCfsQuota && info.CPUCfsPeriod,
		Pids:    info.PidsLimit,
		NoFile:  true,
		Disk:    false,
		Network: []policy.Mode{policy.NetworkNone, policy.NetworkAllowlist, policy.NetworkOpen},
		Why:     map[string]string{},
	}
	if rootless && cgv == "1" {
		// Rootless engines cannot write cgroup v1 hierarchies; they accept
		// limits and ignore them.
		s.Memory, s.CPU, s.Pids = false, false, false
		for _, f := range []string{"memory", "cpu", "pids"} {
			s.Why[f] = "rootless docker on cgroup v1 cannot set cgroup limits"
		}
	}
	if !s.Memory && s.Why["memory"] == "" {
		switch {
		case !info.MemoryLimit:
			s.Why["memory"] = "the docker engine reports no memory cgroup support"
		default:
			s.Why["memory"] = "the docker engine cannot limit swap, so memory+swap cannot be capped"
		}
	}
	if !s.CPU && s.Why["cpu"] == "" {
		s.Why["cpu"] = "the docker engine reports no CFS quota support"
	}
	if !s.Pids && s.Why["pids"] == "" {
		s.Why["pids"] = "the docker engine reports no pids cgroup support"
	}
	s.Why["disk"] = "no filesystem quotas for docker volumes on this host, and a size-capped tmpfs volume would lose the workspace's files when it stops"
	if len(s.Why) == 0 {
		s.Why = nil
	}
	iso := fmt.Sprintf("container (docker %s, cgroup v%s, %s", info.ServerVersion, cgv, info.CgroupDriver)
	if rootless {
		iso += ", rootless"
	}
	if !local {
		iso += ", engine not on this host: commands are signalled through a shell in the workspace, OOM kills not detected"
	}
	iso += ")"
	return runtime.Capabilities{Policy: s, TTY: true, Isolation: iso}
}
