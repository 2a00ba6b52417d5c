package podman

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/containers/podman/v5/pkg/bindings/containers"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
)

// maxLinkHops bounds symlink resolution, as the kernel's ELOOP does.
const maxLinkHops = 40

// resolver resolves workspace paths through the symlinks that exist in the
// container and those that a tar being extracted adds, refusing any that
// leads outside the workspace. Paths are relative to the workspace root,
// cleaned, "" for the root.
type resolver struct {
	d     *Driver
	ctx   context.Context
	name  string            // container name
	links map[string]string // symlinks added by the tar: path → target
	cache map[string]stat
}

// stat is what the service says about one path in the container.
type stat struct {
	exists bool
	isDir  bool
	link   string // the symlink's target as stored, "" if not a symlink
}

func (d *Driver) newResolver(ctx context.Context, id string) *resolver {
	return &resolver{d: d, ctx: ctx, name: containerName(id), links: map[string]string{}, cache: map[string]stat{}}
}

// stat asks the service about rel, without following a final symlink.
func (r *resolver) stat(rel string) (stat, error) {
	if s, ok := r.cache[rel]; ok {
		return s, nil
	}
	if t, ok := r.links[rel]; ok {
		return stat{exists: true, link: t}, nil
	}
	rep, err := containers.Stat(r.d.ctx(r.ctx), r.name, path.Join(runtime.WorkspaceDir, rel))
	var s stat
	switch {
	case err == nil:
		s.exists = true
		s.isDir = rep.IsDir
		if rep.Mode&os.ModeSymlink != 0 {
			s.link = rep.LinkTarget
			if s.link == "" {
				s.link = "/" // unknown target: treat as leaving
			}
		}
	case errors.Is(mapErr(err), errdefs.ErrNotFound):
	default:
		return stat{}, fmt.Errorf("stat %s: %w", rel, mapErr(err))
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
				return "", errdefs.Invalid("path_loop", "too many symlinks in %q", rel)
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
	return rel, ok
}

func split(p string) []string {
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

// CopyIn implements runtime.Runtime. The tar is checked entirely before
// anything is extracted (it is spooled to a temporary file): an entry
// whose path, or a symlink whose target, leads outside the workspace fails
// the whole call with "path_escape". Entries are extracted as the
// container's root user.
func (d *Driver) CopyIn(ctx context.Context, id, dir string, r io.Reader) error {
	dir, err := runtime.CleanPath(dir)
	if err != nil {
		return fmt.Errorf("copy into %s: %w", id, err)
	}
	if _, err := d.inspect(ctx, id); err != nil {
		return fmt.Errorf("copy into %s: %w", id, err)
	}
	res := d.newResolver(ctx, id)
	base, err := res.resolve(dir, true)
	if err != nil {
		return fmt.Errorf("copy into %s: %w", id, err)
	}
	if s, err := res.stat(base); err != nil {
		return fmt.Errorf("copy into %s: %w", id, err)
	} else if s.exists && !s.isDir {
		return errdefs.Invalid("not_a_directory", "copy into %s: %q is not a directory", id, dir)
	}
	spool, err := os.CreateTemp("", "corral-podman-copyin-")
	if err != nil {
		return fmt.Errorf("copy into %s: %w", id, err)
	}
	defer os.Remove(spool.Name())
	defer spool.Close()
	if err := d.rewriteTar(res, base, r, spool); err != nil {
		return fmt.Errorf("copy into %s: %w", id, err)
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("copy into %s: %w", id, err)
	}
	copyFn, err := containers.CopyFromArchive(d.ctx(ctx), containerName(id), runtime.WorkspaceDir, spool)
	if err == nil {
		err = copyFn()
	}
	if err != nil {
		return fmt.Errorf("copy into %s: %w", id, mapErr(err))
	}
	return nil
}

// rewriteTar checks every entry of in and writes it to out named relative
// to the workspace root (prefixed with base), preceded by entries for the
// directories of base that do not exist yet.
func (d *Driver) rewriteTar(res *resolver, base string, in io.Reader, out io.Writer) error {
	tw := tar.NewWriter(out)
	// Create base's missing directories.
	done := ""
	for _, part := range split(base) {
		done = path.Join(done, part)
		s, err := res.stat(done)
		if err != nil {
			return err
		}
		if !s.exists {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: done + "/", Mode: 0o755}); err != nil {
				return err
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
			return errdefs.Invalid("invalid_tar", "read tar: %v", err)
		}
		name, err := runtime.CleanPath(h.Name)
		if err != nil {
			return runtime.EscapeError(h.Name)
		}
		if name == "" {
			continue // the directory itself
		}
		full := path.Join(base, name)
		// The entry's parent must resolve inside the workspace, and to
		// where it seems to be: extraction does not follow links to
		// other places.
		parent, err := res.resolve(path.Dir(full), true)
		if err != nil {
			return err
		}
		if parent != path.Dir(full) && !(parent == "" && path.Dir(full) == ".") {
			return runtime.EscapeError(h.Name)
		}
		switch h.Typeflag {
		case tar.TypeSymlink:
			if _, ok := linkTarget(path.Dir(full), h.Linkname); !ok {
				return runtime.EscapeError(h.Name)
			}
			res.links[full] = h.Linkname
			delete(res.cache, full)
		case tar.TypeLink:
			target, err := runtime.CleanPath(h.Linkname)
			if err != nil {
				return runtime.EscapeError(h.Name)
			}
			h.Linkname = path.Join(base, target)
		case tar.TypeDir:
			res.cache[full] = stat{exists: true, isDir: true}
		case tar.TypeReg, tar.TypeRegA:
			res.cache[full] = stat{exists: true}
		case tar.TypeXGlobalHeader:
			continue
		default:
			return errdefs.Invalid("invalid_tar", "tar entry %q has an unsupported type %q", h.Name, string(h.Typeflag))
		}
		h.Name = full
		if h.Typeflag == tar.TypeDir {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return errdefs.Invalid("invalid_tar", "read tar entry %q: %v", h.Name, err)
		}
	}
	return tw.Close()
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
	res := d.newResolver(ctx, id)
	resolved, err := res.resolve(rel, false)
	if err != nil {
		return nil, fmt.Errorf("copy from %s: %w", id, err)
	}
	if s, err := res.stat(resolved); err != nil {
		return nil, fmt.Errorf("copy from %s: %w", id, err)
	} else if !s.exists {
		return nil, errdefs.NotFound("copy from %s: %q does not exist", id, p)
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
	return pr, nil
}
