package conversation

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/corralhq/corral/conversation/openai"
	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/store"
)

// agentFor makes the conversation's agent with its effective LLM settings.
func (s *Service) agentFor(c store.Conversation) (Agent, error) {
	llm := s.cfg.LLM
	if c.LLMBaseURL != "" && c.LLMBaseURL != llm.BaseURL {
		// Never send the server's key to an endpoint the user chose.
		llm.BaseURL, llm.APIKey, llm.userChosen = c.LLMBaseURL, "", true
	}
	if c.LLMModel != "" {
		llm.Model = c.LLMModel
	}
	if len(c.LLMKey) > 0 {
		key, err := s.sealer.open(c.ID, c.LLMKey)
		if err != nil {
			return nil, err
		}
		llm.APIKey = string(key)
	}
	return s.cfg.NewAgent(c, llm)
}

// newOpenAIAgent is the default AgentFactory.
func (s *Service) newOpenAIAgent(c store.Conversation, llm LLMConfig) (Agent, error) {
	client, err := openai.New(openai.Config{
		BaseURL: llm.BaseURL, Model: llm.Model, APIKey: llm.APIKey,
		Timeout: s.cfg.LLMTimeout, MaxRetries: s.cfg.LLMRetries,
		MinBackoff: s.cfg.LLMMinBackoff, MaxBackoff: s.cfg.LLMMaxBackoff,
		HTTPClient: s.llmHTTPClient(llm.userChosen),
		Logger:     s.log.Named("llm").With("conversation_id", c.ID),
	})
	if err != nil {
		return nil, err
	}
	return &OpenAIAgent{Client: client, SystemPrompt: s.cfg.SystemPrompt}, nil
}

// llmHTTPClient is the client for the default agent. The server's own
// endpoint (Config.LLM, the operator's choice) uses Config.HTTPClient as
// is. An endpoint a user chose gets a client that ignores proxy settings,
// so that the check applies to the endpoint itself, and refuses to connect
// to denied addresses (policy.CheckAddress): loopback and this machine's
// own addresses always; link-local, private and metadata ranges unless the
// operator allows private endpoints (AllowPrivateLLMOverride).
func (s *Service) llmHTTPClient(userChosen bool) *http.Client {
	if !userChosen {
		return s.cfg.HTTPClient
	}
	s.guardOnce.Do(func() {
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second,
			Control: denyAddress(s.cfg.AllowPrivateLLMOverride)}
		s.guarded = &http.Client{Transport: &http.Transport{
			DialContext: d.DialContext, ForceAttemptHTTP2: true, MaxIdleConns: 100,
			IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: 10 * time.Second,
		}}
	})
	return s.guarded
}

// denyAddress returns a net.Dialer Control that applies the server's one
// outbound address policy (policy.CheckAddress with allowPrivate) to the
// address each connection dials, so a name that resolves differently by
// the time it is dialled cannot slip through. Refusals carry the code
// "llm_address_denied".
func denyAddress(allowPrivate bool) func(network, address string, c syscall.RawConn) error {
	check := policy.DialControl(allowPrivate)
	return func(network, address string, c syscall.RawConn) error {
		if err := check(network, address, c); err != nil {
			if allowPrivate {
				return errdefs.New(errdefs.ErrFailedPrecondition, "llm_address_denied",
					"LLM endpoint %s refused: %v; loopback and this server's own addresses are never allowed", address, err)
			}
			return errdefs.New(errdefs.ErrFailedPrecondition, "llm_address_denied",
				"LLM endpoint %s refused: %v; conversations may not use it unless the operator allows private endpoints (CORRAL_LLM_ALLOW_PRIVATE)", address, err)
		}
		return nil
	}
}

// OpenAIAgent is the default agent: each step is one chat-completions call
// with the conversation so far and the tools.
type OpenAIAgent struct {
	Client       *openai.Client
	SystemPrompt string
}

var _ Agent = (*OpenAIAgent)(nil)

// Next asks the model for its next step. Errors are the client's (see
// openai.Client.Complete).
func (a *OpenAIAgent) Next(ctx context.Context, turn Turn) (Step, error) {
	req := openai.Request{Messages: ChatMessages(a.SystemPrompt, turn.History)}
	for _, t := range turn.Tools {
		req.Tools = append(req.Tools, openai.Tool{Type: "function",
			Function: openai.Function{Name: t.Name, Description: t.Description, Parameters: t.Parameters}})
	}
	choice, err := a.Client.Complete(ctx, req)
	if err != nil {
		return Step{}, err
	}
	step := Step{Message: choice.Message.Content}
	for _, tc := range choice.Message.ToolCalls {
		args := json.RawMessage(tc.Function.Arguments)
		if strings.TrimSpace(string(args)) == "" {
			args = json.RawMessage("{}")
		}
		step.Calls = append(step.Calls, ToolCall{ID: tc.ID, Name: tc.Function.Name, Arguments: args})
	}
	return step, nil
}

// ChatMessages turns a conversation's history into chat messages: user and
// agent messages, one assistant message per step with its tool calls, and
// one tool message per observation. The protocol wants every tool call
// answered right after the assistant message that made it, so user messages
// sent while calls were running are moved after their answers, and calls
// that never got one (the run was cut short) are answered as interrupted.
func ChatMessages(system string, history []store.Event) []openai.Message {
	var msgs []openai.Message
	if system != "" {
		msgs = append(msgs, openai.Message{Role: "system", Content: system})
	}
	var open []string // calls of the last assistant message without an answer
	var deferred []openai.Message
	closeOpen := func() {
		for _, id := range open {
			msgs = append(msgs, openai.Message{Role: "tool", ToolCallID: id,
				Content: "no result: the action was interrupted before it finished"})
		}
		open = nil
		msgs = append(msgs, deferred...)
		deferred = nil
	}
	for _, e := range history {
		switch e.Kind {
		case KindMessage:
			var p MessagePayload
			if json.Unmarshal(e.Payload, &p) != nil {
				continue
			}
			if e.Source == SourceUser {
				m := openai.Message{Role: "user", Content: p.Content}
				if len(open) > 0 {
					deferred = append(deferred, m)
				} else {
					msgs = append(msgs, m)
				}
				continue
			}
			closeOpen()
			msgs = append(msgs, openai.Message{Role: "assistant", Content: p.Content})
		case KindAction:
			var p ActionPayload
			if json.Unmarshal(e.Payload, &p) != nil {
				continue
			}
			args := string(p.Arguments)
			var s string
			if json.Unmarshal(p.Arguments, &s) == nil {
				args = s // arguments that were not JSON, kept as the model wrote them
			}
			call := openai.ToolCall{ID: p.CallID, Type: "function",
				Function: openai.FunctionCall{Name: p.Tool, Arguments: openai.Arguments(args)}}
			// A call joins the assistant message of its step unless that
			// message's calls have started being answered.
			last := len(msgs) - 1
			if last >= 0 && msgs[last].Role == "assistant" && (len(open) > 0 || len(msgs[last].ToolCalls) == 0) {
				msgs[last].ToolCalls = append(msgs[last].ToolCalls, call)
			} else {
				closeOpen()
				msgs = append(msgs, openai.Message{Role: "assistant", ToolCalls: []openai.ToolCall{call}})
			}
			open = append(open, p.CallID)
		case KindObservation:
			var p ObservationPayload
			if json.Unmarshal(e.Payload, &p) != nil {
				continue
			}
			i := indexOf(open, p.CallID)
			if i < 0 {
				continue // an answer to no open call would be rejected
			}
			// Answers go in the order of the calls; execution is in that
			// order too, so this only removes the answered call.
			open = append(open[:i:i], open[i+1:]...)
			msgs = append(msgs, openai.Message{Role: "tool", ToolCallID: p.CallID, Content: RenderObservation(p)})
			if len(open) == 0 {
				msgs = append(msgs, deferred...)
				deferred = nil
			}
		case KindState:
			// A run ended or began: whatever it left unanswered stays so.
			if len(open) > 0 {
				closeOpen()
			}
		}
	}
	closeOpen()
	return msgs
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// RenderObservation is how an observation reads to the model.
func RenderObservation(p ObservationPayload) string {
	var b strings.Builder
	if p.Tool == ToolRunCommand {
		fmt.Fprintf(&b, "exit code: %d\n", p.ExitCode)
		if p.TimedOut {
			b.WriteString("the command timed out and was killed\n")
		}
		if p.Signal != "" {
			fmt.Fprintf(&b, "killed by %s\n", p.Signal)
		}
	}
	if p.Error != "" {
		fmt.Fprintf(&b, "error: %s\n", p.Error)
	}
	b.WriteString(p.Output)
	if p.Truncated {
		b.WriteString("\n[output truncated]")
	}
	if p.Interrupted {
		b.WriteString("\n[interrupted by the user]")
	}
	return b.String()
}
