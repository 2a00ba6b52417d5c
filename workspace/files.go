package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/store"
)

// FileInfo describes a file in a workspace.
type FileInfo struct {
	Name       string    `json:"name"`
	Path       string    `json:"path"`
	Type       string    `json:"type"` // file, dir, symlink, other
	Size       int64     `json:"size"`
	Mode       string    `json:"mode"` // octal permission bits, e.g. "0644"
	ModTime    time.Time `json:"mtime"`
	LinkTarget string    `json:"link_target,omitempty"`
}

func infoOf(h *tar.Header, p string) FileInfo {
	fi := FileInfo{Name: path.Base(p), Path: p, Size: h.Size, Mode: fmt.Sprintf("%04o", h.Mode&0o7777), ModTime: h.ModTime.UTC()}
	if p == "" {
		fi.Name = "."
	}
	switch h.Typeflag {
	case tar.TypeDir:
		fi.Type, fi.Size = "dir", 0
	case tar.TypeReg:
		fi.Type = "file"
	case tar.TypeSymlink:
		fi.Type, fi.LinkTarget = "symlink", h.Linkname
	default:
		fi.Type = "other"
	}
	return fi
}

// usable returns the user's workspace if its files can be used: it must be
// running or stopped (files are there either way).
func (m *Manager) usable(ctx context.Context, userID, id string) (store.Workspace, stored, error) {
	row, err := m.db.GetWorkspace(ctx, userID, id)
	if err != nil {
		return row, stored{}, err
	}
	if row.State != StateRunning && row.State != StateStopped {
		return row, stored{}, errdefs.New(errdefs.ErrFailedPrecondition, "workspace_not_ready", "workspace %s is %s", id, row.State)
	}
	st, err := m.spec(row)
	return row, st, err
}

func (m *Manager) touch(id string) {
	m.mu.Lock()
	m.used[id] = time.Now()
	m.mu.Unlock()
}

// Entry is what Open found at a path: a file to read, or a directory's
// listing, or (for a symlink or special file) just its description.
type Entry struct {
	Info    FileInfo
	Content io.ReadCloser // regular files only; the caller closes it
	Entries []FileInfo    // directories only: the direct children
}

// Open looks at path in a user's workspace. Directories are listed one
// level deep. errdefs.ErrNotFound if the path does not exist;
// "path_escape" if it leads outside the workspace.
func (m *Manager) Open(ctx context.Context, userID, id, p string) (Entry, error) {
	clean, err := runtime.CleanPath(p)
	if err != nil {
		return Entry{}, err
	}
	if _, _, err := m.usable(ctx, userID, id); err != nil {
		return Entry{}, err
	}
	m.touch(id)
	rc, err := m.rt.CopyOut(ctx, id, clean)
	if err != nil {
		return Entry{}, err
	}
	tr := tar.NewReader(rc)
	first, err := tr.Next()
	if err != nil {
		rc.Close()
		return Entry{}, fmt.Errorf("read archive of %q: %w", clean, err)
	}
	e := Entry{Info: infoOf(first, clean)}
	switch first.Typeflag {
	case tar.TypeReg:
		e.Content = struct {
			io.Reader
			io.Closer
		}{tr, rc}
		return e, nil
	case tar.TypeDir:
		defer rc.Close()
		prefix := strings.TrimSuffix(path.Clean(first.Name), "/")
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return Entry{}, fmt.Errorf("read archive of %q: %w", clean, err)
			}
			rel := strings.TrimPrefix(path.Clean(h.Name), prefix+"/")
			if prefix == "." {
				rel = path.Clean(h.Name)
			}
			if rel == "" || rel == "." || strings.Contains(rel, "/") {
				continue
			}
			e.Entries = append(e.Entries, infoOf(h, path.Join(clean, rel)))
		}
		if e.Entries == nil {
			e.Entries = []FileInfo{}
		}
		return e, nil
	default:
		rc.Close()
		return e, nil
	}
}

// WriteFile stores data as the file at path, creating its parents.
func (m *Manager) WriteFile(ctx context.Context, userID, id, p string, data []byte) error {
	_, err := m.PutFile(ctx, userID, id, p, bytes.NewReader(data), int64(len(data)), 0)
	return err
}

// PutFile stores r (of size bytes, or -1 if unknown) as the file at path,
// creating its parent directories. The file is whole or absent: a body cut
// short leaves the previous file untouched (the drivers write to a
// temporary in the workspace and rename it). The workspace's upload limit
// applies: errdefs.ErrTooLarge past it. It returns the stored file's
// description.
func (m *Manager) PutFile(ctx context.Context, userID, id, p string, r io.Reader, size int64, mode fs.FileMode) (FileInfo, error) {
	clean, err := runtime.CleanPath(p)
	if err != nil {
		return FileInfo{}, err
	}
	if clean == "" {
		return FileInfo{}, errdefs.Invalid("invalid_path", "a file path is required")
	}
	_, st, err := m.usable(ctx, userID, id)
	if err != nil {
		return FileInfo{}, err
	}
	limit := int64(st.Policy.Limits.Upload)
	if limit > 0 && size > limit {
		return FileInfo{}, tooLarge(limit)
	}
	if mode == 0 {
		mode = 0o644
	}
	m.touch(id)
	if fw, ok := m.rt.(runtime.FileWriter); ok {
		// Streamed into a temporary inside the workspace and renamed
		// into place: never spooled on the server's host.
		src := r
		var lr *limitedReader
		if limit > 0 {
			lr = &limitedReader{r: r, left: limit, limit: limit}
			src = lr
		}
		if size >= 0 {
			src = &sizedReader{r: src, left: size, size: size}
		}
		n, err := fw.WriteFile(ctx, id, clean, src, mode)
		if err != nil {
			if lr != nil && lr.exceeded {
				return FileInfo{}, tooLarge(limit)
			}
			return FileInfo{}, err
		}
		return infoOf(&tar.Header{Typeflag: tar.TypeReg, Size: n, Mode: int64(mode.Perm()), ModTime: time.Now()}, clean), nil
	}
	if size < 0 {
		return FileInfo{}, errdefs.New(errdefs.ErrInvalidArgument, "length_required", "this runtime needs the upload's Content-Length")
	}
	hdr := &tar.Header{Name: path.Base(clean), Typeflag: tar.TypeReg, Size: size, Mode: int64(mode.Perm()), ModTime: time.Now()}
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.WriteHeader(hdr)
		if err == nil {
			var n int64
			n, err = io.Copy(tw, io.LimitReader(r, size))
			if err == nil && n < size {
				err = errdefs.Invalid("short_body", "request body ended after %d of %d bytes", n, size)
			}
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	err = m.rt.CopyIn(ctx, id, path.Dir("/" + clean)[1:], pr)
	pr.CloseWithError(err)
	if err != nil {
		return FileInfo{}, err
	}
	return infoOf(hdr, clean), nil
}

func tooLarge(limit int64) error {
	return errdefs.New(errdefs.ErrTooLarge, "too_large", "upload exceeds this workspace's limit of %d bytes", limit)
}

// RemoveFile deletes the file or directory tree at path. Idempotent.
func (m *Manager) RemoveFile(ctx context.Context, userID, id, p string) error {
	clean, err := runtime.CleanPath(p)
	if err != nil {
		return err
	}
	if clean == "" {
		return errdefs.Invalid("invalid_path", "the workspace root cannot be deleted; delete the workspace instead")
	}
	if _, _, err := m.usable(ctx, userID, id); err != nil {
		return err
	}
	m.touch(id)
	if r, ok := m.rt.(runtime.PathRemover); ok {
		return r.RemovePath(ctx, id, clean)
	}
	// Without a direct way, check the path with CopyOut (which refuses
	// escapes through symlinks) and delete it with rm inside the sandbox,
	// where nothing outside the sandbox can be reached anyway.
	rc, err := m.rt.CopyOut(ctx, id, clean)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	rc.Close()
	stderr := runtime.NewOutput(4096)
	p2, err := m.Exec(ctx, userID, id, runtime.ExecSpec{Argv: []string{"rm", "-rf", "--", "./" + clean}, Stderr: stderr, Timeout: time.Minute})
	if err != nil {
		return err
	}
	res, err := p2.Wait()
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("rm %s in %s: exit %d: %s", clean, id, res.ExitCode, stderr.String())
	}
	return nil
}

// ArchiveOut returns a tar stream of path (see runtime.Runtime.CopyOut).
func (m *Manager) ArchiveOut(ctx context.Context, userID, id, p string) (io.ReadCloser, error) {
	clean, err := runtime.CleanPath(p)
	if err != nil {
		return nil, err
	}
	if _, _, err := m.usable(ctx, userID, id); err != nil {
		return nil, err
	}
	m.touch(id)
	return m.rt.CopyOut(ctx, id, clean)
}

// ArchiveIn extracts a tar stream into the directory path, within the
// workspace's upload limit.
func (m *Manager) ArchiveIn(ctx context.Context, userID, id, p string, r io.Reader) error {
	clean, err := runtime.CleanPath(p)
	if err != nil {
		return err
	}
	_, st, err := m.usable(ctx, userID, id)
	if err != nil {
		return err
	}
	m.touch(id)
	limit := int64(st.Policy.Limits.Upload)
	if limit <= 0 {
		return m.rt.CopyIn(ctx, id, clean, r)
	}
	lr := &limitedReader{r: r, left: limit, limit: limit}
	err = m.rt.CopyIn(ctx, id, clean, lr)
	if err != nil && lr.exceeded {
		// Drivers wrap a reader's error in their own (e.g. "invalid tar");
		// the client must still learn that the upload was too large.
		return tooLarge(limit)
	}
	return err
}

// sizedReader reads exactly size bytes: a source that ends sooner fails
// with "short_body" (so a driver writing whole-or-absent keeps nothing),
// and anything past size is left unread.
type sizedReader struct {
	r          io.Reader
	left, size int64
}

func (s *sizedReader) Read(p []byte) (int, error) {
	if s.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > s.left {
		p = p[:s.left]
	}
	n, err := s.r.Read(p)
	s.left -= int64(n)
	if err == io.EOF && s.left > 0 {
		err = errdefs.Invalid("short_body", "request body ended after %d of %d bytes", s.size-s.left, s.size)
	}
	return n, err
}

// limitedReader fails with ErrTooLarge, rather than a silent EOF, once more
// than limit bytes have been read.
type limitedReader struct {
	r           io.Reader
	left, limit int64
	exceeded    bool
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		var one [1]byte
		if n, _ := l.r.Read(one[:]); n > 0 {
			l.exceeded = true
			return 0, tooLarge(l.limit)
		}
		return 0, io.EOF
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

// ReadFile returns the content of a regular file, at most max bytes
// (errdefs.ErrTooLarge beyond). For the conversation engine's tools.
func (m *Manager) ReadFile(ctx context.Context, userID, id, p string, max int64) ([]byte, error) {
	e, err := m.Open(ctx, userID, id, p)
	if err != nil {
		return nil, err
	}
	if e.Content == nil {
		return nil, errdefs.Invalid("not_a_file", "%q is a %s, not a file", p, e.Info.Type)
	}
	defer e.Content.Close()
	if max > 0 && e.Info.Size > max {
		return nil, errdefs.New(errdefs.ErrTooLarge, "too_large", "%q is %d bytes, more than %d", p, e.Info.Size, max)
	}
	return io.ReadAll(e.Content)
}
