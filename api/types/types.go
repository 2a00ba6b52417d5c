// Package types is Corral's wire format: the JSON bodies of the HTTP API
// and the frames of its WebSockets, as Go structs. The client SDK decodes
// into them, and a test drives a real server and decodes every answer into
// them with unknown fields rejected, so the two cannot drift apart
// silently.
//
// It depends on nothing of the server but package policy, whose Limits,
// Network, Bytes and Duration are the wire types of a workspace's policy.
package types

import (
	"encoding/json"
	"time"

	"github.com/corralhq/corral/policy"
)

// Error is the body of every error answer.
type Error struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail carries a stable machine-readable code (README, "Error
// codes") and a message for people.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Workspace states.
const (
	StateCreating = "creating"
	StateRunning  = "running"
	StateStopped  = "stopped"
	StateError    = "error"
)

// WorkspaceSpec is the body of POST /workspaces. Zero fields take the
// server's defaults.
type WorkspaceSpec struct {
	Image   string            `json:"image,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	Limits  policy.Limits     `json:"limits"`
	Network policy.Network    `json:"network"`
}

// Workspace is a workspace as the API shows it.
type Workspace struct {
	ID         string            `json:"id"`
	State      string            `json:"state"`
	Runtime    string            `json:"runtime"`
	Image      string            `json:"image,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	Limits     policy.Limits     `json:"limits"`
	Network    policy.Network    `json:"network"`
	Error      string            `json:"error,omitempty"`
	CreatedAt  time.Time         `json:"created_at"`
	UpdatedAt  time.Time         `json:"updated_at"`
	LastUsedAt time.Time         `json:"last_used_at"`
}

// WorkspaceList is a page of GET /workspaces.
type WorkspaceList struct {
	Workspaces []Workspace `json:"workspaces"`
	// NextAfter is the ?after= of the next page, "" at the end.
	NextAfter string `json:"next_after"`
}

// PullProgress is an image pull's progress.
type PullProgress struct {
	Status  string `json:"status"`
	Layer   string `json:"layer,omitempty"`
	Current int64  `json:"current,omitempty"`
	Total   int64  `json:"total,omitempty"`
}

// CreateEvent is one line of POST /workspaces answered as
// application/x-ndjson: "progress" lines, then one "created" or "error".
type CreateEvent struct {
	Type      string        `json:"type"`
	Progress  *PullProgress `json:"progress,omitempty"`
	Workspace *Workspace    `json:"workspace,omitempty"`
	Error     *ErrorDetail  `json:"error,omitempty"`
}

// Command is a command to run: Command through /bin/sh -c, or Argv as is.
type Command struct {
	Command string            `json:"command,omitempty"`
	Argv    []string          `json:"argv,omitempty"`
	Cwd     string            `json:"cwd,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	Timeout policy.Duration   `json:"timeout,omitempty"`
}

// ExecuteRequest is the body of POST /workspaces/{id}/execute.
type ExecuteRequest struct {
	Command
	Stdin string `json:"stdin,omitempty"`
}

// ExecuteResult is its answer.
type ExecuteResult struct {
	ExitCode   int    `json:"exit_code"`
	Stdout     string `json:"stdout"`
	Stderr     string `json:"stderr"`
	Truncated  bool   `json:"truncated"`
	TimedOut   bool   `json:"timed_out"`
	OOMKilled  bool   `json:"oom_killed"`
	Signal     string `json:"signal"`
	DurationMS int64  `json:"duration_ms"`
}

// ExitResult is how a command ended.
type ExitResult struct {
	ExitCode  int    `json:"exit_code"` // 128+n when killed by signal n
	Signal    string `json:"signal"`    // "SIGKILL"..., or "" if it exited
	TimedOut  bool   `json:"timed_out"`
	OOMKilled bool   `json:"oom_killed"`
}

// ExecClientFrame is a frame a client sends on /workspaces/{id}/exec.
// Data is base64 in JSON.
type ExecClientFrame struct {
	Type string `json:"type"` // auth, start, stdin, close_stdin, resize, signal
	Key  string `json:"key,omitempty"`
	Command
	TTY    bool   `json:"tty,omitempty"`
	Cols   uint16 `json:"cols,omitempty"`
	Rows   uint16 `json:"rows,omitempty"`
	Data   []byte `json:"data,omitempty"`
	Signal string `json:"signal,omitempty"`
}

// ExecServerFrame is a frame the server sends on the exec socket.
type ExecServerFrame struct {
	Type string `json:"type"` // started, stdout, stderr, exit, error
	Data []byte `json:"data,omitempty"`
	*ExitResult
	Error *ErrorDetail `json:"error,omitempty"`
}

// File types in FileInfo.Type.
const (
	TypeFile    = "file"
	TypeDir     = "dir"
	TypeSymlink = "symlink"
	TypeOther   = "other"
)

// FileInfo describes a path in a workspace (GET .../files/PATH?stat=1, PUT
// .../files/PATH).
type FileInfo struct {
	Name       string    `json:"name"`
	Path       string    `json:"path"`
	Type       string    `json:"type"`
	Size       int64     `json:"size"`
	Mode       string    `json:"mode"` // octal permission bits, e.g. "0644"
	ModTime    time.Time `json:"mtime"`
	LinkTarget string    `json:"link_target,omitempty"`
}

// DirListing is GET .../files/PATH of a directory: its direct children.
type DirListing struct {
	Path    string     `json:"path"`
	Type    string     `json:"type"` // "dir"
	Entries []FileInfo `json:"entries"`
}

// Conversation states.
const (
	ConversationIdle        = "idle"
	ConversationRunning     = "running"
	ConversationWaiting     = "waiting"
	ConversationFinished    = "finished"
	ConversationError       = "error"
	ConversationInterrupted = "interrupted"
)

// LLMConfig overrides the server's model endpoint for one conversation.
type LLMConfig struct {
	BaseURL string `json:"base_url,omitempty"`
	Model   string `json:"model,omitempty"`
	APIKey  string `json:"api_key,omitempty"`
}

// LLMInfo shows a conversation's LLM overrides; the key only as a flag.
type LLMInfo struct {
	BaseURL   string `json:"base_url,omitempty"`
	Model     string `json:"model,omitempty"`
	APIKeySet bool   `json:"api_key_set"`
}

// CreateConversationRequest is the body of POST /conversations: exactly
// one of WorkspaceID and Workspace.
type CreateConversationRequest struct {
	WorkspaceID string         `json:"workspace_id,omitempty"`
	Workspace   *WorkspaceSpec `json:"workspace,omitempty"`
	LLM         *LLMConfig     `json:"llm,omitempty"`
}

// Conversation is a conversation as the API shows it.
type Conversation struct {
	ID          string    `json:"id"`
	WorkspaceID string    `json:"workspace_id"`
	State       string    `json:"state"`
	LastSeq     int64     `json:"last_seq"`
	LLM         LLMInfo   `json:"llm"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// ConversationList is a page of GET /conversations.
type ConversationList struct {
	Conversations []Conversation `json:"conversations"`
	NextAfter     string         `json:"next_after"`
}

// MessageRequest is the body of POST /conversations/{id}/messages.
type MessageRequest struct {
	Content string `json:"content"`
}

// Event kinds.
const (
	KindMessage     = "message"
	KindAction      = "action"
	KindOutput      = "output"
	KindObservation = "observation"
	KindError       = "error"
	KindState       = "state"
)

// Event is one event of a conversation; Seq numbers them from 1 without
// gaps. Payload's shape depends on Kind (MessagePayload...).
type Event struct {
	ID             string          `json:"id"`
	ConversationID string          `json:"conversation_id"`
	Seq            int64           `json:"seq"`
	Time           time.Time       `json:"time"`
	Source         string          `json:"source"` // user, agent, workspace, system
	Kind           string          `json:"kind"`
	Payload        json.RawMessage `json:"payload"`
}

// EventList is a page of GET /conversations/{id}/events.
type EventList struct {
	Events []Event `json:"events"`
	// NextAfter is the last seq returned, or the given after if none.
	NextAfter int64 `json:"next_after"`
}

// StreamFrame is a frame of /conversations/{id}/stream: a "snapshot"
// first, then one "event" per event in seq order.
type StreamFrame struct {
	Type         string        `json:"type"` // snapshot, event or error
	Conversation *Conversation `json:"conversation,omitempty"`
	*Event
	// Error is set in an "error" frame, the last before an error close.
	Error *ErrorDetail `json:"error,omitempty"`
}

// MessagePayload is the payload of a message event.
type MessagePayload struct {
	Content string `json:"content"`
}

// ActionPayload is the payload of an action event: a tool call.
type ActionPayload struct {
	CallID    string          `json:"call_id"`
	Tool      string          `json:"tool"`
	Arguments json.RawMessage `json:"arguments"`
}

// OutputPayload is the payload of an output event.
type OutputPayload struct {
	CallID string `json:"call_id"`
	Stream string `json:"stream"`
	Data   string `json:"data"`
}

// ObservationPayload is the payload of an observation event.
type ObservationPayload struct {
	CallID      string `json:"call_id"`
	Tool        string `json:"tool"`
	ExitCode    int    `json:"exit_code"`
	Output      string `json:"output"`
	Truncated   bool   `json:"truncated"`
	Error       string `json:"error,omitempty"`
	TimedOut    bool   `json:"timed_out,omitempty"`
	Signal      string `json:"signal,omitempty"`
	Interrupted bool   `json:"interrupted,omitempty"`
}

// ErrorPayload is the payload of an error event.
type ErrorPayload struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// StatePayload is the payload of a state event.
type StatePayload struct {
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
}

// Health is GET /health.
type Health struct {
	Status  string `json:"status"`
	Version string `json:"version"`
}
