package client

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/corralhq/corral/api/types"
)

func filesPath(id, p string) string {
	return "/workspaces/" + url.PathEscape(id) + "/files/" + escape(p)
}

// OpenFile streams a file of a workspace; the caller closes it. Paths are
// relative to the workspace root.
func (c *Client) OpenFile(ctx context.Context, id, path string) (io.ReadCloser, error) {
	resp, err := c.do(ctx, request{method: http.MethodGet, path: filesPath(id, path), idempotent: true})
	if err != nil {
		return nil, err
	}
	if ct := resp.Header.Get("Content-Type"); strings.HasPrefix(ct, "application/json") {
		resp.Body.Close()
		return nil, &Error{Status: http.StatusBadRequest, Code: "is_a_directory", Message: path + " is a directory"}
	}
	return resp.Body, nil
}

// ReadFile returns a file's content.
func (c *Client) ReadFile(ctx context.Context, id, path string) ([]byte, error) {
	rc, err := c.OpenFile(ctx, id, path)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("corral: read %s: %w", path, err)
	}
	return b, nil
}

// WriteFile stores r's content as a file (parents are created), with
// permissions mode (0 means 0644). The body is streamed; size is its length
// if known, else -1. It is retried only if r is an io.Seeker.
func (c *Client) WriteFile(ctx context.Context, id, path string, r io.Reader, size int64, mode fs.FileMode) (types.FileInfo, error) {
	q := url.Values{}
	if mode != 0 {
		q.Set("mode", "0"+strconv.FormatUint(uint64(mode.Perm()), 8))
	}
	var fi types.FileInfo
	err := c.call(ctx, request{method: http.MethodPut, path: filesPath(id, path), query: q, body: r, size: size,
		ctype: "application/octet-stream", idempotent: true}, &fi)
	return fi, err
}

// Stat describes a path of a workspace.
func (c *Client) Stat(ctx context.Context, id, path string) (types.FileInfo, error) {
	var fi types.FileInfo
	err := c.call(ctx, request{method: http.MethodGet, path: filesPath(id, path), query: url.Values{"stat": {"1"}}, idempotent: true}, &fi)
	return fi, err
}

// ListDir lists a directory's direct children ("" is the root).
func (c *Client) ListDir(ctx context.Context, id, path string) ([]types.FileInfo, error) {
	fi, err := c.Stat(ctx, id, path)
	if err != nil {
		return nil, err
	}
	if fi.Type != types.TypeDir {
		return nil, &Error{Status: http.StatusBadRequest, Code: "not_a_directory", Message: path + " is not a directory"}
	}
	resp, err := c.do(ctx, request{method: http.MethodGet, path: filesPath(id, path), idempotent: true})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var l types.DirListing
	if err := json.NewDecoder(resp.Body).Decode(&l); err != nil {
		return nil, fmt.Errorf("corral: decode listing of %s: %w", path, err)
	}
	return l.Entries, nil
}

// Remove deletes a file or a directory tree. A missing path is not an
// error.
func (c *Client) Remove(ctx context.Context, id, path string) error {
	return c.deleteIdempotent(ctx, filesPath(id, path))
}

// ArchiveOut streams a tar of path ("" is the whole workspace); the caller
// closes it.
func (c *Client) ArchiveOut(ctx context.Context, id, path string) (io.ReadCloser, error) {
	resp, err := c.do(ctx, request{method: http.MethodGet, path: "/workspaces/" + url.PathEscape(id) + "/archive",
		query: url.Values{"path": {path}}, idempotent: true})
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// ArchiveIn extracts the tar stream r into the directory path ("" is the
// root), which is created if needed. It is retried only if r is an
// io.Seeker.
func (c *Client) ArchiveIn(ctx context.Context, id, path string, r io.Reader) error {
	return c.call(ctx, request{method: http.MethodPut, path: "/workspaces/" + url.PathEscape(id) + "/archive",
		query: url.Values{"path": {path}}, body: r, size: -1, ctype: "application/x-tar", idempotent: true}, nil)
}

// CopyIn copies the local directory dir into the workspace directory path,
// streamed as a tar. Regular files and directories are copied; anything
// else (a symlink, a device) fails the copy.
func (c *Client) CopyIn(ctx context.Context, id, dir, path string) error {
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.AddFS(os.DirFS(dir))
		if cerr := tw.Close(); err == nil {
			err = cerr
		}
		pw.CloseWithError(err)
	}()
	err := c.ArchiveIn(ctx, id, path, pr)
	pr.CloseWithError(errors.New("upload ended"))
	return err
}

// CopyOut copies the workspace directory (or file) path into the local
// directory dir, which is created if needed. Every entry is created inside
// dir (an os.Root): an archive naming "../x" or a symlink leading out
// cannot write elsewhere. Existing files are overwritten.
func (c *Client) CopyOut(ctx context.Context, id, path, dir string) error {
	rc, err := c.ArchiveOut(ctx, id, path)
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("corral: %w", err)
	}
	return Extract(rc, dir)
}

// Extract writes the tar stream r into dir, confined to it with os.Root.
func Extract(r io.Reader, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("corral: %w", err)
	}
	defer root.Close()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("corral: read archive: %w", err)
		}
		name := filepath.FromSlash(strings.TrimPrefix(filepath.ToSlash(filepath.Clean("/"+h.Name)), "/"))
		if name == "" || name == "." {
			continue
		}
		mode := fs.FileMode(h.Mode).Perm()
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return fmt.Errorf("corral: extract %s: %w", h.Name, err)
			}
			_ = root.Chmod(name, mode|0o700)
		case tar.TypeReg:
			if d := filepath.Dir(name); d != "." {
				if err := root.MkdirAll(d, 0o755); err != nil {
					return fmt.Errorf("corral: extract %s: %w", h.Name, err)
				}
			}
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
			if err != nil {
				return fmt.Errorf("corral: extract %s: %w", h.Name, err)
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("corral: extract %s: %w", h.Name, err)
			}
			_ = root.Chmod(name, mode)
		case tar.TypeSymlink:
			_ = root.Remove(name)
			if err := root.Symlink(h.Linkname, name); err != nil {
				return fmt.Errorf("corral: extract %s: %w", h.Name, err)
			}
		default:
			// Devices, fifos and hard links are not copied out.
		}
	}
}
