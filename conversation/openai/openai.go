// Package openai is a small client for the OpenAI-compatible chat-completions
// protocol (POST {base}/chat/completions with tools), as spoken by hosted APIs
// and by local servers such as Ollama, vLLM and llama.cpp. It knows nothing
// about conversations; package conversation builds its default agent on it.
package openai

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/hashicorp/go-hclog"
)

// Config says where the model is and how patient the client is with it.
type Config struct {
	BaseURL string // e.g. "https://api.openai.com/v1" or "http://127.0.0.1:11434/v1"
	Model   string
	APIKey  string // sent as a bearer token if not empty

	// Timeout bounds one HTTP attempt (default 120s).
	Timeout time.Duration
	// MaxRetries is how many times a 429, a 5xx or a transport error is
	// retried (default 4; negative means none).
	MaxRetries int
	// MinBackoff and MaxBackoff bound the wait between attempts (defaults
	// 500ms and 30s). A Retry-After header is honoured up to MaxBackoff.
	MinBackoff time.Duration
	MaxBackoff time.Duration

	HTTPClient *http.Client // default: a client with no overall timeout
	Logger     hclog.Logger
	// OnRetry, if set, is told of each retry before the client waits.
	OnRetry func(attempt int, status int, wait time.Duration)
}

// Client calls one model. It is safe for concurrent use.
type Client struct {
	cfg Config
}

// New checks cfg and fills its defaults. It fails with an
// errdefs.ErrInvalidArgument if the base URL or model is missing.
func New(cfg Config) (*Client, error) {
	if cfg.BaseURL == "" {
		return nil, errdefs.Invalid("llm_not_configured", "no LLM base URL configured (CORRAL_LLM_BASE_URL or llm.base_url)")
	}
	if !strings.HasPrefix(cfg.BaseURL, "http://") && !strings.HasPrefix(cfg.BaseURL, "https://") {
		return nil, errdefs.Invalid("invalid_llm_base_url", "LLM base URL %q must start with http:// or https://", cfg.BaseURL)
	}
	if cfg.Model == "" {
		return nil, errdefs.Invalid("llm_not_configured", "no LLM model configured (CORRAL_LLM_MODEL or llm.model)")
	}
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	if cfg.Timeout <= 0 {
		cfg.Timeout = 120 * time.Second
	}
	if cfg.MaxRetries == 0 {
		cfg.MaxRetries = 4
	} else if cfg.MaxRetries < 0 {
		cfg.MaxRetries = 0
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{}
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	return &Client{cfg: cfg}, nil
}

// Model is the model the client asks.
func (c *Client) Model() string { return c.cfg.Model }

// Message is one chat message.
type Message struct {
	Role       string     `json:"role"` // system, user, assistant, tool
	Content    string     `json:"content"`
	ToolCalls  []ToolCall `json:"tool_calls,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
}

// ToolCall is a model's request to call a function.
type ToolCall struct {
	ID       string       `json:"id"`
	Type     string       `json:"type"` // "function"
	Function FunctionCall `json:"function"`
}

// FunctionCall names the function and carries its arguments as a JSON text.
type FunctionCall struct {
	Name      string    `json:"name"`
	Arguments Arguments `json:"arguments"`
}

// Arguments is a function call's arguments as the JSON text the model wrote.
// The protocol sends them as a string; some servers send a JSON object
// instead, which decodes to its text.
type Arguments string

// UnmarshalJSON accepts a JSON string or any other JSON value.
func (a *Arguments) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*a = Arguments(s)
		return nil
	}
	if string(b) == "null" {
		*a = ""
		return nil
	}
	*a = Arguments(b)
	return nil
}

// Tool offers a function to the model.
type Tool struct {
	Type     string   `json:"type"` // "function"
	Function Function `json:"function"`
}

// Function describes a function with a JSON Schema of its parameters.
type Function struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
}

// Request is a chat-completions request. Model is filled from the Config.
type Request struct {
	Model    string    `json:"model"`
	Messages []Message `json:"messages"`
	Tools    []Tool    `json:"tools,omitempty"`
}

// Response is a chat-completions response.
type Response struct {
	ID      string   `json:"id"`
	Model   string   `json:"model"`
	Choices []Choice `json:"choices"`
	Usage   *Usage   `json:"usage,omitempty"`
}

// Choice is one of a response's alternatives; the client asks for one.
type Choice struct {
	Index        int     `json:"index"`
	Message      Message `json:"message"`
	FinishReason string  `json:"finish_reason"`
}

// Usage counts tokens, when the server reports them.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// Complete sends req and returns the model's first choice. It retries 429s,
// 5xx answers and transport errors with exponential backoff (honouring
// Retry-After) up to Config.MaxRetries times, each attempt bounded by
// Config.Timeout. Errors: errdefs.ErrUnauthenticated coded "llm_auth" for a
// 401/403, errdefs.ErrInvalidArgument coded "llm_bad_request" for other 4xx,
// errdefs.ErrUnavailable coded "llm_unavailable" once retries are spent,
// and ctx's error if it ends first. The message always names the status
// and the server's own error text, never the API key.
func (c *Client) Complete(ctx context.Context, req Request) (Choice, error) {
	req.Model = c.cfg.Model
	body, err := json.Marshal(req)
	if err != nil {
		return Choice{}, fmt.Errorf("encode chat request: %w", err)
	}
	url := c.cfg.BaseURL + "/chat/completions"
	var last error
	for attempt := 0; ; attempt++ {
		choice, status, retryAfter, err := c.attempt(ctx, url, body)
		if err == nil {
			return choice, nil
		}
		if ctx.Err() != nil {
			return Choice{}, fmt.Errorf("chat completion: %w", ctx.Err())
		}
		if !retryable(status) {
			return Choice{}, err
		}
		last = err
		if attempt >= c.cfg.MaxRetries {
			break
		}
		wait := c.backoff(attempt, retryAfter)
		c.cfg.Logger.Debug("retrying chat completion", "attempt", attempt+1, "status", status, "wait", wait)
		if c.cfg.OnRetry != nil {
			c.cfg.OnRetry(attempt+1, status, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return Choice{}, fmt.Errorf("chat completion: %w", ctx.Err())
		case <-t.C:
		}
	}
	return Choice{}, errdefs.New(errdefs.ErrUnavailable, "llm_unavailable",
		"LLM at %s failed after %d attempts: %v", c.cfg.BaseURL, c.cfg.MaxRetries+1, last)
}

// retryable says whether an attempt that ended with status (0 for a
// transport error) may be tried again.
func retryable(status int) bool {
	return status == 0 || status == http.StatusTooManyRequests || status >= 500
}

func (c *Client) backoff(attempt int, retryAfter time.Duration) time.Duration {
	if retryAfter > 0 {
		return min(retryAfter, c.cfg.MaxBackoff)
	}
	d := c.cfg.MinBackoff << min(attempt, 16)
	d = min(d, c.cfg.MaxBackoff)
	// Full jitter over the upper half, so that many clients do not retry in step.
	return d/2 + rand.N(d/2+1)
}

// attempt makes one HTTP call. It returns the HTTP status (0 for a
// transport error, -1 for an answer that is not worth retrying) and any
// Retry-After the server sent.
func (c *Client) attempt(ctx context.Context, url string, body []byte) (Choice, int, time.Duration, error) {
	actx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(actx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return Choice{}, -1, 0, errdefs.Invalid("invalid_llm_base_url", "LLM request: %v", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "application/json")
	if c.cfg.APIKey != "" {
		hreq.Header.Set("Authorization", "Bearer "+c.cfg.APIKey)
	}
	resp, err := c.cfg.HTTPClient.Do(hreq)
	if err != nil {
		if errors.Is(actx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
			return Choice{}, 0, 0, fmt.Errorf("LLM call timed out after %s", c.cfg.Timeout)
		}
		if errors.Is(err, errdefs.ErrFailedPrecondition) {
			// Refused by the caller's dialer (an address it may not
			// reach): trying again changes nothing.
			return Choice{}, -1, 0, fmt.Errorf("LLM request: %w", err)
		}
		return Choice{}, 0, 0, fmt.Errorf("LLM request: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return Choice{}, 0, 0, fmt.Errorf("read LLM response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		msg := fmt.Sprintf("LLM answered %s: %s", resp.Status, errorText(data))
		switch {
		case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
			return Choice{}, resp.StatusCode, 0, errdefs.New(errdefs.ErrUnauthenticated, "llm_auth", "%s", msg)
		case retryable(resp.StatusCode):
			return Choice{}, resp.StatusCode, parseRetryAfter(resp.Header.Get("Retry-After")), errors.New(msg)
		default:
			return Choice{}, resp.StatusCode, 0, errdefs.New(errdefs.ErrInvalidArgument, "llm_bad_request", "%s", msg)
		}
	}
	var r Response
	if err := json.Unmarshal(data, &r); err != nil {
		return Choice{}, -1, 0, errdefs.New(errdefs.ErrUnavailable, "llm_bad_response", "LLM answered with invalid JSON: %v", err)
	}
	if len(r.Choices) == 0 {
		return Choice{}, -1, 0, errdefs.New(errdefs.ErrUnavailable, "llm_bad_response", "LLM answered with no choices")
	}
	return r.Choices[0], resp.StatusCode, 0, nil
}

// errorText extracts {"error":{"message":...}} or returns the start of body.
func errorText(body []byte) string {
	var e struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil && len(e.Error) > 0 {
		var obj struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(e.Error, &obj) == nil && obj.Message != "" {
			return obj.Message
		}
		var s string
		if json.Unmarshal(e.Error, &s) == nil && s != "" {
			return s
		}
	}
	s := strings.TrimSpace(string(body))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	if s == "" {
		s = "(empty body)"
	}
	return s
}

// parseRetryAfter reads seconds or an HTTP date; 0 if absent or unreadable.
func parseRetryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}
