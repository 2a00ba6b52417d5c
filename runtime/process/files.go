package process

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
)

// Files are read and written from the host, through os.Root opened on the
// workspace's home: every path is resolved inside it, and a symlink that
// leads out (absolute, or climbing with "..") makes the operation fail, so
// a command in the workspace cannot trick the server into touching host
// files. The workspace may be running or stopped.

// isEscape reports whether err is os.Root refusing a path that leaves the
// root. os does not export that error, so its message is matched.
func isEscape(err error) bool {
	return err != nil && strings.Contains(err.Error(), "path escapes from parent")
}

// openRoot opens the workspace's home as an os.Root.
func (d *Driver) openRoot(ctx context.Context, id string) (*os.Root, error) {
	m, err := d.loadMeta(id)
	if err != nil {
		return nil, err
	}
	if m.Disk {
		if err := mountDisk(ctx, d.wsDir(id), d.homeDir(id)); err != nil {
			return nil, fmt.Errorf("workspace %s: %w", id, err)
		}
	}
	r, err := os.OpenRoot(d.homeDir(id))
	if errors.Is(err, fs.ErrNotExist) {
		d.forget(id)
		return nil, errdefs.NotFound("workspace %q not found", id)
	}
	if err != nil {
		return nil, fmt.Errorf("workspace %s: %w", id, err)
	}
	return r, nil
}

// fileErr classes an error from an os.Root operation on p.
func fileErr(p string, err error) error {
	var classed *errdefs.Error
	switch {
	case errors.As(err, &classed):
		return err
	case isEscape(err):
		return runtime.EscapeError(p)
	case errors.Is(err, fs.ErrNotExist):
		return errdefs.NotFound("%s: no such file or directory", p)
	case errors.Is(err, fs.ErrExist):
		return errdefs.New(errdefs.ErrConflict, "conflict", "%s: already exists", p)
	case errors.Is(err, syscall.ENOTDIR):
		return runtime.NotADirectoryError(p)
	default:
		return fmt.Errorf("%s: %w", p, err)
	}
}

// CopyIn extracts a tar stream into dir (created if missing). Entries with
// absolute names or names that climb out, and entries that would be
// written through a symlink leading out, fail the call with "path_escape";
// entries before the bad one stay written. Symlinks are created as
// symlinks; regular files, directories and hard links are supported, other
// entry types are refused.
func (d *Driver) CopyIn(ctx context.Context, id, dir string, r io.Reader) error {
	base, err := runtime.CleanPath(dir)
	if err != nil {
		return err
	}
	root, err := d.openRoot(ctx, id)
	if err != nil {
		return err
	}
	defer root.Close()
	m, err := d.loadMeta(id)
	if err != nil {
		return err
	}
	x := &extractor{root: root, base: base, uid: int(m.UID)}
	if base != "" {
		if err := x.mkdirAll(base); err != nil {
			return fileErr(dir, err)
		}
	}
	tr := tar.NewReader(&ctxReader{ctx: ctx, r: r})
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return errdefs.Invalid("invalid_tar", "read tar stream: %v", err)
		}
		if err := x.extract(h, tr); err != nil {
			return err
		}
	}
}

// entryPath validates a tar entry's name and joins it to base.
func entryPath(base, name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", runtime.EscapeError(name)
	}
	c, err := runtime.CleanPath(name)
	if err != nil {
		return "", err
	}
	return path.Join(base, c), nil
}

// extractor writes tar entries under base in root; files and directories
// it creates are owned by uid when it is not 0 (the workspace's commands
// run as that uid).
type extractor struct {
	root *os.Root
	base string
	uid  int
}

// own gives p to the workspace's uid.
func (x *extractor) own(p string) error {
	if x.uid == 0 {
		return nil
	}
	return x.root.Lchown(p, x.uid, x.uid)
}

// mkdirAll creates p and its missing parents, owned by the workspace.
func (x *extractor) mkdirAll(p string) error {
	parts := strings.Split(p, "/")
	for i := range parts {
		sub := strings.Join(parts[:i+1], "/")
		err := x.root.Mkdir(sub, 0o755)
		if err == nil {
			if err := x.own(sub); err != nil {
				return err
			}
			continue
		}
		if !errors.Is(err, fs.ErrExist) {
			return err
		}
		fi, serr := x.root.Stat(sub)
		if serr != nil {
			return serr
		}
		if !fi.IsDir() {
			return runtime.NotADirectoryError(sub)
		}
	}
	return nil
}

func (x *extractor) extract(h *tar.Header, body io.Reader) error {
	root, base := x.root, x.base
	if h.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	p, err := entryPath(base, h.Name)
	if err != nil {
		return err
	}
	if p == "" || p == "." {
		return nil // the directory itself
	}
	// Permissions only: setuid/setgid bits from an upload are dropped.
	mode := fs.FileMode(h.Mode) & fs.ModePerm
	if parent := path.Dir(p); parent != "." {
		if err := x.mkdirAll(parent); err != nil {
			return fileErr(h.Name, err)
		}
	}
	// replace removes what is at p unless it is a directory, so that a
	// symlink there is replaced rather than followed.
	replace := func() error {
		fi, err := root.Lstat(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return fileErr(h.Name, err)
		}
		if fi.IsDir() {
			return errdefs.New(errdefs.ErrConflict, "conflict", "%s: a directory is in the way", h.Name)
		}
		if err := root.Remove(p); err != nil {
			return fileErr(h.Name, err)
		}
		return nil
	}
	switch h.Typeflag {
	case tar.TypeDir:
		if err := x.mkdirAll(p); err != nil {
			return fileErr(h.Name, err)
		}
		if err := root.Chmod(p, mode); err != nil {
			return fileErr(h.Name, err)
		}
	case tar.TypeReg, tar.TypeRegA:
		if err := replace(); err != nil {
			return err
		}
		f, err := root.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
		if err != nil {
			return fileErr(h.Name, err)
		}
		_, err = io.Copy(f, body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", h.Name, err)
		}
		if err := x.own(p); err != nil {
			return fileErr(h.Name, err)
		}
		if err := root.Chmod(p, mode); err != nil {
			return fileErr(h.Name, err)
		}
		if !h.ModTime.IsZero() {
			_ = root.Chtimes(p, h.ModTime, h.ModTime)
		}
	case tar.TypeSymlink:
		if err := replace(); err != nil {
			return err
		}
		// The link may point anywhere; following it is what is checked.
		if err := root.Symlink(h.Linkname, p); err != nil {
			return fileErr(h.Name, err)
		}
		if err := x.own(p); err != nil {
			return fileErr(h.Name, err)
		}
	case tar.TypeLink:
		target, err := entryPath(base, h.Linkname)
		if err != nil {
			return err
		}
		if err := replace(); err != nil {
			return err
		}
		if err := root.Link(target, p); err != nil {
			return fileErr(h.Name, err)
		}
	default:
		return errdefs.Invalid("unsupported_entry", "tar entry %s: type %q is not supported", h.Name, string(h.Typeflag))
	}
	return nil
}

// ctxReader fails reads once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// CopyOut streams a tar of the file or directory at p, entries named from
// p's base name. Symlinks are stored, never followed; errdefs.ErrNotFound if
// p does not exist; "path_escape" if reaching p leaves the workspace.
func (d *Driver) CopyOut(ctx context.Context, id, p string) (io.ReadCloser, error) {
	c, err := runtime.CleanPath(p)
	if err != nil {
		return nil, err
	}
	root, err := d.openRoot(ctx, id)
	if err != nil {
		return nil, err
	}
	name := "."
	if c != "" {
		name = path.Base(c)
		// Lstat resolves the parents inside the root and does not follow
		// a final symlink.
		if _, err := root.Lstat(c); err != nil {
			root.Close()
			if errors.Is(err, syscall.ENOTDIR) {
				// Under a file nothing exists to read.
				return nil, errdefs.NotFound("%s: no such file or directory", p)
			}
			return nil, fileErr(p, err)
		}
	} else {
		c = "."
	}
	pr, pw := io.Pipe()
	go func() {
		defer root.Close()
		tw := tar.NewWriter(pw)
		err := writeTree(ctx, root, tw, c, name)
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	return pr, nil
}

// writeTree writes the entry at p (named name) and, for a directory,
// everything below it.
func writeTree(ctx context.Context, root *os.Root, tw *tar.Writer, p, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fi, err := root.Lstat(p)
	if err != nil {
		return fileErr(p, err)
	}
	h := &tar.Header{Name: name, Mode: tarMode(fi.Mode()), ModTime: fi.ModTime(), Format: tar.FormatPAX}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := root.Readlink(p)
		if err != nil {
			return fileErr(p, err)
		}
		h.Typeflag, h.Linkname = tar.TypeSymlink, target
		return tw.WriteHeader(h)
	case fi.IsDir():
		h.Typeflag = tar.TypeDir
		if name != "." {
			h.Name = name + "/"
		} else {
			h.Name = "./"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		f, err := root.Open(p)
		if err != nil {
			return fileErr(p, err)
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return fmt.Errorf("list %s: %w", p, err)
		}
		slices.Sort(names)
		for _, n := range names {
			if err := writeTree(ctx, root, tw, path.Join(p, n), path.Join(name, n)); err != nil {
				return err
			}
		}
		return nil
	case fi.Mode().IsRegular():
		h.Typeflag, h.Size = tar.TypeReg, fi.Size()
		f, err := root.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return fileErr(p, err)
		}
		defer f.Close()
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		// The file may change while it is read: send exactly Size bytes.
		n, err := io.Copy(tw, io.LimitReader(&ctxReader{ctx: ctx, r: f}, h.Size))
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		if n < h.Size {
			_, err = io.CopyN(tw, zeros{}, h.Size-n)
			return err
		}
		return nil
	default:
		return nil // sockets, fifos, devices: not file content
	}
}

// tarMode is the tar header mode of m: permissions and setuid/setgid/sticky.
func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// RemovePath deletes the file or tree at p; a symlink is removed, not
// followed. The root cannot be removed (errdefs.ErrInvalidArgument).
// Idempotent: a missing path succeeds. "path_escape" as for CopyIn.
func (d *Driver) RemovePath(ctx context.Context, id, p string) error {
	c, err := runtime.CleanPath(p)
	if err != nil {
		return err
	}
	if c == "" {
		return errdefs.Invalid("invalid_path", "the workspace root cannot be removed")
	}
	root, err := d.openRoot(ctx, id)
	if err != nil {
		return err
	}
	defer root.Close()
	if err := root.RemoveAll(c); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fileErr(p, err)
	}
	return nil
}
