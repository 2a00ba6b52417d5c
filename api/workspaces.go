package api

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/workspace"
)

func (s *Server) createWorkspace(w http.ResponseWriter, r *http.Request) {
	var spec workspace.Spec
	if !s.readJSON(w, r, &spec) {
		return
	}
	if strings.Contains(r.Header.Get("Accept"), ndjson) {
		s.createWorkspaceStreaming(w, r, spec)
		return
	}
	ws, err := s.workspaces.Create(r.Context(), userFrom(r.Context()), spec, nil)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/workspaces/"+ws.ID)
	writeJSON(w, http.StatusCreated, ws)
}

// WorkspaceList is a page of workspaces.
type WorkspaceList struct {
	Workspaces []workspace.Workspace `json:"workspaces"`
	// NextAfter is the cursor of the next page (?after=), "" at the end.
	NextAfter string `json:"next_after"`
}

func (s *Server) listWorkspaces(w http.ResponseWriter, r *http.Request) {
	after, limit, err := pageParams(r)
	if err == nil {
		err = checkCursor(after, "ws")
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	list, next, err := s.workspaces.List(r.Context(), userFrom(r.Context()).ID, after, limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, WorkspaceList{Workspaces: list, NextAfter: next})
}

func (s *Server) getWorkspace(w http.ResponseWriter, r *http.Request) {
	ws, err := s.workspaces.Get(r.Context(), userFrom(r.Context()).ID, chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ws)
}

func (s *Server) deleteWorkspace(w http.ResponseWriter, r *http.Request) {
	if err := s.workspaces.Delete(r.Context(), userFrom(r.Context()).ID, chi.URLParam(r, "id")); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) execute(w http.ResponseWriter, r *http.Request) {
	var req workspace.ExecuteRequest
	if !s.readJSON(w, r, &req) {
		return
	}
	res, err := s.workspaces.Execute(r.Context(), userFrom(r.Context()), chi.URLParam(r, "id"), req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

const ndjson = "application/x-ndjson"

// CreateEvent is one line of a streamed workspace creation: "progress"
// lines while the image is pulled, then one "created" or "error" line.
type CreateEvent struct {
	Type      string                `json:"type"`
	Progress  *runtime.PullProgress `json:"progress,omitempty"`
	Workspace *workspace.Workspace  `json:"workspace,omitempty"`
	Error     *ErrorDetail          `json:"error,omitempty"`
}

// createWorkspaceStreaming answers POST /workspaces with Accept:
// application/x-ndjson: status 200 at once, then pull progress as it comes
// (at most one line per layer every 100ms), and the outcome as the last line.
func (s *Server) createWorkspaceStreaming(w http.ResponseWriter, r *http.Request, spec workspace.Spec) {
	w.Header().Set("Content-Type", ndjson)
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	var mu sync.Mutex
	emit := func(ev CreateEvent) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(ev)
		if flusher != nil {
			flusher.Flush()
		}
	}
	last := map[string]time.Time{}
	progress := func(p runtime.PullProgress) {
		mu.Lock()
		t, seen := last[p.Layer+p.Status]
		if seen && time.Since(t) < 100*time.Millisecond {
			mu.Unlock()
			return
		}
		last[p.Layer+p.Status] = time.Now()
		mu.Unlock()
		emit(CreateEvent{Type: "progress", Progress: &p})
	}
	ws, err := s.workspaces.Create(r.Context(), userFrom(r.Context()), spec, progress)
	if err != nil {
		_, d := s.publicError(r, err)
		emit(CreateEvent{Type: "error", Error: &d})
		return
	}
	emit(CreateEvent{Type: "created", Workspace: &ws})
}
