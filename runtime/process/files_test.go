package process_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
)

// zeroes is an endless stream of zero bytes.
type zeroes struct{}

func (zeroes) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// A full disk fails an upload with insufficient_storage, and nothing
// partial is stored: the previous file stays whole and no temporary is
// left to fill the disk further.
func TestDiskFullUpload(t *testing.T) {
	rt := open(t, "")
	need(t, rt, rt.Capabilities().Policy.Disk, "disk")
	p := none()
	p.Limits.Disk = 16 << 20
	ws := workspace(t, rt, p, "")
	ctx := context.Background()
	fw := rt.(runtime.FileWriter)
	if _, err := fw.WriteFile(ctx, ws, "f", strings.NewReader("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := fw.WriteFile(ctx, ws, "f", io.LimitReader(zeroes{}, 40<<20), 0o644)
	if !errors.Is(err, errdefs.ErrInsufficientStorage) || errdefs.Code(err) != "insufficient_storage" {
		t.Errorf("writing 40MiB into a 16MiB workspace: %v (code %s), want insufficient_storage", err, errdefs.Code(err))
	}
	if r := sh(t, rt, ws, "cat f; echo; ls -A"); r.stdout != "old\nf\n" {
		t.Errorf("after the failed write the workspace holds %q, want only f, unchanged", r.stdout)
	}

	// An archive too big for the disk: the same.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, Size: 40 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(tw, zeroes{}, 40<<20); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	err = rt.CopyIn(ctx, ws, "", &buf)
	if !errors.Is(err, errdefs.ErrInsufficientStorage) {
		t.Errorf("extracting 40MiB into a 16MiB workspace: %v, want insufficient_storage", err)
	}
	if r := sh(t, rt, ws, "cat f; echo; ls -A"); r.stdout != "old\nf\n" {
		t.Errorf("after the failed extraction the workspace holds %q, want only f, unchanged", r.stdout)
	}
	// What fits still does.
	if _, err := fw.WriteFile(ctx, ws, "f", io.LimitReader(zeroes{}, 4<<20), 0o644); err != nil {
		t.Errorf("writing 4MiB into the 16MiB workspace: %v", err)
	}
}
