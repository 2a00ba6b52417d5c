package docker_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
)

type entry struct {
	name, body, link string
	typ              byte
}

func tarOf(t *testing.T, es ...entry) io.Reader {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Linkname: e.link, Size: int64(len(e.body))}
		if e.typ == tar.TypeDir {
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	return &buf
}

// links reads a tar stream into name → body, or "-> target" for hard links.
func links(t *testing.T, rc io.ReadCloser) map[string]string {
	t.Helper()
	defer rc.Close()
	out := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		out[h.Name] = string(b)
		if h.Typeflag == tar.TypeLink {
			out[h.Name] = "-> " + h.Linkname
		}
	}
}

func TestFilesDetails(t *testing.T) {
	d := open(t)
	ctx := ctxT(t)
	id := workspace(t, d, nil)

	// Streams made with `tar -C dir .` name entries "./x" and hold "./".
	err := d.CopyIn(ctx, id, "", tarOf(t,
		entry{name: "./", typ: tar.TypeDir},
		entry{name: "./top.txt", typ: tar.TypeReg, body: "top"},
		entry{name: "./sub/", typ: tar.TypeDir},
		entry{name: "./sub/hard", typ: tar.TypeLink, link: "top.txt"},
	))
	if err != nil {
		t.Fatalf("CopyIn of a ./-style stream: %v", err)
	}
	if r := sh(t, d, id, "cat top.txt sub/hard; stat -c %h top.txt"); r.Stdout != "toptop2\n" {
		t.Errorf("files read %q, want the file and its hard link", r.Stdout)
	}

	// The root comes out as "./...".
	rc, err := d.CopyOut(ctx, id, "")
	if err != nil {
		t.Fatalf("CopyOut of the root: %v", err)
	}
	got := links(t, rc)
	if _, ok := got["./"]; !ok {
		t.Errorf("CopyOut of the root lacks ./: %v", got)
	}
	// One of the two names carries the body, the other links to it by its
	// new name.
	if !(got["./top.txt"] == "top" && got["./sub/hard"] == "-> ./top.txt" ||
		got["./sub/hard"] == "top" && got["./top.txt"] == "-> ./sub/hard") {
		t.Errorf("CopyOut of the root gave %v", got)
	}

	// Hard links to outside, device files and files over directories are
	// refused, and nothing of the stream is written.
	for _, tc := range []struct {
		what   string
		stream io.Reader
		class  error
		code   string
	}{
		{"hard link to /etc/passwd", tarOf(t, entry{name: "pw", typ: tar.TypeLink, link: "/etc/passwd"}), errdefs.ErrInvalidArgument, "path_escape"},
		{"hard link climbing out", tarOf(t, entry{name: "pw", typ: tar.TypeLink, link: "../../etc/passwd"}), errdefs.ErrInvalidArgument, "path_escape"},
		{"device file", tarOf(t, entry{name: "pw", typ: tar.TypeChar}), errdefs.ErrFailedPrecondition, "special_file"},
	} {
		err := d.CopyIn(ctx, id, "", tc.stream)
		if !errors.Is(err, tc.class) || errdefs.Code(err) != tc.code {
			t.Errorf("%s: %v (code %q), want %v coded %s", tc.what, err, errdefs.Code(err), tc.class, tc.code)
		}
	}
	if r := sh(t, d, id, "test -e pw"); r.ExitCode == 0 {
		t.Errorf("a refused stream left pw behind")
	}
	// A stream refused half-way wrote nothing of its first half either.
	err = d.CopyIn(ctx, id, "", tarOf(t,
		entry{name: "first.txt", typ: tar.TypeReg, body: "1"},
		entry{name: "../escape.txt", typ: tar.TypeReg, body: "2"},
	))
	if errdefs.Code(err) != "path_escape" {
		t.Errorf("stream with a bad second entry: %v", err)
	}
	if r := sh(t, d, id, "test -e first.txt"); r.ExitCode == 0 {
		t.Errorf("a refused stream wrote its first entry")
	}

	// CopyIn into a file, or a Cwd that is a file, is refused.
	if err := d.CopyIn(ctx, id, "top.txt", tarOf(t, entry{name: "x", typ: tar.TypeReg})); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("CopyIn into a file: %v", err)
	}
	if _, err := d.Exec(ctx, id, runtime.ExecSpec{Argv: []string{"pwd"}, Cwd: "top.txt"}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Exec with a file as Cwd: %v", err)
	}
	// A Cwd through a symlink that stays inside works; one leading out does not.
	sh(t, d, id, "ln -s sub inside; ln -s /etc outside")
	out := runtime.NewOutput(0)
	if _, err := runtime.Run(ctx, d, id, runtime.ExecSpec{Argv: []string{"pwd"}, Cwd: "inside", Stdout: out}); err != nil || out.String() != "/workspace/sub\n" {
		t.Errorf("Cwd through an inside symlink: %v %q", err, out.String())
	}
	if _, err := d.Exec(ctx, id, runtime.ExecSpec{Argv: []string{"pwd"}, Cwd: "outside"}); errdefs.Code(err) != "path_escape" {
		t.Errorf("Cwd through a symlink to /etc: %v", err)
	}
}
