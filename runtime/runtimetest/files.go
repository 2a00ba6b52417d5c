package runtimetest

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
)

// cutReader yields r's bytes, then fails as a client that disconnects
// midway does.
type cutReader struct{ r io.Reader }

var errCut = errors.New("client went away (test)")

func (c *cutReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err == io.EOF {
		return n, errCut
	}
	return n, err
}

// wantCode fails t unless err is of class and carries code.
func wantCode(t *testing.T, what string, err, class error, code string) {
	t.Helper()
	if !errors.Is(err, class) || errdefs.Code(err) != code {
		t.Errorf("%s: got error %v (code %q), want %v coded %s", what, err, errdefs.Code(err), class, code)
	}
}

// testCutUpload: an upload cut off midway (a client that disconnects)
// leaves the file that was there whole, and no partial file or temporary
// anywhere, for archive uploads and, where the driver has one, streamed
// single-file writes.
func (s *suite) testCutUpload(t *testing.T) {
	ctx := ctxT(t)
	id := s.running(t)
	old := "the old content\n"
	if err := s.rt.CopyIn(ctx, id, "up", makeTar(t, []tarEntry{
		{Name: "f", Type: tar.TypeReg, Mode: 0o644, Body: old},
		{Name: "g", Type: tar.TypeReg, Mode: 0o644, Body: old},
	})); err != nil {
		t.Fatalf("CopyIn: %v", err)
	}
	check := func(what string) {
		t.Helper()
		if out := s.mustSh(t, id, "cat up/f up/g"); out != old+old {
			t.Errorf("after %s, up/f and up/g read %.80q, want the old content", what, out)
		}
		if out := s.mustSh(t, id, "ls -A up"); out != "f\ng\n" {
			t.Errorf("after %s, up holds %q, want only f and g", what, out)
		}
	}
	// A tar cut in the middle of the second file's content.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	big := strings.Repeat("new content, never complete\n", 20000)
	for _, name := range []string{"new", "g"} {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(big)), ModTime: time.Now()}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(big))
	}
	tw.Close()
	cut := buf.Bytes()[:len(big)+len(big)/2]
	if err := s.rt.CopyIn(ctx, id, "up", &cutReader{bytes.NewReader(cut)}); err == nil {
		t.Fatal("CopyIn of a cut stream succeeded")
	}
	// Entries before the cut may be written, each whole (a driver that
	// checks the whole stream first writes none).
	if out := s.mustSh(t, id, "if [ -e up/new ]; then wc -c < up/new; fi; rm -f up/new"); out != "" && strings.TrimSpace(out) != "560000" {
		t.Errorf("a file before the cut is partial: %s bytes of 560000", strings.TrimSpace(out))
	}
	check("a cut archive upload")
	fw, ok := s.rt.(runtime.FileWriter)
	if !ok {
		return
	}
	if _, err := fw.WriteFile(ctx, id, "up/f", &cutReader{strings.NewReader(big)}, 0o644); err == nil {
		t.Fatal("WriteFile of a cut stream succeeded")
	}
	check("a cut single-file upload")
	n, err := fw.WriteFile(ctx, id, "up/f", strings.NewReader("whole"), 0o600)
	if err != nil || n != 5 {
		t.Fatalf("WriteFile = %d, %v", n, err)
	}
	if out := s.mustSh(t, id, "cat up/f; stat -c ' %a' up/f"); out != "whole 600\n" {
		t.Errorf("written file reads %q, want \"whole 600\\n\"", out)
	}
	// The file belongs to the workspace's user, as one its commands make.
	if out := s.mustSh(t, id, "touch up/mine && stat -c %u:%g up/f up/mine && rm up/mine"); len(strings.Fields(out)) != 2 || strings.Fields(out)[0] != strings.Fields(out)[1] {
		t.Errorf("owners of a written file and a file made in the workspace: %q, want the same", out)
	}
	if _, err := fw.WriteFile(ctx, id, "up", strings.NewReader("x"), 0o644); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("WriteFile over a directory: %v, want a conflict", err)
	}
	wantEscape(t, "WriteFile ../x", func() error { _, err := fw.WriteFile(ctx, id, "../x", strings.NewReader("x"), 0o644); return err }())
}

// testPathErrors: a name too long, a symlink loop and a FIFO met during a
// request are client errors with stable codes, never internal ones.
func (s *suite) testPathErrors(t *testing.T) {
	ctx := ctxT(t)
	id := s.running(t)
	s.mustSh(t, id, "mkdir d && ln -s loop loop && mkfifo fifo")
	long := strings.Repeat("n", 300)

	err := s.rt.CopyIn(ctx, id, "d", makeTar(t, []tarEntry{{Name: long, Type: tar.TypeReg, Mode: 0o644, Body: "x"}}))
	wantCode(t, "CopyIn of a 300-byte name", err, errdefs.ErrInvalidArgument, "name_too_long")
	err = s.rt.CopyIn(ctx, id, "d/"+long, makeTar(t, []tarEntry{{Name: "x", Type: tar.TypeReg, Mode: 0o644, Body: "x"}}))
	wantCode(t, "CopyIn into a 300-byte directory name", err, errdefs.ErrInvalidArgument, "name_too_long")
	rc, err := s.rt.CopyOut(ctx, id, "d/"+long)
	if err == nil {
		rc.Close()
	}
	wantCode(t, "CopyOut of a 300-byte name", err, errdefs.ErrInvalidArgument, "name_too_long")

	err = s.rt.CopyIn(ctx, id, "loop", makeTar(t, []tarEntry{{Name: "x", Type: tar.TypeReg, Mode: 0o644, Body: "x"}}))
	wantCode(t, "CopyIn into a symlink loop", err, errdefs.ErrInvalidArgument, "symlink_loop")
	rc, err = s.rt.CopyOut(ctx, id, "loop/x")
	if err == nil {
		rc.Close()
	}
	wantCode(t, "CopyOut through a symlink loop", err, errdefs.ErrInvalidArgument, "symlink_loop")

	rc, err = s.rt.CopyOut(ctx, id, "fifo")
	if err == nil {
		rc.Close()
	}
	wantCode(t, "CopyOut of a FIFO", err, errdefs.ErrFailedPrecondition, "special_file")
	err = s.rt.CopyIn(ctx, id, "d", makeTar(t, []tarEntry{{Name: "p", Type: tar.TypeFifo, Mode: 0o644}}))
	wantCode(t, "CopyIn of a FIFO entry", err, errdefs.ErrFailedPrecondition, "special_file")

	if fw, ok := s.rt.(runtime.FileWriter); ok {
		_, err := fw.WriteFile(ctx, id, "d/"+long, strings.NewReader("x"), 0o644)
		wantCode(t, "WriteFile of a 300-byte name", err, errdefs.ErrInvalidArgument, "name_too_long")
		_, err = fw.WriteFile(ctx, id, "loop/x", strings.NewReader("x"), 0o644)
		wantCode(t, "WriteFile through a symlink loop", err, errdefs.ErrInvalidArgument, "symlink_loop")
	}
	// The FIFO is still there, untouched: nothing opened it.
	if out := s.mustSh(t, id, "[ -p fifo ] && echo fifo"); out != "fifo\n" {
		t.Errorf("the FIFO is now %q", out)
	}
}
