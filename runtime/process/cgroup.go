package process

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/corralhq/corral/internal/cgroup"
	"github.com/corralhq/corral/policy"
)

// cgroupHost is where this driver makes one cgroup per workspace: on cgroup
// v1, one directory per controller hierarchy (memory, cpu, pids); on v2 one
// directory in the unified tree, all three fields equal. An empty field
// means that controller is unavailable.
type cgroupHost struct {
	version           string // "v1" or "v2"
	memory, cpu, pids string // parent directories ".../corral"
	memsw             bool   // v1 memory.memsw.* exists: cap swap too

	oomMu    sync.Mutex
	oomFiles map[string]*os.File // per workspace: its open memory.events or memory.oom_control
}

const cgroupRoot = "/sys/fs/cgroup"

// probeCgroups finds the controllers this process can create cgroups in.
// It returns nil and why not if there are none.
func probeCgroups(root bool) (*cgroupHost, string) {
	if !root {
		return nil, "not root: cannot create cgroups"
	}
	if b, err := os.ReadFile(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		return probeV2(string(b))
	}
	h := &cgroupHost{version: "v1"}
	try := func(ctrl, probeFile string) string {
		if _, err := os.Stat(filepath.Join(cgroupRoot, ctrl, "cgroup.procs")); err != nil {
			return ""
		}
		dir := filepath.Join(cgroupRoot, ctrl, "corral")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return ""
		}
		if _, err := os.Stat(filepath.Join(dir, probeFile)); err != nil {
			return ""
		}
		return dir
	}
	h.memory = try("memory", "memory.limit_in_bytes")
	h.cpu = try("cpu", "cpu.cfs_quota_us")
	h.pids = try("pids", "pids.max")
	if h.memory != "" {
		_, err := os.Stat(filepath.Join(h.memory, "memory.memsw.limit_in_bytes"))
		h.memsw = err == nil
	}
	if h.memory == "" && h.cpu == "" && h.pids == "" {
		return nil, "no usable cgroup v1 controllers under " + cgroupRoot
	}
	return h, ""
}

// probeV2 sets up DIR/corral with the memory, cpu and pids controllers
// delegated to its children.
func probeV2(controllers string) (*cgroupHost, string) {
	have := strings.Fields(controllers)
	dir := filepath.Join(cgroupRoot, "corral")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Sprintf("cannot create %s: %v", dir, err)
	}
	h := &cgroupHost{version: "v2"}
	for _, c := range []string{"memory", "cpu", "pids"} {
		found := false
		for _, x := range have {
			found = found || x == c
		}
		if !found {
			continue
		}
		if writeFile(filepath.Join(cgroupRoot, "cgroup.subtree_control"), "+"+c) != nil ||
			writeFile(filepath.Join(dir, "cgroup.subtree_control"), "+"+c) != nil {
			continue
		}
		switch c {
		case "memory":
			h.memory = dir
		case "cpu":
			h.cpu = dir
		case "pids":
			h.pids = dir
		}
	}
	if h.memory == "" && h.cpu == "" && h.pids == "" {
		return nil, "cannot delegate memory, cpu or pids controllers in the cgroup v2 tree"
	}
	return h, ""
}

func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", value, path, err)
	}
	return nil
}

// dirs returns the workspace's cgroup directories, one per hierarchy.
func (h *cgroupHost) dirs(id string) []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range []string{h.memory, h.cpu, h.pids} {
		if p != "" && !seen[p] {
			seen[p] = true
			out = append(out, filepath.Join(p, id))
		}
	}
	return out
}

// create makes the workspace's cgroups, or updates them, with limits l.
// Idempotent.
func (h *cgroupHost) create(id string, l policy.Limits) error {
	h.forgetOOMFile(id, nil)
	for _, d := range h.dirs(id) {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create cgroup: %w", err)
		}
	}
	return h.setLimits(id, l)
}

// Every workspace's CPU weight, written explicitly so that it holds
// whatever the parent's defaults: the workspaces are siblings under one
// parent, so under contention each gets an equal share of what the quota
// leaves, and one tenant's spinners or fork bomb cannot starve another's
// shell beyond that share.
const (
	cpuWeightV1 = "1024" // cpu.shares
	cpuWeightV2 = "100"  // cpu.weight
)

// setLimits writes l into the workspace's cgroups; a zero limit is "max".
func (h *cgroupHost) setLimits(id string, l policy.Limits) error {
	var files [][2]string
	if h.version == "v1" {
		if h.memory != "" {
			mem := "-1"
			if l.Memory > 0 {
				mem = strconv.FormatInt(int64(l.Memory), 10)
			}
			d := filepath.Join(h.memory, id)
			// memsw must stay >= limit: raise or lower in the right order.
			if h.memsw {
				files = append(files, [2]string{filepath.Join(d, "memory.memsw.limit_in_bytes"), "-1"})
			}
			files = append(files, [2]string{filepath.Join(d, "memory.limit_in_bytes"), mem})
			if h.memsw {
				files = append(files, [2]string{filepath.Join(d, "memory.memsw.limit_in_bytes"), mem})
			}
		}
		if h.cpu != "" {
			quota := "-1"
			if l.CPUs > 0 {
				quota = strconv.FormatInt(int64(l.CPUs*100000), 10)
			}
			d := filepath.Join(h.cpu, id)
			files = append(files, [2]string{filepath.Join(d, "cpu.cfs_period_us"), "100000"},
				[2]string{filepath.Join(d, "cpu.cfs_quota_us"), quota},
				// Equal weight for every workspace (see cpuWeightV1).
				[2]string{filepath.Join(d, "cpu.shares"), cpuWeightV1})
		}
	} else {
		d := filepath.Join(h.memory, id)
		if h.memory != "" {
			mem := "max"
			if l.Memory > 0 {
				mem = strconv.FormatInt(int64(l.Memory), 10)
			}
			files = append(files, [2]string{filepath.Join(d, "memory.max"), mem})
			if _, err := os.Stat(filepath.Join(d, "memory.swap.max")); err == nil {
				swap := "max"
				if l.Memory > 0 {
					swap = "0"
				}
				files = append(files, [2]string{filepath.Join(d, "memory.swap.max"), swap})
			}
		}
		if h.cpu != "" {
			quota := "max"
			if l.CPUs > 0 {
				quota = strconv.FormatInt(int64(l.CPUs*100000), 10)
			}
			files = append(files, [2]string{filepath.Join(h.cpu, id, "cpu.max"), quota + " 100000"},
				[2]string{filepath.Join(h.cpu, id, "cpu.weight"), cpuWeightV2})
		}
	}
	if h.pids != "" {
		pids := "max"
		if l.Pids > 0 {
			pids = strconv.FormatInt(l.Pids, 10)
		}
		files = append(files, [2]string{filepath.Join(h.pids, id, "pids.max"), pids})
	}
	for _, f := range files {
		if err := writeFile(f[0], f[1]); err != nil {
			return fmt.Errorf("set cgroup limit: %w", err)
		}
	}
	return nil
}

// procs lists the pids in the workspace's cgroups.
func (h *cgroupHost) procs(id string) []int {
	seen := map[int]bool{}
	var out []int
	for _, d := range h.dirs(id) {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
				seen[pid] = true
				out = append(out, pid)
			}
		}
	}
	return out
}

// killAll kills every process left in the workspace's cgroups and waits
// (briefly) for them to go.
func (h *cgroupHost) killAll(id string) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := h.procs(id)
		if len(pids) == 0 || time.Now().After(deadline) {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(time.Millisecond)
	}
}

// remove kills what is left and deletes the workspace's cgroups.
// Idempotent.
func (h *cgroupHost) remove(id string) error {
	h.forgetOOMFile(id, nil)
	h.killAll(id)
	for _, d := range h.dirs(id) {
		var err error
		// A cgroup whose last task just died can be briefly busy.
		for range 100 {
			err = os.Remove(d)
			if err == nil || errors.Is(err, fs.ErrNotExist) {
				err = nil
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("remove cgroup: %w", err)
		}
	}
	return nil
}

// oomKills returns how many processes the kernel has OOM-killed in the
// workspace's memory cgroup, and false if it cannot tell.
func (h *cgroupHost) oomKills(id string) (uint64, bool) {
	if h == nil || h.memory == "" {
		return 0, false
	}
	// The file stays open between commands: re-reading it from offset 0
	// shows the current count, without a path walk per command. An fd of
	// a cgroup that was removed (and perhaps made again) fails to read;
	// it is then opened again.
	var buf [512]byte
	for try := 0; try < 2; try++ {
		f, err := h.oomFile(id)
		if err != nil {
			return 0, false
		}
		n, err := f.ReadAt(buf[:], 0)
		if err != nil && !errors.Is(err, io.EOF) {
			h.forgetOOMFile(id, f)
			continue
		}
		kills, ok := cgroup.ParseOOMKills(buf[:n])
		return uint64(kills), ok
	}
	return 0, false
}

// oomFile returns the workspace's open OOM counter file.
func (h *cgroupHost) oomFile(id string) (*os.File, error) {
	h.oomMu.Lock()
	defer h.oomMu.Unlock()
	if f := h.oomFiles[id]; f != nil {
		return f, nil
	}
	name := "memory.oom_control"
	if h.version == "v2" {
		name = "memory.events"
	}
	f, err := os.Open(filepath.Join(h.memory, id, name))
	if err != nil {
		return nil, err
	}
	if h.oomFiles == nil {
		h.oomFiles = map[string]*os.File{}
	}
	h.oomFiles[id] = f
	return f, nil
}

// forgetOOMFile closes the workspace's OOM counter file if it is f (any
// if f is nil).
func (h *cgroupHost) forgetOOMFile(id string, f *os.File) {
	h.oomMu.Lock()
	defer h.oomMu.Unlock()
	if g := h.oomFiles[id]; g != nil && (f == nil || g == f) {
		delete(h.oomFiles, id)
		g.Close()
	}
}

// swapOn reports whether the host has any swap space.
func swapOn() bool {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return true // unknown: assume the worst
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "SwapTotal:" {
			return f[1] != "0"
		}
	}
	return true
}
