package tarfs

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/corralhq/corral/runtime"
)

// The fuzz targets run their checked-in seeds (testdata/fuzz) as ordinary
// tests; `go test -fuzz FuzzExtract ./runtime/internal/tarfs` explores
// further. Each checks the properties that must hold for any input: nothing
// is created outside the root, whatever the entries and the symlinks met,
// and no temporary is left behind.

// fuzzTree makes base/root, holding symlinks that lead out (to /, up,
// to a sibling directory), one that loops and one that stays in, next to
// base/outside, which must stay empty.
func fuzzTree(t *testing.T) (base string, root *os.Root) {
	t.Helper()
	base = t.TempDir()
	for _, d := range []string{"root/sub", "outside"} {
		if err := os.MkdirAll(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, target := range map[string]string{
		"toroot": "/", "up": "../..", "out": "../outside", "abs": filepath.Join(base, "outside"),
		"loop": "loop", "in": "sub",
	} {
		if err := os.Symlink(target, filepath.Join(base, "root", name)); err != nil {
			t.Fatal(err)
		}
	}
	root, err := os.OpenRoot(filepath.Join(base, "root"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	return base, root
}

// checkContained fails t if anything appeared next to root or in outside,
// or a temporary was left in root.
func checkContained(t *testing.T, base string) {
	t.Helper()
	names, err := os.ReadDir(base)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 2 {
		t.Errorf("entries next to the root: %v", names)
	}
	out, err := os.ReadDir(filepath.Join(base, "outside"))
	if err != nil || len(out) != 0 {
		t.Errorf("written outside the root: %v %v", out, err)
	}
	if tt := temps(t, filepath.Join(base, "root")); len(tt) != 0 {
		t.Errorf("temporaries left: %v", tt)
	}
}

func FuzzExtract(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		base, root := fuzzTree(t)
		_ = Extract(context.Background(), root, "", bytes.NewReader(data), Owner{})
		checkContained(t, base)
	})
}

func FuzzWriteFile(f *testing.F) {
	f.Fuzz(func(t *testing.T, name string) {
		base, root := fuzzTree(t)
		_, err := WriteFile(context.Background(), root, name, strings.NewReader("data"), 0o644, Owner{})
		checkContained(t, base)
		if err != nil {
			return
		}
		// What was written is at the cleaned name inside the root.
		c, cerr := runtime.CleanPath(name)
		if cerr != nil {
			t.Fatalf("WriteFile(%q) succeeded for a path CleanPath refuses: %v", name, cerr)
		}
		got, rerr := root.ReadFile(c)
		if rerr != nil || string(got) != "data" {
			t.Errorf("WriteFile(%q) succeeded but %q reads %q, %v", name, c, got, rerr)
		}
	})
}
