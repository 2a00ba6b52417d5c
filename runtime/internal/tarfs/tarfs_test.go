package tarfs

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/corralhq/corral/errdefs"
)

// cutReader yields data, then fails as a client that disconnects does.
type cutReader struct{ r io.Reader }

var errCut = errors.New("connection reset by peer")

func (c *cutReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err == io.EOF {
		return n, errCut
	}
	return n, err
}

func openRoot(t *testing.T) (string, *os.Root) {
	t.Helper()
	dir := t.TempDir()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	return dir, root
}

// temps lists this package's temporaries anywhere under dir.
func temps(t *testing.T, dir string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), TempPrefix) {
			found = append(found, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func tarOf(t testing.TB, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		body := h.Linkname
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
			h.Linkname = ""
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// file is a tar header for a regular file with body (carried in Linkname
// until tarOf writes it).
func file(name, body string) *tar.Header {
	return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Linkname: body}
}

func TestWriteFileCutLeavesOldFile(t *testing.T) {
	dir, root := openRoot(t)
	ctx := context.Background()
	if _, err := WriteFile(ctx, root, "d/f", strings.NewReader("old"), 0o644, Owner{}); err != nil {
		t.Fatal(err)
	}
	_, err := WriteFile(ctx, root, "d/f", &cutReader{strings.NewReader(strings.Repeat("new", 100000))}, 0o644, Owner{})
	if err == nil {
		t.Fatal("a cut write succeeded")
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "d/f")); string(got) != "old" {
		t.Errorf("after a cut write the file reads %.20q, want the old content", got)
	}
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("temporaries left: %v", tt)
	}
	// A cancelled context is a cut too.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := WriteFile(cctx, root, "d/f", strings.NewReader("new"), 0o644, Owner{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled write: %v, want context.Canceled", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "d/f")); string(got) != "old" {
		t.Errorf("after a cancelled write the file reads %q", got)
	}
	// A complete write replaces the file, and a symlink in its place is
	// replaced rather than followed.
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "d/link")); err != nil {
		t.Fatal(err)
	}
	n, err := WriteFile(ctx, root, "d/link", strings.NewReader("mine"), 0o600, Owner{})
	if err != nil || n != 4 {
		t.Fatalf("WriteFile over a symlink = %d, %v", n, err)
	}
	fi, err := os.Lstat(filepath.Join(dir, "d/link"))
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Errorf("d/link after WriteFile: %v %v, want a regular file 0600", fi, err)
	}
	if _, err := WriteFile(ctx, root, "d", strings.NewReader("x"), 0o644, Owner{}); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("WriteFile over a directory: %v, want a conflict", err)
	}
}

func TestExtractCutLeavesOldFile(t *testing.T) {
	dir, root := openRoot(t)
	ctx := context.Background()
	if err := Extract(ctx, root, "", bytes.NewReader(tarOf(t, file("a", "old a"), file("b", "old b"))), Owner{}); err != nil {
		t.Fatal(err)
	}
	full := tarOf(t, file("a", "new a"), file("b", strings.Repeat("new b", 10000)))
	// Cut in the middle of b's content.
	err := Extract(ctx, root, "", &cutReader{bytes.NewReader(full[:len(full)/2])}, Owner{})
	if err == nil {
		t.Fatal("a cut extraction succeeded")
	}
	a, _ := os.ReadFile(filepath.Join(dir, "a"))
	b, _ := os.ReadFile(filepath.Join(dir, "b"))
	if string(a) != "new a" || string(b) != "old b" {
		t.Errorf("after a cut extraction a=%q b=%.10q, want the complete new a and the old b", a, b)
	}
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("temporaries left: %v", tt)
	}
}

func TestErrorCodes(t *testing.T) {
	dir, root := openRoot(t)
	ctx := context.Background()
	long := strings.Repeat("n", 300)
	if err := os.Symlink("loop", filepath.Join(dir, "loop")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errLong := WriteFile(ctx, root, "d/"+long, strings.NewReader("x"), 0o644, Owner{})
	_, errLoop := WriteFile(ctx, root, "loop/x", strings.NewReader("x"), 0o644, Owner{})
	rc, errFifo := Archive(ctx, mustRoot(t, dir), "fifo")
	if rc != nil {
		rc.Close()
	}
	errTarFifo := Extract(ctx, root, "", bytes.NewReader(tarOf(t, &tar.Header{Name: "p", Typeflag: tar.TypeFifo, Mode: 0o644})), Owner{})
	errTarLong := Extract(ctx, root, "", bytes.NewReader(tarOf(t, file(long, "x"))), Owner{})
	errEscape := Extract(ctx, root, "", bytes.NewReader(tarOf(t, file("../x", "x"))), Owner{})
	for _, tc := range []struct {
		what  string
		err   error
		class error
		code  string
	}{
		{"a 300-byte name", errLong, errdefs.ErrInvalidArgument, "name_too_long"},
		{"a symlink loop", errLoop, errdefs.ErrInvalidArgument, "symlink_loop"},
		{"archiving a FIFO", errFifo, errdefs.ErrFailedPrecondition, "special_file"},
		{"a FIFO in a tar", errTarFifo, errdefs.ErrFailedPrecondition, "special_file"},
		{"a 300-byte name in a tar", errTarLong, errdefs.ErrInvalidArgument, "name_too_long"},
		{"a climbing name in a tar", errEscape, errdefs.ErrInvalidArgument, "path_escape"},
	} {
		if !errors.Is(tc.err, tc.class) || errdefs.Code(tc.err) != tc.code {
			t.Errorf("%s: %v (code %s), want %v coded %s", tc.what, tc.err, errdefs.Code(tc.err), tc.class, tc.code)
		}
	}
	if err := Err("p", syscall.ENOSPC); !errors.Is(err, errdefs.ErrInsufficientStorage) || errdefs.Code(err) != "insufficient_storage" {
		t.Errorf("ENOSPC: %v", err)
	}
}

func mustRoot(t *testing.T, dir string) *os.Root {
	t.Helper()
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestSweepRemovesOnlyOtherProcessesTemporaries(t *testing.T) {
	dir, root := openRoot(t)
	stale := TempPrefix + "000000000000-0123456789abcdef"
	mine := tempName()
	user := TempPrefix + "notes.txt" // a user's file that merely looks alike
	for _, p := range []string{stale, "sub/" + stale, mine, user} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if n := SweepAll(context.Background(), root); n != 2 {
		t.Errorf("SweepAll removed %d, want 2", n)
	}
	for p, want := range map[string]bool{stale: false, "sub/" + stale: false, mine: true, user: true} {
		_, err := os.Lstat(filepath.Join(dir, p))
		if (err == nil) != want {
			t.Errorf("%s exists=%v after the sweep, want %v", p, err == nil, want)
		}
	}
	// Archives leave temporaries out.
	rc, err := Archive(context.Background(), mustRoot(t, dir), "")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(h.Name, mine) {
			t.Errorf("archive holds the temporary %s", h.Name)
		}
	}
}
