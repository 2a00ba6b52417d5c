package api

import (
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/corralhq/corral/errdefs"
)

// filePath is the path after /files/, relative to the workspace root,
// unescaped: "a%2F..%2Fb" is "a/../b", which the path rules then refuse.
// chi matches on the escaped path only when the URL has one (RawPath set);
// otherwise the parameter is already unescaped and must not be unescaped
// again, or a file named "a%41" would be read as "aA".
func filePath(r *http.Request) string {
	p := chi.URLParam(r, "*")
	if r.URL.RawPath == "" {
		return p
	}
	if u, err := url.PathUnescape(p); err == nil {
		return u
	}
	return p
}

// getFile answers a file's bytes, a directory's JSON listing, or with
// ?stat=1 any path's JSON description.
func (s *Server) getFile(w http.ResponseWriter, r *http.Request) {
	user := userFrom(r.Context())
	e, err := s.workspaces.Open(r.Context(), user.ID, chi.URLParam(r, "id"), filePath(r))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if e.Content != nil {
		defer e.Content.Close()
	}
	switch {
	case r.URL.Query().Has("stat"):
		writeJSON(w, http.StatusOK, e.Info)
	case e.Entries != nil:
		writeJSON(w, http.StatusOK, map[string]any{"path": e.Info.Path, "type": "dir", "entries": e.Entries})
	case e.Content != nil:
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(e.Info.Size, 10))
		w.Header().Set("X-Corral-File-Mode", e.Info.Mode)
		w.Header().Set("Last-Modified", e.Info.ModTime.Format(http.TimeFormat))
		if _, err := io.Copy(w, e.Content); err != nil {
			s.log.Debug("download interrupted", "path", e.Info.Path, "error", err)
		}
	default:
		writeJSON(w, http.StatusOK, e.Info)
	}
}

// putFile stores the raw body as a file; ?mode=0755 sets its permissions.
func (s *Server) putFile(w http.ResponseWriter, r *http.Request) {
	var mode uint64 = 0o644
	if m := r.URL.Query().Get("mode"); m != "" {
		var err error
		if mode, err = strconv.ParseUint(m, 8, 32); err != nil || mode > 0o7777 {
			s.writeError(w, r, errdefs.Invalid("invalid_mode", "mode must be octal permission bits like 0644"))
			return
		}
	}
	user := userFrom(r.Context())
	info, err := s.workspaces.PutFile(r.Context(), user.ID, chi.URLParam(r, "id"), filePath(r), r.Body, r.ContentLength, modeOf(mode))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, info)
}

func (s *Server) deleteFile(w http.ResponseWriter, r *http.Request) {
	if err := s.workspaces.RemoveFile(r.Context(), userFrom(r.Context()).ID, chi.URLParam(r, "id"), filePath(r)); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// getArchive streams a tar of ?path= (default: the whole workspace).
func (s *Server) getArchive(w http.ResponseWriter, r *http.Request) {
	rc, err := s.workspaces.ArchiveOut(r.Context(), userFrom(r.Context()).ID, chi.URLParam(r, "id"), r.URL.Query().Get("path"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/x-tar")
	if _, err := io.Copy(w, rc); err != nil {
		s.log.Debug("archive download interrupted", "error", err)
	}
}

// putArchive extracts a tar body into the directory ?path=.
func (s *Server) putArchive(w http.ResponseWriter, r *http.Request) {
	err := s.workspaces.ArchiveIn(r.Context(), userFrom(r.Context()).ID, chi.URLParam(r, "id"), r.URL.Query().Get("path"), r.Body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func modeOf(m uint64) fs.FileMode { return fs.FileMode(m) & fs.ModePerm }
