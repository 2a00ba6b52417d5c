package sandboxinit

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestFlagsRoundTrip(t *testing.T) {
	for _, f := range []Flags{
		{},
		{Serve: "/d/s.sock", ReadyFD: 3, Proc: true, Loopback: true, Hostname: "ws_1", NoFile: 1024,
			Proxy: "/p.sock", Confine: true, Home: "/d/w/home", Hide: []string{"/d", "/p"}, TmpSize: 1 << 20,
			Cgroups: []string{"/sys/fs/cgroup/memory/corral/ws_1", "/sys/fs/cgroup/pids/corral/ws_1"}},
		{Check: true, Cgroups: []string{"/sys/fs/cgroup/corral/x"}, CgroupV2: true},
	} {
		got, err := parseFlags(f.Args(), io.Discard)
		if err != nil {
			t.Fatalf("parse %q: %v", f.Args(), err)
		}
		if !reflect.DeepEqual(got, f) {
			t.Errorf("round trip of %q:\n got %+v\nwant %+v", f.Args(), got, f)
		}
	}
	if _, err := parseFlags([]string{"--serve"}, io.Discard); err == nil {
		t.Errorf("--serve without a value parsed")
	}
	if _, err := parseFlags([]string{"stray"}, io.Discard); err == nil {
		t.Errorf("a stray argument parsed")
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{"tool": 0o755, "noexec": 0o644} {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	env := []string{"PATH=/nonexistent:" + bin}
	for _, tc := range []struct {
		argv0, want string
		perm, fail  bool
	}{
		{argv0: "tool", want: filepath.Join(bin, "tool")},
		{argv0: "./bin/tool", want: filepath.Join(dir, "bin/tool")},
		{argv0: filepath.Join(bin, "tool"), want: filepath.Join(bin, "tool")},
		{argv0: "noexec", perm: true, fail: true},
		{argv0: "bin", fail: true},
		{argv0: "missing", fail: true},
		{argv0: "./missing", fail: true},
	} {
		got, err := lookPath(tc.argv0, env, dir)
		if tc.fail {
			if err == nil {
				t.Errorf("lookPath(%q) = %q, want an error", tc.argv0, got)
			} else if perm := isPermission(err); perm != tc.perm {
				t.Errorf("lookPath(%q): %v, permission error %v, want %v", tc.argv0, err, perm, tc.perm)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("lookPath(%q) = %q, %v; want %q", tc.argv0, got, err, tc.want)
		}
	}
}

func isPermission(err error) bool { return errors.Is(err, os.ErrPermission) }

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/a/b`:             "/a/b",
		`/with\040space`:   "/with space",
		`/tab\011and\134x`: "/tab\tand\\x",
		`/trailing\04`:     `/trailing\04`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}
