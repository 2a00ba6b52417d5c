// Package tarfs moves files in and out of a directory tree on the host
// through an os.Root: tar extraction, single-file writes and archiving. It
// is the one place where the drivers that reach a workspace's files on the
// host (process, podman) guard paths, so the rules live here once:
//
//   - Every path is resolved inside the root. An entry name that is absolute
//     or climbs with "..", or a path that passes through a symlink leading
//     out of the root, fails with the "path_escape" code; nothing outside the
//     root is ever created, written or read.
//   - A regular file is whole or absent. Its content goes to a temporary
//     name in the target's directory (TempPrefix…), is synced to disk and
//     renamed over the target only when complete. A stream that fails
//     midway, a full disk or a cancelled context leaves the previous file
//     untouched and removes the temporary. Symlinks and hard links are
//     made under a temporary name and renamed too, so a symlink at the
//     target is replaced, never followed.
//   - A temporary left by a killed server is removed by Sweep and SweepAll;
//     one made by this process is never swept, so concurrent writes in the
//     same directory are safe.
//
// Errors are classed with errdefs (see Err).
package tarfs

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"encoding/hex"
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

// TempPrefix starts the name of every temporary this package makes. The
// full name is TempPrefix, 12 hex digits naming the server process that
// made it, "-", 16 random hex digits.
const TempPrefix = ".corral-tmp-"

// boot names this process in its temporaries, so that a sweep removes only
// those of earlier, dead processes.
var boot = randHex(6)

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

func tempName() string { return TempPrefix + boot + "-" + randHex(8) }

// IsTemp reports whether name (a base name) is one of this package's
// temporaries, of this process or another.
func IsTemp(name string) bool {
	rest, ok := strings.CutPrefix(name, TempPrefix)
	if !ok || len(rest) != 12+1+16 || rest[12] != '-' {
		return false
	}
	for i, c := range rest {
		if i != 12 && !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return true
}

// isStale reports whether name is a temporary of another process.
func isStale(name string) bool {
	return IsTemp(name) && !strings.HasPrefix(name, TempPrefix+boot+"-")
}

// Owner is who owns what Extract and WriteFile create. The zero value
// leaves new files to the server's own uid.
type Owner struct {
	Chown    bool
	UID, GID int
}

func (o Owner) own(root *os.Root, p string) error {
	if !o.Chown {
		return nil
	}
	return root.Lchown(p, o.UID, o.GID)
}

// Err classes err, from an os.Root operation on the client's path p, with
// the stable codes every driver answers with. An error already classed is
// returned as it is.
func Err(p string, err error) error {
	var classed *errdefs.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &classed):
		return err
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case isEscape(err):
		return runtime.EscapeError(p)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return errdefs.New(errdefs.ErrInsufficientStorage, "insufficient_storage", "%s: the workspace's disk is full", p)
	case errors.Is(err, syscall.ENAMETOOLONG):
		return errdefs.Invalid("name_too_long", "%s: a file name is longer than the file system allows (255 bytes)", p)
	case errors.Is(err, syscall.ELOOP):
		return errdefs.Invalid("symlink_loop", "%s: too many levels of symbolic links", p)
	case errors.Is(err, fs.ErrNotExist):
		return errdefs.NotFound("%s: no such file or directory", p)
	case errors.Is(err, fs.ErrExist), errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.ENOTEMPTY):
		return errdefs.New(errdefs.ErrConflict, "conflict", "%s: already exists", p)
	case errors.Is(err, syscall.ENOTDIR):
		return runtime.NotADirectoryError(p)
	case errors.Is(err, syscall.ENXIO), errors.Is(err, syscall.ENODEV):
		return runtime.SpecialFileError(p)
	default:
		return fmt.Errorf("%s: %w", p, err)
	}
}

// isEscape reports whether err is os.Root refusing a path that leaves the
// root. os does not export that error, so its message is matched.
func isEscape(err error) bool {
	return err != nil && strings.Contains(err.Error(), "path escapes from parent")
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

// writeErr remembers a write's error, to tell a full disk from a failing
// source in io.Copy.
type writeErr struct {
	w   io.Writer
	err error
}

func (w *writeErr) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}

// Name limits, as Linux file systems have them: a component (NAME_MAX)
// and a whole path (PATH_MAX less its NUL). os.Root resolves a path one
// component at a time, so without the second a single deep name would
// cost time quadratic in its length.
const (
	maxName = 255
	maxPath = 4095
)

// CheckName refuses, with "name_too_long", a path (cleaned, relative)
// longer than a Linux file system allows, or with a component that is.
// Drivers that reach files through an engine check it first, as the
// engine reports these only as internal errors.
func CheckName(p string) error {
	if len(p) > maxPath {
		return errdefs.Invalid("name_too_long", "%.64s…: the path is longer than %d bytes", p, maxPath)
	}
	for part := range strings.SplitSeq(p, "/") {
		if len(part) > maxName {
			return errdefs.Invalid("name_too_long", "%.64s…: a file name is longer than %d bytes", part, maxName)
		}
	}
	return nil
}

// MkdirAll creates p (cleaned, relative to root) and its missing parents,
// owned by o. A parent that is a file fails with "not_a_directory".
func MkdirAll(root *os.Root, p string, o Owner) error {
	if p == "" || p == "." {
		return nil
	}
	if err := CheckName(p); err != nil {
		return err
	}
	if fi, err := root.Stat(p); err == nil && fi.IsDir() {
		return nil // the common case, in one walk
	}
	parts := strings.Split(p, "/")
	for i := range parts {
		sub := strings.Join(parts[:i+1], "/")
		err := root.Mkdir(sub, 0o755)
		if err == nil {
			if err := o.own(root, sub); err != nil {
				return err
			}
			continue
		}
		if !errors.Is(err, fs.ErrExist) {
			return err
		}
		fi, serr := root.Stat(sub)
		if serr != nil {
			return serr
		}
		if !fi.IsDir() {
			return runtime.NotADirectoryError(sub)
		}
	}
	return nil
}

// WriteFile stores r as the file p (relative to root, checked with
// runtime.CleanPath), creating its parents, whole or absent (see the
// package comment). mode's permission bits are kept, others dropped. It
// returns the bytes written. Stale temporaries in p's directory are swept
// first. errdefs.ErrConflict if p is a directory.
func WriteFile(ctx context.Context, root *os.Root, p string, r io.Reader, mode fs.FileMode, o Owner) (int64, error) {
	c, err := runtime.CleanPath(p)
	if err != nil {
		return 0, err
	}
	if c == "" {
		return 0, errdefs.Invalid("invalid_path", "a file path is required")
	}
	if err := CheckName(c); err != nil {
		return 0, err
	}
	dir := path.Dir(c)
	if err := MkdirAll(root, dir, o); err != nil {
		return 0, Err(p, err)
	}
	Sweep(root, dir)
	n, err := writeAtomic(ctx, root, c, r, mode.Perm(), o, nil)
	return n, Err(p, err)
}

// writeAtomic writes r to a temporary next to p and renames it over p. If
// h is set, it is the tar entry whose times are kept. On error the
// temporary is removed and p is untouched.
func writeAtomic(ctx context.Context, root *os.Root, p string, r io.Reader, mode fs.FileMode, o Owner, h *tar.Header) (n int64, err error) {
	if fi, err := root.Lstat(p); err == nil && fi.IsDir() {
		return 0, errdefs.New(errdefs.ErrConflict, "conflict", "%s: a directory is in the way", p)
	}
	tmp := path.Join(path.Dir(p), tempName())
	f, err := root.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			f.Close()
			root.Remove(tmp)
		}
	}()
	w := &writeErr{w: f}
	n, err = io.Copy(w, &ctxReader{ctx: ctx, r: r})
	if err != nil {
		if w.err != nil {
			return n, w.err
		}
		var classed *errdefs.Error
		if errors.As(err, &classed) || ctx.Err() != nil {
			return n, err
		}
		return n, errdefs.Invalid("short_body", "%s: the content ended early: %v", p, err)
	}
	if err = f.Sync(); err != nil {
		return n, err
	}
	if err = f.Close(); err != nil {
		return n, err
	}
	if err = o.own(root, tmp); err != nil {
		return n, err
	}
	// After chown, which clears setuid/setgid bits.
	if err = root.Chmod(tmp, mode); err != nil {
		return n, err
	}
	if h != nil && !h.ModTime.IsZero() {
		_ = root.Chtimes(tmp, h.ModTime, h.ModTime)
	}
	if err = root.Rename(tmp, p); err != nil {
		return n, err
	}
	return n, nil
}

// linkAtomic makes a symlink (or, if hard, a hard link to target) at a
// temporary next to p and renames it over p.
func linkAtomic(root *os.Root, target, p string, hard bool, o Owner) (err error) {
	if fi, err := root.Lstat(p); err == nil && fi.IsDir() {
		return errdefs.New(errdefs.ErrConflict, "conflict", "%s: a directory is in the way", p)
	}
	tmp := path.Join(path.Dir(p), tempName())
	if hard {
		err = root.Link(target, tmp)
	} else {
		err = root.Symlink(target, tmp)
	}
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			root.Remove(tmp)
		}
	}()
	if !hard {
		if err = o.own(root, tmp); err != nil {
			return err
		}
	}
	return root.Rename(tmp, p)
}

// Extract extracts a tar stream into dir (relative to root, checked with
// runtime.CleanPath, created if missing). Regular files, directories,
// symlinks and hard links are supported; FIFOs and devices fail with
// "special_file", other types with "unsupported_entry". An entry that
// escapes (see the package comment) fails the call with "path_escape";
// entries before the failing one stay written, each whole. Symlinks may
// point anywhere: only passing through them is checked. Permissions are
// kept, setuid/setgid/sticky bits dropped. A stream that is not a valid tar
// fails with "invalid_tar".
func Extract(ctx context.Context, root *os.Root, dir string, r io.Reader, o Owner) error {
	base, err := runtime.CleanPath(dir)
	if err != nil {
		return err
	}
	if err := MkdirAll(root, base, o); err != nil {
		return Err(dir, err)
	}
	Sweep(root, base)
	tr := tar.NewReader(&ctxReader{ctx: ctx, r: r})
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			var classed *errdefs.Error
			if errors.As(err, &classed) || ctx.Err() != nil {
				return err
			}
			return errdefs.Invalid("invalid_tar", "read tar stream: %v", err)
		}
		if err := extract(ctx, root, base, h, tr, o); err != nil {
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
		return "", runtime.EscapeError(name)
	}
	p := path.Join(base, c)
	return p, CheckName(p)
}

func extract(ctx context.Context, root *os.Root, base string, h *tar.Header, body io.Reader, o Owner) error {
	switch h.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeFifo, tar.TypeChar, tar.TypeBlock:
		return runtime.SpecialFileError(h.Name)
	case tar.TypeDir, tar.TypeReg, tar.TypeSymlink, tar.TypeLink: // the reader reports the old TypeRegA as TypeReg
	default:
		return errdefs.Invalid("unsupported_entry", "tar entry %s: type %q is not supported", h.Name, string(h.Typeflag))
	}
	p, err := entryPath(base, h.Name)
	if err != nil {
		return err
	}
	if p == "" || p == "." {
		return nil // the directory itself
	}
	mode := fs.FileMode(h.Mode) & fs.ModePerm
	if parent := path.Dir(p); parent != "." {
		if err := MkdirAll(root, parent, o); err != nil {
			return Err(h.Name, err)
		}
	}
	switch h.Typeflag {
	case tar.TypeDir:
		if err := MkdirAll(root, p, o); err != nil {
			return Err(h.Name, err)
		}
		return Err(h.Name, root.Chmod(p, mode))
	case tar.TypeSymlink:
		return Err(h.Name, linkAtomic(root, h.Linkname, p, false, o))
	case tar.TypeLink:
		target, err := entryPath(base, h.Linkname)
		if err != nil {
			return err
		}
		return Err(h.Name, linkAtomic(root, target, p, true, o))
	default:
		_, err := writeAtomic(ctx, root, p, io.LimitReader(body, h.Size), mode, o, h)
		return Err(h.Name, err)
	}
}

// Sweep removes the temporaries of earlier processes from dir (relative
// to root; "" for the root). Best effort: errors are ignored, the next
// sweep tries again.
func Sweep(root *os.Root, dir string) {
	if dir == "" {
		dir = "."
	}
	f, err := root.Open(dir)
	if err != nil {
		return
	}
	names, _ := f.Readdirnames(-1)
	f.Close()
	for _, n := range names {
		if isStale(n) {
			root.Remove(path.Join(dir, n))
		}
	}
}

// SweepAll removes the temporaries of earlier processes from the whole
// tree under root, without following symlinks. It returns how many it
// removed. Best effort, as Sweep.
func SweepAll(ctx context.Context, root *os.Root) int {
	removed := 0
	_ = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return nil // unreadable: skip it
		}
		if p != "." && isStale(d.Name()) {
			if root.RemoveAll(p) == nil {
				removed++
			}
			if d.IsDir() {
				return fs.SkipDir
			}
		}
		return nil
	})
	return removed
}

// Archive returns a tar stream of the file or directory p (relative to
// root), entries named from p's base name ("src/", "src/main.go"; the root
// itself is "./"). Symlinks are stored, never followed; FIFOs, sockets and
// devices inside a directory are left out, and p itself being one fails
// with "special_file"; this package's temporaries are left out.
// errdefs.ErrNotFound if p does not exist; "path_escape" if reaching it
// leaves the root. Archive takes root: it closes it when the stream ends,
// or at once on error. The caller closes the stream.
func Archive(ctx context.Context, root *os.Root, p string) (io.ReadCloser, error) {
	c, err := runtime.CleanPath(p)
	if err != nil {
		root.Close()
		return nil, err
	}
	name := "."
	if c != "" {
		name = path.Base(c)
		// Lstat resolves the parents inside the root and does not follow
		// a final symlink.
		fi, err := root.Lstat(c)
		if err != nil {
			root.Close()
			if errors.Is(err, syscall.ENOTDIR) {
				// Under a file nothing exists to read.
				return nil, errdefs.NotFound("%s: no such file or directory", p)
			}
			return nil, Err(p, err)
		}
		if special(fi.Mode()) {
			root.Close()
			return nil, runtime.SpecialFileError(p)
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

func special(m fs.FileMode) bool {
	return m&(fs.ModeNamedPipe|fs.ModeSocket|fs.ModeDevice|fs.ModeCharDevice|fs.ModeIrregular) != 0
}

// writeTree writes the entry at p (named name) and, for a directory,
// everything below it.
func writeTree(ctx context.Context, root *os.Root, tw *tar.Writer, p, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fi, err := root.Lstat(p)
	if err != nil {
		return Err(p, err)
	}
	h := &tar.Header{Name: name, Mode: tarMode(fi.Mode()), ModTime: fi.ModTime(), Format: tar.FormatPAX}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := root.Readlink(p)
		if err != nil {
			return Err(p, err)
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
			return Err(p, err)
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return fmt.Errorf("list %s: %w", p, err)
		}
		slices.Sort(names)
		for _, n := range names {
			if IsTemp(n) {
				continue
			}
			if err := writeTree(ctx, root, tw, path.Join(p, n), path.Join(name, n)); err != nil {
				return err
			}
		}
		return nil
	case fi.Mode().IsRegular():
		h.Typeflag, h.Size = tar.TypeReg, fi.Size()
		f, err := root.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
		if err != nil {
			return Err(p, err)
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

// CreateTemp creates a temporary file in dir (relative to root; "" for the
// root), readable and writable by the server only, for a spool that must
// stay inside the workspace's own storage. The caller closes it and
// removes name; if the server dies first, a sweep does.
func CreateTemp(root *os.Root, dir string) (f *os.File, name string, err error) {
	if dir == "" {
		dir = "."
	}
	name = path.Join(dir, tempName())
	f, err = root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_RDWR|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, "", err
	}
	return f, name, nil
}
