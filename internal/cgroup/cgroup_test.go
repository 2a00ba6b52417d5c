package cgroup

import (
	"os"
	"path/filepath"
	"testing"
)

func TestOOMKills(t *testing.T) {
	dir := t.TempDir()
	v1 := filepath.Join(dir, "memory.oom_control")
	os.WriteFile(v1, []byte("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"), 0o644)
	v2 := filepath.Join(dir, "memory.events")
	os.WriteFile(v2, []byte("low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n"), 0o644)
	for file, want := range map[string]int64{v1: 3, v2: 2, "": 0, filepath.Join(dir, "missing"): 0} {
		if got := OOMKills(file); got != want {
			t.Errorf("OOMKills(%q) = %d, want %d", file, got, want)
		}
	}
}
