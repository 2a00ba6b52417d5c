package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/internal/tarfs"
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

// sweepAtStart removes, in the background, the upload temporaries a killed
// server left in every workspace whose files are reachable now. A stopped
// workspace with a disk of its own has its disk unmounted: it is swept when
// the disk is next mounted, by its first file operation (openRoot).
// Temporaries are never listed or archived in the meantime.
func (d *Driver) sweepAtStart() {
	ctx, cancel := context.WithCancel(context.Background())
	d.stopSweep = cancel
	ents, err := os.ReadDir(d.wsRoot())
	if err != nil {
		return
	}
	d.sweeping.Add(1)
	go func() {
		defer d.sweeping.Done()
		for _, e := range ents {
			if ctx.Err() != nil {
				return
			}
			id := e.Name()
			m, err := d.loadMeta(id)
			if err != nil || (m.Disk && !isMountPoint(d.homeDir(id))) {
				continue
			}
			r, err := os.OpenRoot(d.homeDir(id))
			if err != nil {
				continue
			}
			if _, done := d.swept.LoadOrStore(d.homeDir(id), true); !done {
				if n := tarfs.SweepAll(ctx, r); n > 0 {
					d.log.Info("removed temporaries left by an interrupted upload", "workspace_id", id, "count", n)
				}
			}
			r.Close()
		}
	}()
}

// openRoot opens the workspace's home as an os.Root, sweeping it of stale
// temporaries the first time.
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
	if _, done := d.swept.LoadOrStore(d.homeDir(id), true); !done {
		if n := tarfs.SweepAll(ctx, r); n > 0 {
			d.log.Info("removed temporaries left by an interrupted upload", "workspace_id", id, "count", n)
		}
	}
	return r, nil
}

// fileErr classes an error from an os.Root operation on p.
func fileErr(p string, err error) error { return tarfs.Err(p, err) }

// owner is who owns the files the server writes in workspace m: its uid,
// under which its commands run, or the server's own when that is 0.
func owner(m *meta) tarfs.Owner {
	if m.UID == 0 {
		return tarfs.Owner{}
	}
	return tarfs.Owner{Chown: true, UID: int(m.UID), GID: int(m.UID)}
}

// CopyIn extracts a tar stream into dir (created if missing), as
// tarfs.Extract does: entries with absolute names or names that climb
// out, and entries that would be written through a symlink leading out,
// fail the call with "path_escape"; entries before the bad one stay
// written. Each file is whole or absent, even if the stream is cut.
func (d *Driver) CopyIn(ctx context.Context, id, dir string, r io.Reader) error {
	if _, err := runtime.CleanPath(dir); err != nil {
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
	return tarfs.Extract(ctx, root, dir, r, owner(m))
}

// WriteFile implements runtime.FileWriter with tarfs.WriteFile: the body
// streams into a temporary inside the workspace (so it counts against its
// disk limit) and is renamed into place once complete.
func (d *Driver) WriteFile(ctx context.Context, id, p string, r io.Reader, mode fs.FileMode) (int64, error) {
	if _, err := runtime.CleanPath(p); err != nil {
		return 0, err
	}
	root, err := d.openRoot(ctx, id)
	if err != nil {
		return 0, err
	}
	defer root.Close()
	m, err := d.loadMeta(id)
	if err != nil {
		return 0, err
	}
	return tarfs.WriteFile(ctx, root, p, r, mode, owner(m))
}

// CopyOut streams a tar of the file or directory at p (see tarfs.Archive).
func (d *Driver) CopyOut(ctx context.Context, id, p string) (io.ReadCloser, error) {
	if _, err := runtime.CleanPath(p); err != nil {
		return nil, err
	}
	root, err := d.openRoot(ctx, id)
	if err != nil {
		return nil, err
	}
	return tarfs.Archive(ctx, root, p)
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
