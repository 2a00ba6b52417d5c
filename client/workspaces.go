package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"net/http"
	"net/url"

	"github.com/corralhq/corral/api/types"
)

// CreateWorkspace creates a workspace and returns it running. With
// progress, the image pull's progress is reported to it as it comes (from
// the calling goroutine). Creation is not idempotent: it is retried only
// after an answer that says nothing was created (429, 503).
func (c *Client) CreateWorkspace(ctx context.Context, spec types.WorkspaceSpec, progress func(types.PullProgress)) (types.Workspace, error) {
	req := request{method: http.MethodPost, path: "/workspaces", json: spec}
	var ws types.Workspace
	if progress == nil {
		err := c.call(ctx, req, &ws)
		return ws, err
	}
	req.accept = "application/x-ndjson"
	resp, err := c.do(ctx, req)
	if err != nil {
		return ws, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev types.CreateEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return ws, fmt.Errorf("corral: decode creation event: %w", err)
		}
		switch {
		case ev.Type == "progress" && ev.Progress != nil:
			progress(*ev.Progress)
		case ev.Type == "created" && ev.Workspace != nil:
			return *ev.Workspace, nil
		case ev.Type == "error" && ev.Error != nil:
			return ws, &Error{Status: statusOfCode(ev.Error.Code), Code: ev.Error.Code, Message: ev.Error.Message}
		}
	}
	if err := sc.Err(); err != nil {
		return ws, fmt.Errorf("corral: creation stream: %w", err)
	}
	return ws, fmt.Errorf("corral: creation stream ended without an outcome; the workspace may exist (see ListWorkspaces)")
}

// statusOfCode guesses the status of a streamed creation error, which has
// a code but no status of its own.
func statusOfCode(code string) int {
	switch code {
	case "not_found", "image_not_found":
		return http.StatusNotFound
	case "unavailable", "engine_unavailable":
		return http.StatusServiceUnavailable
	case "internal":
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}

// Workspace returns a workspace by ID.
func (c *Client) Workspace(ctx context.Context, id string) (types.Workspace, error) {
	var ws types.Workspace
	err := c.call(ctx, request{method: http.MethodGet, path: "/workspaces/" + url.PathEscape(id), idempotent: true}, &ws)
	return ws, err
}

// Workspaces yields the caller's workspaces, oldest first, fetching pages
// of 100 as it goes. An error ends the sequence.
//
//	for ws, err := range c.Workspaces(ctx) {
//		if err != nil { return err }
//		fmt.Println(ws.ID)
//	}
func (c *Client) Workspaces(ctx context.Context) iter.Seq2[types.Workspace, error] {
	return func(yield func(types.Workspace, error) bool) {
		after := ""
		for {
			q := url.Values{"limit": {"100"}}
			if after != "" {
				q.Set("after", after)
			}
			var page types.WorkspaceList
			if err := c.call(ctx, request{method: http.MethodGet, path: "/workspaces", query: q, idempotent: true}, &page); err != nil {
				yield(types.Workspace{}, err)
				return
			}
			for _, ws := range page.Workspaces {
				if !yield(ws, nil) {
					return
				}
			}
			if page.NextAfter == "" || len(page.Workspaces) == 0 {
				return
			}
			after = page.NextAfter
		}
	}
}

// DeleteWorkspace deletes a workspace, its sandbox and files. A retried
// deletion that finds the workspace gone (the first attempt did it)
// succeeds.
func (c *Client) DeleteWorkspace(ctx context.Context, id string) error {
	return c.deleteIdempotent(ctx, "/workspaces/"+url.PathEscape(id))
}

// deleteIdempotent sends DELETE path; a 404 after an attempt whose outcome
// was unknown means that attempt succeeded.
func (c *Client) deleteIdempotent(ctx context.Context, path string) error {
	var lastErr error
	for attempt := 1; attempt <= c.retry.Attempts; attempt++ {
		resp, err := c.do(ctx, request{method: http.MethodDelete, path: path, idempotent: true})
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if isNotFound(err) && lastErr != nil {
			return nil
		}
		if _, ok := err.(*Error); ok || ctx.Err() != nil {
			return err
		}
		// c.do gave up after network errors: the deletion may have been
		// done; ask again, and take a 404 as success.
		lastErr = err
		if werr := c.wait(ctx, attempt, 0); werr != nil {
			return werr
		}
	}
	return lastErr
}

// WaitReady waits until a workspace is running (it may be starting again
// after being stopped for idleness) and returns it. A workspace in state
// "error" ends the wait with its error.
func (c *Client) WaitReady(ctx context.Context, id string) (types.Workspace, error) {
	for attempt := 1; ; attempt++ {
		ws, err := c.Workspace(ctx, id)
		if err != nil {
			return ws, err
		}
		switch ws.State {
		case types.StateRunning, types.StateStopped:
			// A stopped workspace starts again on its next use.
			return ws, nil
		case types.StateError:
			return ws, &Error{Status: http.StatusUnprocessableEntity, Code: "workspace_error", Message: ws.Error}
		}
		if err := c.wait(ctx, min(attempt, 4), 0); err != nil {
			return ws, err
		}
	}
}
