// Package cgroup reads the cgroup facts that more than one runtime driver
// needs from the host.
package cgroup

import (
	"os"
	"strconv"
	"strings"
)

// OOMKills returns the "oom_kill N" counter of a cgroup v1 memory.oom_control
// or cgroup v2 memory.events file: how many processes the kernel has killed
// for running out of the cgroup's memory. 0 if the file is "" or unreadable.
// Drivers compare it before and after a command to tell an OOM kill from
// another SIGKILL.
func OOMKills(file string) int64 {
	if file == "" {
		return 0
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	n, _ := ParseOOMKills(b)
	return n
}

// ParseOOMKills reads the oom_kill counter from the content of a
// memory.oom_control or memory.events file, and false if it has none.
func ParseOOMKills(content []byte) (int64, bool) {
	for _, line := range strings.Split(string(content), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}
