package docker

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The memory cgroup's OOM-kill counter tells whether the kernel's OOM killer
// struck in a container: the exec API reports only an exit code (137, like
// any SIGKILL), and the engine's own OOMKilled flag covers PID 1 only.

// oomFileCached is the container's OOM counter file, if already found.
func (d *Driver) oomFileCached(container string) string {
	if v, ok := d.oomFiles.Load(container); ok {
		// The container may have been re-created under the same name by
		// someone else: a cgroup that is gone is forgotten.
		if _, err := os.Stat(v.(string)); err == nil {
			return v.(string)
		}
		d.oomFiles.Delete(container)
	}
	return ""
}

// oomFileFor finds the OOM counter file of the memory cgroup that host
// process pid belongs to, and remembers it for container. "" if the host
// does not show it (remote engine, no memory controller).
func (d *Driver) oomFileFor(container string, pid int) string {
	if pid <= 0 {
		return ""
	}
	f := oomCounterFile(pid)
	if f != "" {
		d.oomFiles.Store(container, f)
	}
	return f
}

func oomCounterFile(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	var v2 string
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2 = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "memory" {
				f := filepath.Join("/sys/fs/cgroup/memory", parts[2], "memory.oom_control")
				if _, err := os.Stat(f); err == nil {
					return f
				}
			}
		}
	}
	if v2 != "" {
		f := filepath.Join("/sys/fs/cgroup", v2, "memory.events")
		if _, err := os.Stat(f); err == nil {
			return f
		}
	}
	return ""
}

// readOOMCount reads "oom_kill N" from a v1 memory.oom_control or a v2
// memory.events file; 0 if it cannot.
func readOOMCount(file string) int64 {
	if file == "" {
		return 0
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if n, ok := strings.CutPrefix(line, "oom_kill "); ok {
			v, _ := strconv.ParseInt(strings.TrimSpace(n), 10, 64)
			return v
		}
	}
	return 0
}
