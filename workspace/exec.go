package workspace

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/store"
)

// Command is a command as clients give it: a shell string run with
// /bin/sh -c, or an argv.
type Command struct {
	Command string            `json:"command,omitempty"`
	Argv    []string          `json:"argv,omitempty"`
	Cwd     string            `json:"cwd,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	Timeout policy.Duration   `json:"timeout,omitempty"`
}

// ExecSpec validates c and turns it into a runtime.ExecSpec (without I/O).
func (c Command) ExecSpec() (runtime.ExecSpec, error) {
	var argv []string
	switch {
	case c.Command != "" && len(c.Argv) > 0:
		return runtime.ExecSpec{}, errdefs.Invalid("invalid_command", "give either command or argv, not both")
	case c.Command != "":
		argv = []string{"/bin/sh", "-c", c.Command}
	case len(c.Argv) > 0 && c.Argv[0] != "":
		argv = c.Argv
	default:
		return runtime.ExecSpec{}, errdefs.Invalid("invalid_command", "command or argv is required")
	}
	for _, a := range argv {
		if strings.ContainsRune(a, 0) {
			return runtime.ExecSpec{}, errdefs.Invalid("invalid_command", "arguments must not contain NUL bytes")
		}
	}
	if err := validateEnv(c.Env); err != nil {
		return runtime.ExecSpec{}, err
	}
	cwd, err := runtime.CleanPath(c.Cwd)
	if err != nil {
		return runtime.ExecSpec{}, err
	}
	return runtime.ExecSpec{Argv: argv, Cwd: cwd, Env: c.Env, Timeout: time.Duration(c.Timeout)}, nil
}

// Exec starts a command in a user's workspace, starting the workspace if it
// was stopped. The workspace's default timeout applies when spec sets none;
// no command may run longer than the server's maximum. The workspace counts
// as in use until the command's Process.Wait returns.
func (m *Manager) Exec(ctx context.Context, userID, id string, spec runtime.ExecSpec) (runtime.Process, error) {
	return m.exec(ctx, userID, id, spec, nil)
}

// exec is Exec; prepare, if set, adjusts the spec once the workspace's
// settings are known (one store lookup per command, not two).
func (m *Manager) exec(ctx context.Context, userID, id string, spec runtime.ExecSpec, prepare func(stored, *runtime.ExecSpec)) (runtime.Process, error) {
	// Busy before it is known to be running, so that an idle stop either
	// ends before ensureRunning looks (which then starts it again) or sees
	// the command coming and leaves the workspace alone.
	// Not counted as a use until ownership is checked: another user's
	// attempt must not keep a workspace from its idle stop.
	m.begin(id)
	_, st, err := m.ensureRunning(ctx, userID, id)
	if err != nil {
		m.unbegin(id)
		return nil, err
	}
	m.touch(id)
	if prepare != nil {
		prepare(st, &spec)
	}
	max := time.Duration(m.policy.Max.Timeout)
	if spec.Timeout == 0 {
		spec.Timeout = time.Duration(st.Policy.Limits.Timeout)
	}
	if max > 0 && spec.Timeout > max {
		m.end(id)
		return nil, errdefs.Invalid("limit_exceeds_max", "timeout %s exceeds this server's maximum of %s", spec.Timeout, max)
	}
	p, err := m.rt.Exec(ctx, id, spec)
	if errors.Is(err, errdefs.ErrFailedPrecondition) || errors.Is(err, errdefs.ErrNotFound) {
		// The store says running, the sandbox is not: it died. Restart
		// it with its files, or mark the workspace errored, and try once
		// more.
		if herr := m.heal(ctx, id); herr != nil {
			m.end(id)
			return nil, herr
		}
		p, err = m.rt.Exec(ctx, id, spec)
	}
	if err != nil {
		m.end(id)
		return nil, fmt.Errorf("exec in %s: %w", id, err)
	}
	return &trackedProcess{Process: p, done: func() { m.end(id) }}, nil
}

// begin and end count running commands, so that an idle workspace is never
// stopped under one; end records the last use. unbegin undoes a begin
// whose command never started, without recording a use.
func (m *Manager) begin(id string) {
	m.mu.Lock()
	m.busy[id]++
	m.mu.Unlock()
}

func (m *Manager) unbegin(id string) {
	m.mu.Lock()
	if m.busy[id]--; m.busy[id] <= 0 {
		delete(m.busy, id)
	}
	m.mu.Unlock()
}

func (m *Manager) end(id string) {
	m.mu.Lock()
	if m.busy[id]--; m.busy[id] <= 0 {
		delete(m.busy, id)
	}
	m.used[id] = time.Now()
	m.mu.Unlock()
}

type trackedProcess struct {
	runtime.Process
	once sync.Once // Wait may be called more than once; count the end once
	done func()
}

func (p *trackedProcess) Wait() (runtime.ExitResult, error) {
	res, err := p.Process.Wait()
	p.once.Do(p.done)
	return res, err
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

// Execute runs a one-shot command and returns its exit result and output,
// each stream capped at the workspace's output limit.
func (m *Manager) Execute(ctx context.Context, user store.User, id string, req ExecuteRequest) (ExecuteResult, error) {
	spec, err := req.ExecSpec()
	if err != nil {
		return ExecuteResult{}, err
	}
	var stdout, stderr *runtime.Output
	if req.Stdin != "" {
		spec.Stdin = strings.NewReader(req.Stdin)
	}
	start := time.Now()
	p, err := m.exec(ctx, user.ID, id, spec, func(st stored, spec *runtime.ExecSpec) {
		limit := int(st.Policy.Limits.Output)
		stdout, stderr = runtime.NewOutput(limit), runtime.NewOutput(limit)
		spec.Stdout, spec.Stderr = stdout, stderr
	})
	if err != nil {
		return ExecuteResult{}, err
	}
	res, err := p.Wait()
	if err != nil {
		if ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		return ExecuteResult{}, fmt.Errorf("wait for command in %s: %w", id, err)
	}
	dur := time.Since(start)
	rec := store.ExecRecord{
		WorkspaceID: id, UserID: user.ID, Argv: spec.Argv, ExitCode: res.ExitCode, Signal: string(res.Signal),
		TimedOut: res.TimedOut, OOMKilled: res.OOMKilled, DurationMS: dur.Milliseconds(), StartedAt: start.UTC(),
	}
	m.record(rec)
	if cause := context.Cause(ctx); ctx.Err() != nil && errors.Is(cause, errdefs.ErrUnavailable) {
		// Cut off by the server (shutting down): the command was killed,
		// and its result is not the command's own.
		return ExecuteResult{}, fmt.Errorf("command in %s cut off: %w", id, cause)
	}
	return ExecuteResult{
		ExitCode: res.ExitCode, Stdout: stdout.String(), Stderr: stderr.String(),
		Truncated: stdout.Truncated() || stderr.Truncated(), TimedOut: res.TimedOut,
		OOMKilled: res.OOMKilled, Signal: string(res.Signal), DurationMS: dur.Milliseconds(),
	}, nil
}

// record writes an exec record after the answer has gone, unless too many
// are being written already, when it writes it before (so they never pile
// up). Close waits for them.
func (m *Manager) record(rec store.ExecRecord) {
	write := func() {
		if err := m.db.RecordExec(context.Background(), rec); err != nil {
			m.log.Warn("record exec", "workspace_id", rec.WorkspaceID, "error", err)
		}
	}
	select {
	case m.writers <- struct{}{}:
		m.records.Add(1)
		go func() {
			defer m.records.Done()
			defer func() { <-m.writers }()
			write()
		}()
	default:
		write()
	}
}
