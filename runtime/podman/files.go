package podman

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
	"syscall"

	"github.com/containers/podman/v5/pkg/bindings/containers"
	"github.com/containers/podman/v5/pkg/bindings/volumes"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/internal/tarfs"
)

// maxLinkHops bounds symlink resolution, as the kernel's ELOOP does.
const maxLinkHops = 40

// resolver resolves workspace paths through the symlinks that exist in the
// workspace and those that a tar being extracted adds, refusing any that
// leads outside the workspace. Paths are relative to the workspace root,
// cleaned, "" for the root.
//
// It reads the workspace's volume on the host (the service is local: the
// driver talks to it over a unix socket), through an os.Root so that
// nothing outside the volume is ever touched. The archive API cannot do
// this: it reports symlink targets already evaluated inside the volume, as
// if the volume were the root, which hides where a link leads in the
// container.
type resolver struct {
	root  *os.Root
	links map[string]string // symlinks added by the tar: path → target
	cache map[string]stat
}

// stat is what one path in the workspace is.
type stat struct {
	exists bool
	isDir  bool
	link   string // the symlink's target as stored, "" if not a symlink
	info   os.FileInfo
}

// newResolver opens the workspace's volume. The caller closes the
// resolver.
func (d *Driver) newResolver(ctx context.Context, id string) (*resolver, error) {
	dir, err := d.volumeDir(ctx, id)
	if err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open workspace volume %s: %w", dir, err)
	}
	if _, done := swept.LoadOrStore(dir, true); !done {
		if n := tarfs.SweepAll(ctx, root); n > 0 {
			d.log.Info("removed temporaries left by an interrupted upload", "workspace_id", id, "count", n)
		}
	}
	return &resolver{root: root, links: map[string]string{}, cache: map[string]stat{}}, nil
}

// swept holds the volumes whose whole tree this process has swept of the
// temporaries a killed server left (see tarfs.SweepAll): the first file
// operation on a workspace after start-up does it.
var swept sync.Map

// owner is who owns the files the server writes in the volume: the owner
// of the volume's root, which is the container's root user as the host
// sees it (uid 0 for a rootful service, the service user's for a rootless
// one), as if the service had extracted them.
func (r *resolver) owner() (tarfs.Owner, error) {
	fi, err := r.root.Lstat(".")
	if err != nil {
		return tarfs.Owner{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return tarfs.Owner{}, fmt.Errorf("no owner for the workspace's volume")
	}
	if int(st.Uid) == os.Geteuid() && int(st.Gid) == os.Getegid() {
		return tarfs.Owner{}, nil
	}
	return tarfs.Owner{Chown: true, UID: int(st.Uid), GID: int(st.Gid)}, nil
}

func (r *resolver) Close() error { return r.root.Close() }

// free returns the bytes free for the workspace's files.
func (r *resolver) free() (int64, bool) {
	f, err := r.root.Open(".")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	var st syscall.Statfs_t
	if syscall.Fstatfs(int(f.Fd()), &st) != nil {
		return 0, false
	}
	return int64(st.Bavail) * st.Bsize, true
}

// volumeDir returns the host directory of the workspace's volume.
func (d *Driver) volumeDir(ctx context.Context, id string) (string, error) {
	if v, ok := d.volumeDirs.Load(id); ok {
		return v.(string), nil
	}
	v, err := volumes.Inspect(d.ctx(ctx), volumeName(id), nil)
	if err != nil {
		err = mapErr(err)
		if errors.Is(err, errdefs.ErrNotFound) {
			return "", errdefs.NotFound("workspace %s not found", id)
		}
		return "", fmt.Errorf("inspect volume: %w", err)
	}
	if v.Mountpoint == "" {
		return "", errdefs.New(errdefs.ErrFailedPrecondition, "volume_not_local", "volume %s has no local mount point", v.Name)
	}
	d.volumeDirs.Store(id, v.Mountpoint)
	return v.Mountpoint, nil
}

// stat looks at rel without following a final symlink.
func (r *resolver) stat(rel string) (stat, error) {
	if s, ok := r.cache[rel]; ok {
		return s, nil
	}
	if t, ok := r.links[rel]; ok {
		return stat{exists: true, link: t}, nil
	}
	name := rel
	if name == "" {
		name = "."
	}
	var s stat
	fi, err := r.root.Lstat(name)
	switch {
	case err == nil:
		s = stat{exists: true, isDir: fi.IsDir(), info: fi}
		if fi.Mode()&os.ModeSymlink != 0 {
			if s.link, err = r.root.Readlink(name); err != nil {
				return stat{}, fmt.Errorf("read link %s: %w", rel, err)
			}
		}
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
	default:
		return stat{}, tarfs.Err(rel, err)
	}
	r.cache[rel] = s
	return s, nil
}

// resolve follows every symlink in rel, the last component included when
// followLast is set, and returns the resulting workspace-relative path. A
// path that leads outside the workspace fails with runtime.EscapeError.
func (r *resolver) resolve(rel string, followLast bool) (string, error) {
	hops := 0
	var walk func(done string, rest []string) (string, error)
	walk = func(done string, rest []string) (string, error) {
		for i, part := range rest {
			next := path.Join(done, part)
			if i == len(rest)-1 && !followLast {
				return next, nil
			}
			s, err := r.stat(next)
			if err != nil {
				return "", err
			}
			if !s.exists {
				// Nothing further exists; the rest will be created
				// as plain directories and files.
				return path.Join(append([]string{next}, rest[i+1:]...)...), nil
			}
			if s.link == "" {
				done = next
				continue
			}
			if hops++; hops > maxLinkHops {
				return "", errdefs.Invalid("symlink_loop", "%s: too many levels of symbolic links", rel)
			}
			target, ok := linkTarget(done, s.link)
			if !ok {
				return "", runtime.EscapeError(rel)
			}
			resolved, err := walk("", split(target))
			if err != nil {
				return "", err
			}
			done = resolved
		}
		return done, nil
	}
	return walk("", split(rel))
}

// linkTarget returns where a symlink in directory dir (workspace-relative)
// pointing at target leads, workspace-relative, and false if that is
// outside the workspace. Absolute targets are container paths.
func linkTarget(dir, target string) (string, bool) {
	var abs string
	if path.IsAbs(target) {
		abs = path.Clean(target)
	} else {
		abs = path.Join(runtime.WorkspaceDir, dir, target)
	}
	if abs == runtime.WorkspaceDir {
		return "", true
	}
	rel, ok := strings.CutPrefix(abs, runtime.WorkspaceDir+"/")
	if !ok {
		return "", false
	}
	return rel, true
}

func split(p string) []string {
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

// CopyIn implements runtime.Runtime. The tar is checked entirely before
// anything is extracted (it is spooled to a temporary inside the
// workspace's volume, so it counts against its disk limit): an entry
// whose path, or a symlink whose target, leads outside the workspace fails
// the whole call with "path_escape" and writes nothing. It is then
// extracted on the host with tarfs, under an os.Root on the volume, each
// file whole or absent, owned by the container's root user.
func (d *Driver) CopyIn(ctx context.Context, id, dir string, r io.Reader) error {
	dir, err := runtime.CleanPath(dir)
	if err != nil {
		return fmt.Errorf("copy into %s: %w", id, err)
	}
	if _, err := d.inspect(ctx, id); err != nil {
		return fmt.Errorf("copy into %s: %w", id, err)
	}
	res, err := d.newResolver(ctx, id)
	if err != nil {
		return fmt.Errorf("copy into %s: %w", id, err)
	}
	defer res.Close()
	base, err := res.resolve(dir, true)
	if err != nil {
		return fmt.Errorf("copy into %s: %w", id, err)
	}
	if s, err := res.stat(base); err != nil {
		return fmt.Errorf("copy into %s: %w", id, err)
	} else if s.exists && !s.isDir {
		return errdefs.Invalid("not_a_directory", "copy into %s: %q is not a directory", id, dir)
	}
	owner, err := res.owner()
	if err != nil {
		return fmt.Errorf("copy into %s: %w", id, err)
	}
	spool, name, err := tarfs.CreateTemp(res.root, "")
	if err != nil {
		return fmt.Errorf("copy into %s: %w", id, tarfs.Err(dir, err))
	}
	defer res.root.Remove(name)
	defer spool.Close()
	size, err := d.rewriteTar(res, base, r, spool)
	if err != nil {
		return fmt.Errorf("copy into %s: %w", id, tarfs.Err(dir, err))
	}
	if free, ok := res.free(); ok && size > free {
		return errdefs.New(errdefs.ErrInsufficientStorage, "insufficient_storage", "copy into %s: %d bytes of files do not fit in the %d bytes free on the workspace's disk", id, size, free)
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("copy into %s: %w", id, err)
	}
	// The names were resolved above: they pass through no symlink. The
	// os.Root still refuses any that a command swapped in meanwhile.
	if err := tarfs.Extract(ctx, res.root, "", spool, owner); err != nil {
		return fmt.Errorf("copy into %s: %w", id, err)
	}
	return nil
}

// WriteFile implements runtime.FileWriter: p's directories are resolved
// as for CopyIn, then the body streams into a temporary next to the file
// in the volume (counted against its disk limit) and is renamed into place
// once complete (tarfs.WriteFile).
func (d *Driver) WriteFile(ctx context.Context, id, p string, r io.Reader, mode fs.FileMode) (int64, error) {
	rel, err := runtime.CleanPath(p)
	if err != nil {
		return 0, fmt.Errorf("write in %s: %w", id, err)
	}
	if rel == "" {
		return 0, errdefs.Invalid("invalid_path", "a file path is required")
	}
	if _, err := d.inspect(ctx, id); err != nil {
		return 0, fmt.Errorf("write in %s: %w", id, err)
	}
	res, err := d.newResolver(ctx, id)
	if err != nil {
		return 0, fmt.Errorf("write in %s: %w", id, err)
	}
	defer res.Close()
	parent, err := res.resolve(path.Dir(rel), true)
	if err != nil {
		return 0, fmt.Errorf("write in %s: %w", id, err)
	}
	owner, err := res.owner()
	if err != nil {
		return 0, fmt.Errorf("write in %s: %w", id, err)
	}
	n, err := tarfs.WriteFile(ctx, res.root, path.Join(parent, path.Base(rel)), r, mode, owner)
	if err != nil {
		return n, fmt.Errorf("write in %s: %w", id, err)
	}
	return n, nil
}

// rewriteTar checks every entry of in and writes it to out named relative
// to the workspace root (prefixed with base), preceded by entries for the
// directories of base that do not exist yet.
// It returns the bytes of file content written.
func (d *Driver) rewriteTar(res *resolver, base string, in io.Reader, out io.Writer) (int64, error) {
	tw := tar.NewWriter(out)
	var size int64
	// Create base's missing directories.
	done := ""
	for _, part := range split(base) {
		done = path.Join(done, part)
		s, err := res.stat(done)
		if err != nil {
			return 0, err
		}
		if !s.exists {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: done + "/", Mode: 0o755}); err != nil {
				return 0, err
			}
			res.cache[done] = stat{exists: true, isDir: true}
		}
	}
	tr := tar.NewReader(in)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, errdefs.Invalid("invalid_tar", "read tar: %v", err)
		}
		name, err := runtime.CleanPath(h.Name)
		if err != nil || path.IsAbs(h.Name) {
			return 0, runtime.EscapeError(h.Name)
		}
		if name == "" {
			continue // the directory itself
		}
		// The entry's parent must resolve inside the workspace. The
		// entry is then named by where it resolves to: the service
		// extracts as if the volume were the root, so it must not meet
		// a symlink on the way.
		full := path.Join(base, name)
		parent, err := res.resolve(path.Dir(full), true)
		if err != nil {
			return 0, err
		}
		full = path.Join(parent, path.Base(full))
		switch h.Typeflag {
		case tar.TypeSymlink:
			// A link may point anywhere; only paths through it are
			// resolved and refused if they leave.
			res.links[full] = h.Linkname
			delete(res.cache, full)
		case tar.TypeLink:
			// A hard link's target is another name in the stream's
			// tree, reached without symlinks that lead elsewhere.
			target, err := runtime.CleanPath(h.Linkname)
			if err != nil || path.IsAbs(h.Linkname) || target == "" {
				return 0, runtime.EscapeError(h.Name)
			}
			h.Linkname = path.Join(base, target)
			if r, err := res.resolve(h.Linkname, false); err != nil {
				return 0, err
			} else if r != h.Linkname {
				return 0, runtime.EscapeError(h.Name)
			}
		case tar.TypeDir:
			res.cache[full] = stat{exists: true, isDir: true}
		case tar.TypeReg:
			res.cache[full] = stat{exists: true}
			size += h.Size
		case tar.TypeXGlobalHeader:
			continue
		case tar.TypeFifo, tar.TypeChar, tar.TypeBlock:
			return 0, runtime.SpecialFileError(h.Name)
		default:
			return 0, errdefs.Invalid("invalid_tar", "tar entry %q has an unsupported type %q", h.Name, string(h.Typeflag))
		}
		h.Name = full
		if h.Typeflag == tar.TypeDir {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return 0, err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
				return 0, tarfs.Err(h.Name, err) // the spool's disk, not the tar
			}
			var classed *errdefs.Error
			if errors.As(err, &classed) {
				return 0, err // e.g. the upload limit
			}
			return 0, errdefs.Invalid("invalid_tar", "read tar entry %q: %v", h.Name, err)
		}
	}
	return size, tw.Close()
}

// CopyOut implements runtime.Runtime. The path's directories are resolved
// inside the workspace (a symlink leading outside fails with
// "path_escape"); the path itself, if a symlink, is archived as one.
func (d *Driver) CopyOut(ctx context.Context, id, p string) (io.ReadCloser, error) {
	rel, err := runtime.CleanPath(p)
	if err != nil {
		return nil, fmt.Errorf("copy from %s: %w", id, err)
	}
	if _, err := d.inspect(ctx, id); err != nil {
		return nil, fmt.Errorf("copy from %s: %w", id, err)
	}
	res, err := d.newResolver(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("copy from %s: %w", id, err)
	}
	defer res.Close()
	resolved, err := res.resolve(rel, false)
	if err != nil {
		return nil, fmt.Errorf("copy from %s: %w", id, err)
	}
	st, err := res.stat(resolved)
	if err != nil {
		return nil, fmt.Errorf("copy from %s: %w", id, err)
	}
	if !st.exists {
		return nil, errdefs.NotFound("copy from %s: %q does not exist", id, p)
	}
	if st.info != nil && st.info.Mode()&(fs.ModeNamedPipe|fs.ModeSocket|fs.ModeDevice|fs.ModeCharDevice) != 0 {
		return nil, runtime.SpecialFileError(p)
	}
	if st.link != "" {
		// The service would follow it; archive the link itself.
		return symlinkTar(path.Base("/"+resolved), st)
	}
	pr, pw := io.Pipe()
	copyFn, err := containers.CopyToArchive(d.ctx(ctx), containerName(id), path.Join(runtime.WorkspaceDir, resolved), pw)
	if err != nil {
		return nil, fmt.Errorf("copy from %s: %w", id, mapErr(err))
	}
	go func() {
		err := copyFn()
		if err != nil {
			err = fmt.Errorf("copy from %s: %w", id, mapErr(err))
		}
		pw.CloseWithError(err)
	}()
	// The service names the root's entries after the mount point;
	// Corral names them "./...", as the other drivers do.
	from := ""
	if resolved == "" {
		from = path.Base(runtime.WorkspaceDir) + "/"
	}
	out, outW := io.Pipe()
	go func() {
		err := normalizeTar(pr, outW, from, "./")
		pr.CloseWithError(err) // stop the service's stream if we stopped early
		outW.CloseWithError(err)
	}()
	return out, nil
}

// normalizeTar copies a tar stream, naming directories with a trailing
// slash as the rest of Corral does (the service omits it), and renaming
// the prefix from (if not "") of names and hard links' targets to to.
func normalizeTar(in io.Reader, out io.Writer, from, to string) error {
	tr := tar.NewReader(in)
	tw := tar.NewWriter(out)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return tw.Close()
		}
		if err != nil {
			return err
		}
		if h.Typeflag == tar.TypeDir && !strings.HasSuffix(h.Name, "/") {
			h.Name += "/"
		}
		if from != "" {
			if rest, ok := strings.CutPrefix(h.Name, from); ok {
				h.Name = to + rest
			}
			if rest, ok := strings.CutPrefix(h.Linkname, from); ok && h.Typeflag == tar.TypeLink {
				h.Linkname = to + rest
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
}

// symlinkTar is a tar stream holding one symlink.
func symlinkTar(name string, st stat) (io.ReadCloser, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	h := &tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: st.link, Mode: 0o777}
	if st.info != nil {
		h.ModTime = st.info.ModTime()
	}
	if err := tw.WriteHeader(h); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return io.NopCloser(&buf), nil
}
