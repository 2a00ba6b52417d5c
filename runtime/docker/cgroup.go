package docker

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moby/moby/client"
)

// A container's processes can be signalled from the host, and its memory
// cgroup's OOM-kill counter read, only when the engine runs on this machine
// in our PID namespace (corral itself in a container, with the engine's
// socket mounted in, sees other PIDs). The driver checks this per container:
// PID 1's cgroup must name the container. The OOM counter tells whether the
// kernel's OOM killer struck while a command ran: the exec API reports only
// an exit code (137, like any SIGKILL), and the engine's OOMKilled flag
// covers PID 1 only.

// hostView is what the host sees of one container.
type hostView struct {
	containerID string
	pid         int    // PID 1's host PID
	visible     bool   // its processes are in our PID namespace
	oomFile     string // its memory cgroup's OOM counter, "" if unknown
}

// view returns the host's view of the container name, probing it once (an
// inspect) and again whenever the cached one has gone stale (the container
// restarted or was re-created under the same name).
func (d *Driver) view(ctx context.Context, name string) hostView {
	if !d.local {
		return hostView{}
	}
	if v, ok := d.views.Load(name); ok {
		hv := v.(hostView)
		// Still the same PID 1? (A restart or a re-created container
		// changes it.) A container the host cannot see stays unseen.
		if !hv.visible || ownedBy(hv.pid, hv.containerID) {
			return hv
		}
		d.views.Delete(name)
	}
	ins, err := d.cli.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
	if err != nil || ins.Container.State == nil || ins.Container.State.Pid <= 0 {
		return hostView{} // not running: the exec will say so
	}
	hv := hostView{containerID: ins.Container.ID, pid: ins.Container.State.Pid}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(ins.Container.State.Pid) + "/cgroup")
	if err != nil || !bytes.Contains(b, []byte(ins.Container.ID)) {
		d.views.Store(name, hv)
		return hv
	}
	hv.visible = true
	hv.oomFile = oomCounterFile(b)
	d.views.Store(name, hv)
	return hv
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// ownedBy reports whether host process pid belongs to the container.
func ownedBy(pid int, containerID string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	return err == nil && containerID != "" && bytes.Contains(b, []byte(containerID))
}

// oomCounterFile finds the OOM counter file of the memory cgroup named in a
// /proc/PID/cgroup file's content: memory.oom_control on cgroup v1,
// memory.events on v2.
func oomCounterFile(procCgroup []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(procCgroup))
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
				if f := filepath.Join("/sys/fs/cgroup/memory", parts[2], "memory.oom_control"); fileExists(f) {
					return f
				}
			}
		}
	}
	if v2 != "" {
		if f := filepath.Join("/sys/fs/cgroup", v2, "memory.events"); fileExists(f) {
			return f
		}
	}
	return ""
}
