package docker

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/internal/tarfs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
)

// Files move through the engine's archive API, which works on running and
// stopped containers alike. The engine resolves symlinks inside the
// container's root, never the host's, but a symlink in the workspace may
// still lead elsewhere in the container: the driver stats each component of a
// path first and refuses any symlink that resolves outside /workspace.

// pathChecker stats paths in one container and remembers the answers.
type pathChecker struct {
	d         *Driver
	container string
	seen      map[string]statResult
}

type statResult struct {
	stat container.PathStat
	err  error
}

func (d *Driver) newPathChecker(name string) *pathChecker {
	return &pathChecker{d: d, container: name, seen: map[string]statResult{}}
}

func inWorkspace(abs string) bool {
	return abs == runtime.WorkspaceDir || strings.HasPrefix(abs, runtime.WorkspaceDir+"/")
}

// lstat stats rel (relative to the workspace, parents resolved by the engine)
// without following a final symlink. errdefs.ErrNotFound if missing.
func (c *pathChecker) lstat(ctx context.Context, rel string) (container.PathStat, error) {
	if r, ok := c.seen[rel]; ok {
		return r.stat, r.err
	}
	if err := tarfs.CheckName(rel); err != nil {
		return container.PathStat{}, err
	}
	res, err := c.d.cli.ContainerStatPath(ctx, c.container, client.ContainerStatPathOptions{Path: path.Join(runtime.WorkspaceDir, rel)})
	if err != nil {
		err = engineErr(err, "stat %q", rel)
		var classed *errdefs.Error
		if !errors.As(err, &classed) && ctx.Err() == nil {
			err = c.why(ctx, rel, err)
		}
	}
	c.seen[rel] = statResult{res.Stat, err}
	return res.Stat, err
}

// why asks the engine again about rel, which a stat failed on with err: a
// stat is a HEAD request, whose failure carries no message, while the
// same path's archive request says why (a symlink loop, for one).
func (c *pathChecker) why(ctx context.Context, rel string, err error) error {
	res, gerr := c.d.cli.CopyFromContainer(ctx, c.container, client.CopyFromContainerOptions{SourcePath: path.Join(runtime.WorkspaceDir, rel)})
	if gerr == nil {
		res.Content.Close()
		return err
	}
	return pathErr(rel, engineErr(gerr, "stat %q", rel))
}

// checkParents makes sure that no existing component of rel before the last
// is a symlink leading outside the workspace. Missing components are fine.
func (c *pathChecker) checkParents(ctx context.Context, rel string) error {
	parts := strings.Split(rel, "/")
	for i := 1; i < len(parts); i++ {
		prefix := strings.Join(parts[:i], "/")
		st, err := c.lstat(ctx, prefix)
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if st.Mode&os.ModeSymlink != 0 && !inWorkspace(path.Clean(st.LinkTarget)) {
			return runtime.EscapeError(rel)
		}
		if st.Mode&os.ModeSymlink == 0 && !st.Mode.IsDir() {
			return runtime.NotADirectoryError(prefix)
		}
	}
	return nil
}

// resolve returns the stat of rel, following a final symlink as long as it
// stays inside the workspace. errdefs.ErrNotFound if missing, "path_escape"
// if it or a parent leads outside.
func (d *Driver) resolve(ctx context.Context, name, rel string) (container.PathStat, error) {
	c := d.newPathChecker(name)
	if err := c.checkParents(ctx, rel); err != nil {
		return container.PathStat{}, err
	}
	st, err := c.lstat(ctx, rel)
	if err != nil {
		return st, err
	}
	if st.Mode&os.ModeSymlink == 0 {
		return st, nil
	}
	target := path.Clean(st.LinkTarget)
	if !inWorkspace(target) {
		return st, runtime.EscapeError(rel)
	}
	return c.lstat(ctx, strings.TrimPrefix(strings.TrimPrefix(target, runtime.WorkspaceDir), "/"))
}

// CopyOut returns a tar stream of path, with entries named relative to its
// parent ("src/", "src/main.go"); the workspace root itself is archived as
// "./". A final symlink is archived as a symlink. Errors:
// errdefs.ErrNotFound (no workspace or no such path), "path_escape".
func (d *Driver) CopyOut(ctx context.Context, id, p string) (io.ReadCloser, error) {
	if err := checkID(id); err != nil {
		return nil, errdefs.NotFound("workspace %s not found", id)
	}
	rel, err := runtime.CleanPath(p)
	if err != nil {
		return nil, err
	}
	name := d.objectName(id)
	if rel != "" {
		c := d.newPathChecker(name)
		if err := c.checkParents(ctx, rel); err != nil {
			if errdefs.Code(err) == "not_a_directory" {
				// Under a file nothing exists to read.
				return nil, errdefs.NotFound("%q: no such file or directory", p)
			}
			return nil, err
		}
		st, err := c.lstat(ctx, rel)
		if err == nil && st.Mode&(os.ModeNamedPipe|os.ModeSocket|os.ModeDevice|os.ModeCharDevice) != 0 {
			return nil, runtime.SpecialFileError(p)
		}
		if err != nil {
			if errors.Is(err, errdefs.ErrNotFound) {
				if _, ierr := d.cli.ContainerInspect(ctx, name, client.ContainerInspectOptions{}); ierr != nil {
					return nil, engineErr(ierr, "copy out of workspace %s", id)
				}
				return nil, errdefs.NotFound("%q not found in workspace %s", p, id)
			}
			return nil, err
		}
	}
	res, err := d.cli.CopyFromContainer(ctx, name, client.CopyFromContainerOptions{SourcePath: path.Join(runtime.WorkspaceDir, rel)})
	if err != nil {
		return nil, pathErr(p, engineErr(err, "copy %q out of workspace %s", p, id))
	}
	if rel != "" {
		return res.Content, nil
	}
	// The engine names the root's entries "workspace/...": rename them "./...".
	pr, pw := io.Pipe()
	go func() {
		err := renameEntries(pw, res.Content, path.Base(runtime.WorkspaceDir))
		res.Content.Close()
		pw.CloseWithError(err)
	}()
	return pr, nil
}

// renameEntries copies a tar stream, replacing the leading directory from
// of every entry name with ".".
func renameEntries(w io.Writer, r io.Reader, from string) error {
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return tw.Close()
		}
		if err != nil {
			return err
		}
		h.Name = renameEntry(h.Name, from)
		if h.Typeflag == tar.TypeLink {
			h.Linkname = renameEntry(h.Linkname, from)
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
}

func renameEntry(name, from string) string {
	switch {
	case name == from || name == from+"/":
		return "./"
	case strings.HasPrefix(name, from+"/"):
		return "./" + strings.TrimPrefix(name, from+"/")
	}
	return name
}

// CopyIn extracts a tar stream into dir (created if missing). Entries are
// checked as they are read, before anything is written: an entry with an
// absolute or climbing name, a hard link leading outside, or an entry that
// would be written through a symlink leading outside the workspace (one that
// exists, or one made earlier in the same stream) fails the whole call with
// "path_escape" and writes nothing. Symlinks themselves may point anywhere:
// only using them to leave the workspace is refused. Errors also:
// errdefs.ErrNotFound (no workspace), errdefs.ErrInvalidArgument (a
// malformed tar, device files, or dir is a file).
func (d *Driver) CopyIn(ctx context.Context, id, dir string, r io.Reader) error {
	if err := checkID(id); err != nil {
		return errdefs.NotFound("workspace %s not found", id)
	}
	rel, err := runtime.CleanPath(dir)
	if err != nil {
		return err
	}
	name := d.objectName(id)
	if _, err := d.cli.ContainerInspect(ctx, name, client.ContainerInspectOptions{}); err != nil {
		return engineErr(err, "copy into workspace %s", id)
	}
	c := d.newPathChecker(name)
	if rel != "" {
		if err := c.checkParents(ctx, rel+"/x"); err != nil {
			return err
		}
		if st, err := c.lstat(ctx, rel); err == nil && !st.Mode.IsDir() && st.Mode&os.ModeSymlink == 0 {
			return errdefs.Invalid("not_a_directory", "%q is not a directory", dir)
		}
	}
	spool, done, err := d.newSpool()
	if err != nil {
		return fmt.Errorf("copy into workspace %s: %w", id, err)
	}
	defer done()
	if err := d.checkTar(ctx, c, rel, r, spool); err != nil {
		return spoolErr(dir, err)
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("copy into workspace %s: spool: %w", id, err)
	}
	// The checked stream names entries from the container's root
	// ("workspace/dir/..."): the engine's own check on symlinks is then
	// relative to the root, so links that point out (allowed to exist) can
	// be made; ours above is the one that guards the workspace.
	_, err = d.cli.CopyToContainer(ctx, name, client.CopyToContainerOptions{DestinationPath: "/", Content: spool})
	if err != nil {
		return pathErr(dir, engineErr(err, "copy into %q of workspace %s", dir, id))
	}
	return nil
}

// WriteFile implements runtime.FileWriter. The engine's archive API needs
// a tar whose header holds the file's length, so the body is spooled first
// (see spoolDir) and sent only once complete: a body cut short reaches the
// engine not at all, and the file at p is left as it was.
func (d *Driver) WriteFile(ctx context.Context, id, p string, r io.Reader, mode fs.FileMode) (int64, error) {
	rel, err := runtime.CleanPath(p)
	if err != nil {
		return 0, err
	}
	if rel == "" {
		return 0, errdefs.Invalid("invalid_path", "a file path is required")
	}
	spool, done, err := d.newSpool()
	if err != nil {
		return 0, fmt.Errorf("write in workspace %s: %w", id, err)
	}
	defer done()
	n, err := io.Copy(spool, r)
	if err != nil {
		return 0, spoolErr(p, err)
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return 0, fmt.Errorf("write in workspace %s: %w", id, err)
	}
	hdr := &tar.Header{Name: path.Base(rel), Typeflag: tar.TypeReg, Size: n, Mode: int64(mode.Perm()), ModTime: time.Now()}
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.WriteHeader(hdr)
		if err == nil {
			_, err = io.Copy(tw, io.LimitReader(spool, n))
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	err = d.CopyIn(ctx, id, path.Dir("/" + rel)[1:], pr)
	pr.CloseWithError(err)
	if err != nil {
		return 0, err
	}
	return n, nil
}

// spoolDir prepares the directory where uploads are spooled while they
// are checked, before the engine extracts them: the engine's archive API
// takes a whole tar, and extracts in place, so nothing may reach it until
// the upload is complete and every entry has passed the path checks. It is
// dataDir/docker-spool, swept of what a killed server left; without a data
// directory (an embedding caller's choice) the system's temporary
// directory. Spools are never in a workspace: the engine's volumes are
// reachable only through the engine.
func spoolDir(dataDir string) (string, error) {
	if dataDir == "" {
		return os.TempDir(), nil
	}
	dir := filepath.Join(dataDir, "docker-spool")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("docker: spool directory: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", fmt.Errorf("docker: spool directory: %w", err)
	}
	defer root.Close()
	tarfs.Sweep(root, "")
	return dir, nil
}

// newSpool creates a spool file; done closes and removes it.
func (d *Driver) newSpool() (*os.File, func(), error) {
	root, err := os.OpenRoot(d.spool)
	if err != nil {
		return nil, nil, fmt.Errorf("spool: %w", err)
	}
	defer root.Close()
	f, name, err := tarfs.CreateTemp(root, "")
	if err != nil {
		return nil, nil, fmt.Errorf("spool: %w", tarfs.Err("spool", err))
	}
	full := filepath.Join(d.spool, name)
	return f, func() { f.Close(); os.Remove(full) }, nil
}

// spoolErr classes an error met while spooling an upload for p: a full
// disk is errdefs.ErrInsufficientStorage, others are kept.
func spoolErr(p string, err error) error {
	var classed *errdefs.Error
	if errors.As(err, &classed) {
		return err
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return tarfs.Err(p, err)
	}
	return err
}

// pathErr classes the engine's answers about a path that the engine
// reports only as text: a name too long, a symlink loop, a full disk.
func pathErr(p string, err error) error {
	if err == nil {
		return nil
	}
	var classed *errdefs.Error
	if errors.As(err, &classed) && classed.Code != "invalid_argument" {
		return err
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "file name too long"):
		return tarfs.Err(p, syscall.ENAMETOOLONG)
	case strings.Contains(msg, "too many levels of symbolic links"), strings.Contains(msg, "too many links"):
		return tarfs.Err(p, syscall.ELOOP)
	case strings.Contains(msg, "no space left on device"), strings.Contains(msg, "disk quota exceeded"):
		return tarfs.Err(p, syscall.ENOSPC)
	case strings.Contains(msg, "cannot overwrite directory"):
		return errdefs.New(errdefs.ErrConflict, "conflict", "%s: a directory is in the way", p)
	}
	return err
}

// checkTar reads the stream, refuses it if an entry escapes, and writes it
// to w with entries renamed relative to the container's root. Parents
// missing from the stream get directory entries, so they are created.
func (d *Driver) checkTar(ctx context.Context, c *pathChecker, dir string, r io.Reader, w io.Writer) error {
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	root := strings.TrimPrefix(runtime.WorkspaceDir, "/")
	links := map[string]string{} // symlinks made by the stream: path → absolute target
	made := map[string]bool{}    // directories written to w
	// through checks that the path p (relative to the workspace) can be
	// written without passing through a symlink that leads out.
	var through func(p string, depth int) error
	through = func(p string, depth int) error {
		if depth > 40 {
			return runtime.EscapeError(p)
		}
		parts := strings.Split(p, "/")
		for i := 1; i < len(parts); i++ {
			prefix := strings.Join(parts[:i], "/")
			if target, ok := links[prefix]; ok {
				if !inWorkspace(target) {
					return runtime.EscapeError(p)
				}
				t := strings.TrimPrefix(strings.TrimPrefix(target, runtime.WorkspaceDir), "/")
				rest := strings.Join(parts[i:], "/")
				return through(path.Join(t, rest), depth+1)
			}
			if err := c.checkParents(ctx, prefix+"/x"); err != nil {
				return runtime.EscapeError(p)
			}
		}
		return nil
	}
	mkdirs := func(p string) error {
		parts := strings.Split(p, "/")
		for i := 1; i < len(parts); i++ {
			prefix := strings.Join(parts[:i], "/")
			if made[prefix] || links[prefix] != "" {
				continue
			}
			if _, err := c.lstat(ctx, prefix); err == nil {
				continue
			}
			made[prefix] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: root + "/" + prefix + "/", Mode: 0o755, ModTime: time.Now()}); err != nil {
				return err
			}
		}
		return nil
	}
	if dir != "" {
		if err := mkdirs(dir + "/x"); err != nil {
			return fmt.Errorf("spool tar: %w", err)
		}
	}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return errdefs.Invalid("invalid_tar", "read tar: %v", err)
		}
		name, err := entryName(h.Name)
		if err != nil {
			return err
		}
		if name == "" {
			continue
		}
		full := path.Join(dir, name)
		if err := tarfs.CheckName(full); err != nil {
			return err
		}
		if err := through(full, 0); err != nil {
			return runtime.EscapeError(h.Name)
		}
		switch h.Typeflag {
		case tar.TypeSymlink:
			target := h.Linkname
			if !path.IsAbs(target) {
				target = path.Join(runtime.WorkspaceDir, path.Dir(full), target)
			}
			links[full] = path.Clean(target)
		case tar.TypeLink:
			ln, err := entryName(h.Linkname)
			if err != nil || ln == "" {
				return runtime.EscapeError(h.Name)
			}
			ln = path.Join(dir, ln)
			if err := through(ln, 0); err != nil {
				return runtime.EscapeError(h.Name)
			}
			h.Linkname = root + "/" + ln
		case tar.TypeReg, tar.TypeDir:
		case tar.TypeFifo, tar.TypeChar, tar.TypeBlock:
			return runtime.SpecialFileError(h.Name)
		default:
			return errdefs.Invalid("invalid_tar", "tar entry %q: type %q is not allowed", h.Name, string(h.Typeflag))
		}
		if err := mkdirs(full); err != nil {
			return fmt.Errorf("spool tar: %w", err)
		}
		h.Name = root + "/" + full
		if h.Typeflag == tar.TypeDir {
			h.Name += "/"
			made[full] = true
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("spool tar: %w", err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
				return tarfs.Err(h.Name, err) // the spool's disk, not the tar
			}
			var classed *errdefs.Error
			if errors.As(err, &classed) {
				return err // e.g. the upload limit
			}
			return errdefs.Invalid("invalid_tar", "read tar entry %q: %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("spool tar: %w", err)
	}
	return nil
}

// entryName cleans a tar entry name; absolute or climbing names are refused.
func entryName(n string) (string, error) {
	if n == "" {
		return "", errdefs.Invalid("invalid_tar", "tar entry with an empty name")
	}
	if path.IsAbs(n) || strings.ContainsRune(n, 0) {
		return "", runtime.EscapeError(n)
	}
	for _, part := range strings.Split(n, "/") {
		if part == ".." {
			return "", runtime.EscapeError(n)
		}
	}
	c := path.Clean(n)
	if c == "." {
		return "", nil
	}
	return c, nil
}
