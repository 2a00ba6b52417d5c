// Package conversation runs conversations between a user and an agent that
// acts in a workspace. Every step is an event (message, action, output,
// observation, error, state) committed to the store before it is handed to
// any subscriber, so a client that reconnects with the last sequence number
// it saw misses nothing and sees nothing twice.
//
// The agent is an interface (Agent); the default one speaks the
// OpenAI-compatible chat-completions protocol (package conversation/openai)
// and uses the tools run_command, read_file, write_file and finish, which the
// Service executes in the workspace through the Workspaces interface, under
// the workspace's policy.
package conversation

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/store"
	"github.com/hashicorp/go-hclog"
)

// State is a conversation's state.
type State string

const (
	StateIdle        State = "idle"        // created, no message yet
	StateRunning     State = "running"     // the agent is working
	StateWaiting     State = "waiting"     // the agent answered and waits for the user
	StateFinished    State = "finished"    // the agent called finish
	StateError       State = "error"       // the agent stopped on an error (see the error event)
	StateInterrupted State = "interrupted" // stopped by the user, a shutdown or a restart
)

// Event kinds.
const (
	KindMessage     = "message"     // MessagePayload; source user or agent
	KindAction      = "action"      // ActionPayload: a tool call
	KindOutput      = "output"      // OutputPayload: a chunk of a running action's output
	KindObservation = "observation" // ObservationPayload: a tool's result
	KindError       = "error"       // ErrorPayload
	KindState       = "state"       // StatePayload
)

// Event sources.
const (
	SourceUser      = "user"      // the conversation's owner
	SourceAgent     = "agent"     // the agent's messages and actions
	SourceWorkspace = "workspace" // what the workspace answered: output, observations
	SourceSystem    = "system"    // the server: state changes, errors
)

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
	Stream string `json:"stream"` // stdout or stderr
	Data   string `json:"data"`
}

// ObservationPayload is the payload of an observation event: what a tool
// call gave back. ExitCode is the command's, or 0/1 for file tools.
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
	State  State  `json:"state"`
	Reason string `json:"reason,omitempty"`
}

// Workspaces runs tools in a user's workspace. *workspace.Manager satisfies
// it; each method ensures the workspace is running and applies its policy.
type Workspaces interface {
	Exec(ctx context.Context, userID, workspaceID string, spec runtime.ExecSpec) (runtime.Process, error)
	ReadFile(ctx context.Context, userID, workspaceID, path string, max int64) ([]byte, error)
	WriteFile(ctx context.Context, userID, workspaceID, path string, data []byte) error
}

// Agent decides what to do next in a conversation. Implementations must be
// safe for use by one goroutine at a time; the Service never calls one
// concurrently with itself.
type Agent interface {
	// Next returns the agent's next step given everything that happened so
	// far. A Step without Calls ends the agent's turn: it waits for the
	// user. Next must return promptly once ctx is done.
	Next(ctx context.Context, turn Turn) (Step, error)
}

// Turn is what an agent is given to decide its next step.
type Turn struct {
	ConversationID string
	WorkspaceID    string
	// History is the conversation's events in seq order, without output
	// events (their content is in the observations).
	History []store.Event
	// Tools are the tools the Service can execute.
	Tools []Tool
}

// Step is an agent's decision: an optional message to the user and tool
// calls to execute in order.
type Step struct {
	Message string
	Calls   []ToolCall
}

// ToolCall is a call of one of Turn.Tools.
type ToolCall struct {
	ID        string          // unique within the conversation; made up if empty
	Name      string          // run_command, read_file, write_file, finish
	Arguments json.RawMessage // a JSON object
}

// Tool describes a tool with a JSON Schema of its arguments.
type Tool struct {
	Name        string
	Description string
	Parameters  json.RawMessage
}

// AgentFactory makes the agent of a conversation. llm is the conversation's
// effective LLM settings (server defaults with the conversation's
// overrides, key decrypted).
type AgentFactory func(conv store.Conversation, llm LLMConfig) (Agent, error)

// LLMConfig says which OpenAI-compatible endpoint and model to use.
type LLMConfig struct {
	BaseURL string `json:"base_url,omitempty"`
	Model   string `json:"model,omitempty"`
	APIKey  string `json:"api_key,omitempty"`

	userChosen bool // BaseURL is a conversation's own, not the server's
}

// Config configures a Service. Zero fields take the documented defaults.
type Config struct {
	// LLM is the server's default endpoint, model and key.
	LLM LLMConfig
	// SecretKey encrypts API keys given through the API (AES-256-GCM with
	// a key derived from it). At least 16 bytes; empty means such keys are
	// refused.
	SecretKey string
	// SystemPrompt starts every default-agent request.
	SystemPrompt string
	// MaxSteps bounds the agent's steps (LLM calls) per user message
	// (default 30).
	MaxSteps int
	// LLMTimeout bounds one LLM HTTP attempt (default 120s); LLMRetries is
	// how many times 429/5xx/transport errors are retried (default 4).
	LLMTimeout time.Duration
	LLMRetries int
	// LLMMinBackoff and LLMMaxBackoff bound the wait between retries
	// (defaults 500ms and 30s); Retry-After is honoured up to the maximum.
	LLMMinBackoff, LLMMaxBackoff time.Duration
	// CommandTimeout bounds one run_command; 0 leaves it to the
	// workspace's policy.
	CommandTimeout time.Duration
	// ObservationBytes is how much of a tool's output is kept in its
	// observation and shown to the model (default 16 KiB).
	ObservationBytes int
	// StreamedOutputBytes bounds the output events of one action
	// (default 1 MiB); the rest is counted as truncated.
	StreamedOutputBytes int
	// SubscriberBuffer is how many live events a subscriber may fall
	// behind before it is dropped with ErrLagged (default 1024).
	SubscriberBuffer int
	// AllowPrivateLLMOverride lets a conversation's own llm.base_url reach
	// link-local, CGNAT and private addresses (see policy.CheckAddress);
	// never loopback or this server's own addresses. Off by default, so
	// that users cannot make the server call its own network; the server's
	// configured endpoint (for example a local Ollama) is always allowed.
	AllowPrivateLLMOverride bool
	// NewAgent makes each conversation's agent; default: the
	// OpenAI-compatible agent.
	NewAgent   AgentFactory
	HTTPClient *http.Client // for the default agent; default http.DefaultClient's transport
	Logger     hclog.Logger
}

// ConfigFromEnv reads CORRAL_LLM_BASE_URL, CORRAL_LLM_MODEL,
// CORRAL_LLM_API_KEY, CORRAL_SECRET_KEY, and optionally
// CORRAL_AGENT_MAX_STEPS, CORRAL_LLM_TIMEOUT (a Go duration) and
// CORRAL_LLM_ALLOW_PRIVATE (1 or true: AllowPrivateLLMOverride).
func ConfigFromEnv() Config {
	c := Config{
		LLM: LLMConfig{
			BaseURL: os.Getenv("CORRAL_LLM_BASE_URL"),
			Model:   os.Getenv("CORRAL_LLM_MODEL"),
			APIKey:  os.Getenv("CORRAL_LLM_API_KEY"),
		},
		SecretKey: os.Getenv("CORRAL_SECRET_KEY"),
	}
	if n, err := strconv.Atoi(os.Getenv("CORRAL_AGENT_MAX_STEPS")); err == nil && n > 0 {
		c.MaxSteps = n
	}
	if d, err := time.ParseDuration(os.Getenv("CORRAL_LLM_TIMEOUT")); err == nil && d > 0 {
		c.LLMTimeout = d
	}
	if b, err := strconv.ParseBool(os.Getenv("CORRAL_LLM_ALLOW_PRIVATE")); err == nil {
		c.AllowPrivateLLMOverride = b
	}
	return c
}

func (c *Config) setDefaults() {
	if c.MaxSteps <= 0 {
		c.MaxSteps = 30
	}
	if c.LLMTimeout <= 0 {
		c.LLMTimeout = 120 * time.Second
	}
	if c.ObservationBytes <= 0 {
		c.ObservationBytes = 16 << 10
	}
	if c.StreamedOutputBytes <= 0 {
		c.StreamedOutputBytes = 1 << 20
	}
	if c.SubscriberBuffer <= 0 {
		c.SubscriberBuffer = 1024
	}
	if c.SystemPrompt == "" {
		c.SystemPrompt = DefaultSystemPrompt
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
}

// DefaultSystemPrompt is the default agent's instructions.
const DefaultSystemPrompt = `You are an agent working in a sandboxed Linux workspace on the user's behalf.
Use the tools: run_command runs a shell command in the workspace (its working directory is the workspace root);
read_file and write_file take paths relative to the workspace root. Work step by step and check your results.
When the task is done, call finish with a short summary. If you need something from the user, answer in plain text
without calling a tool.`
