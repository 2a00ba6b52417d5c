package conversation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/store"
)

// The tools the Service executes.
const (
	ToolRunCommand = "run_command"
	ToolReadFile   = "read_file"
	ToolWriteFile  = "write_file"
	ToolFinish     = "finish"
)

// Tools are the tools offered to every agent.
var Tools = []Tool{
	{
		Name:        ToolRunCommand,
		Description: "Run a shell command (/bin/sh -c) in the workspace and return its exit code and output (stdout and stderr).",
		Parameters: json.RawMessage(`{"type":"object","properties":{` +
			`"command":{"type":"string","description":"the shell command"},` +
			`"cwd":{"type":"string","description":"working directory relative to the workspace root (default: the root)"},` +
			`"timeout_seconds":{"type":"integer","description":"kill the command after this many seconds"}},` +
			`"required":["command"]}`),
	},
	{
		Name:        ToolReadFile,
		Description: "Read a text file of the workspace.",
		Parameters:  json.RawMessage(`{"type":"object","properties":{"path":{"type":"string","description":"path relative to the workspace root"}},"required":["path"]}`),
	},
	{
		Name:        ToolWriteFile,
		Description: "Write (create or replace) a file of the workspace; parent directories are created.",
		Parameters: json.RawMessage(`{"type":"object","properties":{"path":{"type":"string","description":"path relative to the workspace root"},` +
			`"content":{"type":"string","description":"the whole new content"}},"required":["path","content"]}`),
	},
	{
		Name:        ToolFinish,
		Description: "Say that the task is done.",
		Parameters:  json.RawMessage(`{"type":"object","properties":{"summary":{"type":"string","description":"what was done, for the user"}}}`),
	},
}

// runAgent is the agent's loop for one run: step, execute the calls, repeat
// until the agent waits for the user, finishes, fails, runs out of steps or
// is cancelled. It always ends the run with a state event.
func (s *Service) runAgent(ctx context.Context, l *live, c store.Conversation, r *run) {
	defer s.wg.Done()
	defer s.release(l)
	defer r.cancel()
	log := s.log.With("conversation_id", c.ID)
	log.Debug("agent run started")

	agent, err := s.agentFor(c)
	if err != nil {
		s.finishRun(l, r, StateError, errorEvent(err))
		return
	}
	steps := 0
	for {
		if ctx.Err() != nil {
			s.finishRun(l, r, StateInterrupted)
			return
		}
		l.mu.Lock()
		fresh := r.pending
		r.pending = false
		l.mu.Unlock()
		if fresh {
			steps = 0 // the step budget is per user message
		}
		if steps >= s.cfg.MaxSteps {
			s.finishRun(l, r, StateError, errorEvent(errdefs.New(errdefs.ErrFailedPrecondition, "max_steps",
				"the agent took %d steps without finishing; send a message to let it continue", s.cfg.MaxSteps)))
			return
		}
		history, err := s.history(ctx, c.ID)
		if err != nil {
			if ctx.Err() != nil {
				continue
			}
			s.finishRun(l, r, StateError, errorEvent(err))
			return
		}
		step, err := agent.Next(ctx, Turn{ConversationID: c.ID, WorkspaceID: c.WorkspaceID, History: history, Tools: Tools})
		if err != nil {
			if ctx.Err() != nil {
				continue
			}
			log.Debug("agent failed", "error", err)
			s.finishRun(l, r, StateError, errorEvent(fmt.Errorf("agent: %w", err)))
			return
		}
		steps++
		if step.Message != "" {
			if !s.emit(l, r, event(SourceAgent, KindMessage, MessagePayload{Content: step.Message})) {
				return
			}
		}
		if len(step.Calls) == 0 {
			if s.finishUnlessPending(l, r, StateWaiting) {
				return
			}
			continue
		}
		finished := false
		for _, call := range step.Calls {
			if ctx.Err() != nil {
				break
			}
			if call.ID == "" {
				call.ID = store.NewID("call")
			}
			args := call.Arguments
			if !json.Valid(args) {
				args, _ = json.Marshal(string(call.Arguments))
			}
			if !s.emit(l, r, event(SourceAgent, KindAction, ActionPayload{CallID: call.ID, Tool: call.Name, Arguments: args})) {
				return
			}
			obs, summary := s.execute(ctx, l, c, call)
			if !s.emit(l, r, event(SourceWorkspace, KindObservation, obs)) {
				return
			}
			if call.Name == ToolFinish && obs.Error == "" {
				if summary != "" && !s.emit(l, r, event(SourceAgent, KindMessage, MessagePayload{Content: summary})) {
					return
				}
				finished = true
				break
			}
		}
		if finished && s.finishUnlessPending(l, r, StateFinished) {
			return
		}
	}
}

// emit appends events for a run. If that fails, it ends the run (in state
// error if the conversation still exists) and returns false.
func (s *Service) emit(l *live, r *run, evs ...store.Event) bool {
	if _, err := s.append(context.Background(), l, "", evs...); err != nil {
		s.finishRun(l, r, StateError, errorEvent(err))
		return false
	}
	return true
}

// finishRun ends the run with a state event (after extra events), under
// l.mu so that a message sent at the same moment either is seen by this
// run or starts the next one.
func (s *Service) finishRun(l *live, r *run, state State, extra ...store.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s.finishRunLocked(l, r, state, extra...)
}

func (s *Service) finishRunLocked(l *live, r *run, state State, extra ...store.Event) {
	reason := ""
	if state == StateInterrupted {
		reason = r.reason
	}
	evs := append(extra, stateEvent(state, reason))
	if _, err := s.appendLocked(context.Background(), l, state, evs...); errors.Is(err, errdefs.ErrNotFound) {
		// Deleted under the run (with its workspace): tell the subscribers.
		for sub := range l.subs {
			sub.endLocked(errDeleted(l.id))
		}
	} else if err != nil {
		// Nobody to return this to: the run belongs to no request.
		s.log.Error("record the end of an agent run", "conversation_id", l.id, "state", state, "error", err)
	}
	l.run = nil
	close(r.done)
	s.log.Debug("agent run ended", "conversation_id", l.id, "state", state)
}

// finishUnlessPending ends the run in state unless a user message arrived
// that the agent has not seen; it reports whether it ended the run.
func (s *Service) finishUnlessPending(l *live, r *run, state State) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r.pending {
		return false
	}
	s.finishRunLocked(l, r, state)
	return true
}

// history returns the conversation's events without output events.
func (s *Service) history(ctx context.Context, id string) ([]store.Event, error) {
	var out []store.Event
	for after := int64(0); ; {
		page, err := s.db.ListEventsExcept(ctx, id, after, store.MaxPageSize, KindOutput)
		if err != nil {
			return nil, fmt.Errorf("load history of conversation %s: %w", id, err)
		}
		out = append(out, page...)
		if len(page) < store.MaxPageSize {
			return out, nil
		}
		after = page[len(page)-1].Seq
	}
}

// execute runs one tool call in the workspace. Failures of the tool are
// reported in the observation for the agent to read, never as errors.
func (s *Service) execute(ctx context.Context, l *live, c store.Conversation, call ToolCall) (obs ObservationPayload, summary string) {
	obs = ObservationPayload{CallID: call.ID, Tool: call.Name}
	fail := func(format string, args ...any) (ObservationPayload, string) {
		obs.ExitCode, obs.Error = 1, fmt.Sprintf(format, args...)
		if ctx.Err() != nil {
			obs.Interrupted = true
		}
		return obs, ""
	}
	var args struct {
		Command        string  `json:"command"`
		Cwd            string  `json:"cwd"`
		TimeoutSeconds float64 `json:"timeout_seconds"`
		Path           string  `json:"path"`
		Content        *string `json:"content"`
		Summary        string  `json:"summary"`
	}
	if len(call.Arguments) > 0 {
		if err := json.Unmarshal(call.Arguments, &args); err != nil {
			return fail("arguments of %s are not a valid JSON object: %v", call.Name, err)
		}
	}
	switch call.Name {
	case ToolRunCommand:
		if strings.TrimSpace(args.Command) == "" {
			return fail("run_command needs a command")
		}
		return s.runCommand(ctx, l, c, call.ID, args.Command, args.Cwd, time.Duration(args.TimeoutSeconds*float64(time.Second))), ""
	case ToolReadFile:
		if args.Path == "" {
			return fail("read_file needs a path")
		}
		max := s.cfg.ObservationBytes
		data, err := s.ws.ReadFile(ctx, c.UserID, c.WorkspaceID, args.Path, int64(max)+1)
		if errors.Is(err, errdefs.ErrTooLarge) {
			return fail("%s is larger than %d bytes; read parts of it with run_command (head, tail, sed -n)", args.Path, max)
		}
		if err != nil {
			return fail("read %s: %v", args.Path, err)
		}
		if len(data) > max {
			data, obs.Truncated = data[:max], true
		}
		obs.Output = string(data)
		return obs, ""
	case ToolWriteFile:
		if args.Path == "" || args.Content == nil {
			return fail("write_file needs a path and a content")
		}
		if err := s.ws.WriteFile(ctx, c.UserID, c.WorkspaceID, args.Path, []byte(*args.Content)); err != nil {
			return fail("write %s: %v", args.Path, err)
		}
		obs.Output = fmt.Sprintf("wrote %d bytes to %s", len(*args.Content), args.Path)
		return obs, ""
	case ToolFinish:
		obs.Output = "finished"
		return obs, args.Summary
	}
	return fail("unknown tool %q; the tools are run_command, read_file, write_file and finish", call.Name)
}

// runCommand runs a shell command, streaming its output as output events
// while keeping the first ObservationBytes for the observation.
func (s *Service) runCommand(ctx context.Context, l *live, c store.Conversation, callID, command, cwd string, timeout time.Duration) ObservationPayload {
	obs := ObservationPayload{CallID: callID, Tool: ToolRunCommand}
	if s.cfg.CommandTimeout > 0 && (timeout <= 0 || timeout > s.cfg.CommandTimeout) {
		timeout = s.cfg.CommandTimeout
	}
	kept := runtime.NewOutput(s.cfg.ObservationBytes)
	budget := &streamBudget{left: s.cfg.StreamedOutputBytes}
	stdout := &outputStream{s: s, l: l, callID: callID, stream: "stdout", budget: budget}
	stderr := &outputStream{s: s, l: l, callID: callID, stream: "stderr", budget: budget}
	p, err := s.ws.Exec(ctx, c.UserID, c.WorkspaceID, runtime.ExecSpec{
		Argv:    []string{"/bin/sh", "-c", command},
		Cwd:     cwd,
		Timeout: timeout,
		Stdout:  io.MultiWriter(kept, stdout),
		Stderr:  io.MultiWriter(kept, stderr),
	})
	if err != nil {
		obs.ExitCode, obs.Error, obs.Interrupted = -1, fmt.Sprintf("could not run the command: %v", err), ctx.Err() != nil
		return obs
	}
	// Output is flushed as it comes in 4 KiB chunks, and at least every
	// 100ms, so a slow trickle still streams.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				stdout.flush(false)
				stderr.flush(false)
			}
		}
	}()
	res, err := p.Wait()
	close(stop)
	wg.Wait()
	stdout.flush(true)
	stderr.flush(true)

	obs.Output, obs.Truncated = kept.String(), kept.Truncated() || budget.exceeded()
	if err != nil {
		obs.ExitCode, obs.Error = -1, fmt.Sprintf("lost the command: %v", err)
	} else {
		obs.ExitCode, obs.TimedOut, obs.Signal = res.ExitCode, res.TimedOut, string(res.Signal)
	}
	obs.Interrupted = ctx.Err() != nil
	return obs
}

// streamBudget bounds the output events of one action, across its streams.
type streamBudget struct {
	mu      sync.Mutex
	left    int
	dropped int
}

// take returns how many of n bytes may still be streamed.
func (b *streamBudget) take(n int) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := min(n, b.left)
	b.left -= k
	b.dropped += n - k
	return k
}

func (b *streamBudget) exceeded() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dropped > 0
}

// outputStream turns a command's stdout or stderr into output events. It
// never fails a write: output past the budget, or that cannot be stored,
// is dropped so the command is never stalled by its audience.
type outputStream struct {
	s      *Service
	l      *live
	callID string
	stream string
	budget *streamBudget

	mu  sync.Mutex
	buf []byte
}

const outputChunk = 4 << 10

func (o *outputStream) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	k := o.budget.take(len(p))
	o.buf = append(o.buf, p[:k]...)
	if len(o.buf) >= outputChunk {
		o.flushLocked(false)
	}
	return len(p), nil
}

func (o *outputStream) flush(final bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.flushLocked(final)
}

// flushLocked emits what is buffered as one event. Unless final, an
// incomplete UTF-8 sequence at the end waits for the next flush so that a
// character is never split across events.
func (o *outputStream) flushLocked(final bool) {
	n := len(o.buf)
	if !final {
		n = completeUTF8(o.buf)
	}
	if n == 0 {
		return
	}
	data := string(o.buf[:n])
	o.buf = append(o.buf[:0], o.buf[n:]...)
	if _, err := o.s.append(context.Background(), o.l, "", event(SourceWorkspace, KindOutput,
		OutputPayload{CallID: o.callID, Stream: o.stream, Data: data})); err != nil {
		o.s.log.Warn("dropped command output", "conversation_id", o.l.id, "call_id", o.callID, "error", err)
	}
}

// completeUTF8 returns the length of b without a trailing incomplete UTF-8
// sequence (at most 3 bytes are held back).
func completeUTF8(b []byte) int {
	for i := 1; i <= 3 && i <= len(b); i++ {
		c := b[len(b)-i]
		if c < 0x80 {
			return len(b)
		}
		if utf8.RuneStart(c) {
			if utf8.FullRune(b[len(b)-i:]) {
				return len(b)
			}
			return len(b) - i
		}
	}
	return len(b)
}
