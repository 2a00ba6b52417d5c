// Package workspace ties the store, the policy layer and a runtime together:
// it is the one place that creates, starts on use, stops when idle, deletes
// and reconciles workspaces, so that the API (and the conversation engine)
// only ever ask for what a user wants done.
package workspace

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/store"
)

// States a workspace can be in, as stored and shown to clients.
const (
	StateCreating = "creating"
	StateRunning  = "running"
	StateStopped  = "stopped"
	StateError    = "error"
	StateDeleting = "deleting"
)

// Spec is what a client asks for in POST /workspaces.
type Spec struct {
	Image   string            `json:"image,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	Limits  policy.Limits     `json:"limits"`
	Network policy.Network    `json:"network"`
}

// Workspace is a workspace as clients see it.
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

// Proxy serves the egress proxy sockets of allowlist workspaces.
type Proxy interface {
	// Open starts (or updates) the proxy of a workspace and returns the
	// host path of its unix socket. Idempotent.
	Open(workspaceID string, allowed []string) (socketPath string, err error)
	// Close stops it and removes the socket. Idempotent.
	Close(workspaceID string) error
}

// Config configures a Manager.
type Config struct {
	DB      *store.DB
	Runtime runtime.Runtime
	Policy  policy.Config
	// Proxy is required for network mode allowlist; nil refuses it.
	Proxy  Proxy
	Logger hclog.Logger
	// DefaultImage is used when a request names none.
	DefaultImage string
}

// Manager runs workspaces for users. Safe for concurrent use.
type Manager struct {
	db     *store.DB
	rt     runtime.Runtime
	policy policy.Config
	proxy  Proxy
	log    hclog.Logger
	image  string

	mu    sync.Mutex
	locks map[string]*sync.Mutex // serialises state changes per workspace
	busy  map[string]int         // running commands per workspace
	used  map[string]time.Time   // last use, flushed to the store by Run

	beforeDelete func(ctx context.Context, userID, workspaceID string) error

	specs map[string]stored // decoded specs: immutable after creation

	// pending holds the workspaces a create or delete is under way for in
	// this process; Check leaves their rows alone.
	pending map[string]bool

	// Exec records are written after the command's answer, off the
	// request path; Close waits for them.
	records sync.WaitGroup
	writers chan struct{} // bounds the records being written at once
}

// OnDelete sets a function called before a workspace is deleted, by a
// client or at the end of its lifetime, to let go of what refers to it (its
// conversations). An error stops the deletion. Set it before serving.
func (m *Manager) OnDelete(f func(ctx context.Context, userID, workspaceID string) error) {
	m.beforeDelete = f
}

// New returns a Manager. Defaults in cfg.Policy that the runtime cannot
// enforce on this host are dropped with a warning, so that defaults alone
// never make every request fail; what a client asks for explicitly is still
// refused when it cannot be enforced.
func New(cfg Config) *Manager {
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	pol := cfg.Policy
	defaults, dropped := cfg.Runtime.Capabilities().Policy.Enforceable(pol.Defaults)
	if len(dropped) > 0 {
		log.Warn("runtime cannot enforce some default limits on this host; workspaces get them only if the runtime can", "runtime", cfg.Runtime.Name(), "dropped", dropped)
	}
	pol.Defaults = defaults
	pol.DefaultNetwork = enforceableDefaultNetwork(pol.DefaultNetwork, cfg.Runtime, log)
	return &Manager{
		db: cfg.DB, rt: cfg.Runtime, policy: pol, proxy: cfg.Proxy, log: log, image: cfg.DefaultImage,
		locks: map[string]*sync.Mutex{}, busy: map[string]int{}, used: map[string]time.Time{},
		specs: map[string]stored{}, pending: map[string]bool{}, writers: make(chan struct{}, 64),
	}
}

// enforceableDefaultNetwork returns the default network mode m, or none if
// the runtime cannot enforce m on this host (logged at Warn with the
// runtime's reason): requests that name no mode then still work, and never
// fall back to a network the runtime cannot isolate.
func enforceableDefaultNetwork(m policy.Mode, rt runtime.Runtime, log hclog.Logger) policy.Mode {
	if m == "" {
		m = policy.NetworkOpen
	}
	s := rt.Capabilities().Policy
	if s.SupportsNetwork(m) {
		return m
	}
	log.Warn("runtime cannot enforce the default network mode on this host; workspaces that name no mode get none",
		"runtime", rt.Name(), "default_network", m, "reason", s.Why["network:"+string(m)])
	return policy.NetworkNone
}

// Runtime returns the runtime the manager runs workspaces with.
func (m *Manager) Runtime() runtime.Runtime { return m.rt }

var envKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func validateEnv(env map[string]string) error {
	for k, v := range env {
		if !envKey.MatchString(k) {
			return errdefs.Invalid("invalid_env", "environment variable name %q is not valid", k)
		}
		if strings.ContainsRune(v, 0) {
			// No exec can pass it: every command would fail.
			return errdefs.Invalid("invalid_env", "environment variable %q contains a NUL byte", k)
		}
		if len(k)+len(v) > 32<<10 {
			return errdefs.Invalid("invalid_env", "environment variable %q is too long", k)
		}
	}
	if len(env) > 256 {
		return errdefs.Invalid("invalid_env", "too many environment variables (%d, at most 256)", len(env))
	}
	return nil
}

// stored is what the store keeps as a workspace's opaque spec.
type stored struct {
	Env    map[string]string `json:"env,omitempty"`
	Policy policy.Policy     `json:"policy"`
}

// Create validates spec, resolves its policy against the operator's config,
// refuses what the runtime cannot enforce, and creates and starts the
// workspace. progress, if not nil, receives image pull updates. On any
// failure nothing is left behind: no row, no sandbox, no proxy socket.
func (m *Manager) Create(ctx context.Context, user store.User, spec Spec, progress func(runtime.PullProgress)) (Workspace, error) {
	if err := validateEnv(spec.Env); err != nil {
		return Workspace{}, err
	}
	pol, err := m.policy.Resolve(policy.Policy{Limits: spec.Limits, Network: spec.Network})
	if err != nil {
		return Workspace{}, err
	}
	if err := policy.Check(m.rt.Name(), pol, m.rt.Capabilities().Policy); err != nil {
		return Workspace{}, err
	}
	if pol.Network.Mode == policy.NetworkAllowlist && m.proxy == nil {
		return Workspace{}, errdefs.New(errdefs.ErrFailedPrecondition, "unsupported_network", "this server has no egress proxy for network mode allowlist")
	}
	image := spec.Image
	if image == "" {
		image = m.image
	}
	if _, ok := m.rt.(runtime.ImagePuller); !ok {
		image = "" // a runtime without images (process) ignores it
	}
	if len(image) > 512 {
		return Workspace{}, errdefs.Invalid("invalid_image", "image name is too long")
	}
	raw, err := json.Marshal(stored{Env: spec.Env, Policy: pol})
	if err != nil {
		return Workspace{}, fmt.Errorf("encode workspace spec: %w", err)
	}
	// Store only what reads back: a spec that cannot be decoded would make
	// the workspace unreadable from then on.
	if _, err := decode(store.Workspace{ID: "new workspace", Spec: raw}); err != nil {
		return Workspace{}, err
	}
	now := time.Now().UTC()
	row := store.Workspace{
		ID: store.NewID("ws"), UserID: user.ID, Runtime: m.rt.Name(), Image: image,
		State: StateCreating, Spec: raw, CreatedAt: now, UpdatedAt: now, LastUsedAt: now,
	}
	m.setPending(row.ID)
	defer m.clearPending(row.ID)
	if err := m.db.CreateWorkspace(ctx, row); err != nil {
		return Workspace{}, fmt.Errorf("create workspace: %w", err)
	}
	if err := m.provision(ctx, row, spec.Env, pol, progress); err != nil {
		// Clean up even if the client went away mid-create.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if rerr := m.destroy(cctx, row.ID); rerr != nil {
			// The engine may be down: Check finishes the removal when
			// it answers again (or Reconcile at the next start).
			m.log.Error("cleanup after failed create; retried later", "workspace_id", row.ID, "error", rerr)
			if serr := m.db.SetWorkspaceState(cctx, row.ID, StateDeleting, reasonDeleting); serr != nil {
				m.log.Error("mark failed create for removal", "workspace_id", row.ID, "error", serr)
			}
		}
		return Workspace{}, err
	}
	row.State = StateRunning
	_ = m.db.Audit(ctx, user.ID, "workspace.create", row.ID, "")
	m.log.Info("workspace created", "workspace_id", row.ID, "user", user.Name, "network", pol.Network.Mode)
	return view(row)
}

func (m *Manager) provision(ctx context.Context, row store.Workspace, env map[string]string, pol policy.Policy, progress func(runtime.PullProgress)) error {
	rs := runtime.Spec{ID: row.ID, Image: row.Image, Env: env, Policy: pol, Labels: map[string]string{"dev.corral.user": row.UserID}}
	if pol.Network.Mode == policy.NetworkAllowlist {
		sock, err := m.proxy.Open(row.ID, pol.Network.AllowedHosts)
		if err != nil {
			return fmt.Errorf("open egress proxy for %s: %w", row.ID, err)
		}
		rs.ProxySocket = sock
	}
	if p, ok := m.rt.(runtime.ImagePuller); ok && row.Image != "" {
		if err := p.Pull(ctx, row.Image, progress); err != nil {
			return fmt.Errorf("pull image %s: %w", row.Image, err)
		}
	}
	if err := m.rt.Create(ctx, rs); err != nil {
		return fmt.Errorf("create sandbox for %s: %w", row.ID, err)
	}
	if err := m.rt.Start(ctx, row.ID); err != nil {
		return fmt.Errorf("start sandbox for %s: %w", row.ID, err)
	}
	return m.db.SetWorkspaceState(ctx, row.ID, StateRunning, "")
}

// destroy removes everything a workspace has: sandbox, proxy, row.
func (m *Manager) destroy(ctx context.Context, id string) error {
	if err := m.rt.Remove(ctx, id); err != nil {
		return fmt.Errorf("remove sandbox %s: %w", id, err)
	}
	if m.proxy != nil {
		if err := m.proxy.Close(id); err != nil {
			return fmt.Errorf("close egress proxy of %s: %w", id, err)
		}
	}
	m.mu.Lock()
	delete(m.used, id)
	delete(m.locks, id)
	delete(m.specs, id)
	m.mu.Unlock()
	return m.db.DeleteWorkspace(ctx, id)
}

// Get returns a user's workspace; errdefs.ErrNotFound if it does not exist
// or belongs to someone else.
func (m *Manager) Get(ctx context.Context, userID, id string) (Workspace, error) {
	row, err := m.db.GetWorkspace(ctx, userID, id)
	if err != nil {
		return Workspace{}, err
	}
	w, err := view(row)
	if err != nil {
		m.log.Warn("workspace spec cannot be decoded", "workspace_id", row.ID, "user_id", row.UserID, "error", err)
		return brokenView(row, err), nil
	}
	return w, nil
}

// List returns a page of a user's workspaces after the ID after, and the
// cursor of the next page ("" at the end). limit is clamped to the store's
// page sizes (<= 0: store.DefaultPageSize; at most store.MaxPageSize).
func (m *Manager) List(ctx context.Context, userID, after string, limit int) ([]Workspace, string, error) {
	switch {
	case limit <= 0:
		limit = store.DefaultPageSize
	case limit > store.MaxPageSize:
		limit = store.MaxPageSize
	}
	rows, err := m.db.ListWorkspaces(ctx, userID, after, limit)
	if err != nil {
		return nil, "", err
	}
	if len(rows) > limit {
		rows = rows[:limit]
	}
	next := ""
	if len(rows) == limit {
		// A full page: there is a next one if anything follows it. (Asking
		// the store for limit+1 rows would be clamped at its maximum page
		// size, and a full page of the maximum would look like the last.)
		more, err := m.db.ListWorkspaces(ctx, userID, rows[limit-1].ID, 1)
		if err != nil {
			return nil, "", err
		}
		if len(more) > 0 {
			next = rows[limit-1].ID
		}
	}
	out := make([]Workspace, 0, len(rows))
	for _, r := range rows {
		w, err := view(r)
		if err != nil {
			// One bad row must not hide the others: it is listed as
			// broken (Reconcile flags it in the store at start-up).
			m.log.Warn("workspace spec cannot be decoded", "workspace_id", r.ID, "user_id", r.UserID, "error", err)
			w = brokenView(r, err)
		}
		out = append(out, w)
	}
	return out, next, nil
}

// Delete kills a user's workspace's processes and deletes it with its
// files. errdefs.ErrNotFound if it is not the user's.
func (m *Manager) Delete(ctx context.Context, userID, id string) error {
	if _, err := m.db.GetWorkspace(ctx, userID, id); err != nil {
		return err
	}
	// Before the lock: what lets go may still be running commands here.
	if m.beforeDelete != nil {
		if err := m.beforeDelete(ctx, userID, id); err != nil {
			return fmt.Errorf("delete workspace %s: %w", id, err)
		}
	}
	m.setPending(id)
	defer m.clearPending(id)
	unlock := m.lock(id)
	defer unlock()
	// Marked first, the row removed last: a crash anywhere in between
	// leaves a row in deleting, which Reconcile (or Check) finishes.
	if err := m.db.SetWorkspaceState(ctx, id, StateDeleting, ""); err != nil {
		return err
	}
	if err := m.destroy(context.WithoutCancel(ctx), id); err != nil {
		// Left in deleting: Check retries once the runtime answers.
		_ = m.db.SetWorkspaceState(context.WithoutCancel(ctx), id, StateDeleting, reasonDeleting)
		return err
	}
	_ = m.db.Audit(ctx, userID, "workspace.delete", id, "")
	m.log.Info("workspace deleted", "workspace_id", id)
	return nil
}

// lock serialises state changes of one workspace.
func (m *Manager) lock(id string) func() {
	m.mu.Lock()
	l := m.locks[id]
	if l == nil {
		l = &sync.Mutex{}
		m.locks[id] = l
	}
	m.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// ensureRunning returns the user's workspace, starting it if it was stopped
// (idle). errdefs.ErrNotFound if it is not the user's;
// errdefs.ErrFailedPrecondition if it is being created, deleted or broken.
func (m *Manager) ensureRunning(ctx context.Context, userID, id string) (store.Workspace, stored, error) {
	row, err := m.db.GetWorkspace(ctx, userID, id)
	if err != nil {
		return row, stored{}, err
	}
	st, err := m.spec(row)
	if err != nil {
		return row, st, err
	}
	if row.State != StateRunning && row.State != StateStopped {
		return row, st, errdefs.New(errdefs.ErrFailedPrecondition, "workspace_not_ready", "workspace %s is %s", id, row.State)
	}
	// Under the lock even when it looks running: an idle stop may be under
	// way, and returning before it ends would hand the caller a workspace
	// that is stopped by the time it runs something.
	unlock := m.lock(id)
	defer unlock()
	row, err = m.db.GetWorkspace(ctx, userID, id)
	if err != nil || row.State == StateRunning {
		return row, st, err
	}
	if row.State != StateStopped {
		return row, st, errdefs.New(errdefs.ErrFailedPrecondition, "workspace_not_ready", "workspace %s is %s", id, row.State)
	}
	if err := m.rt.Start(ctx, id); err != nil {
		return row, st, fmt.Errorf("start workspace %s: %w", id, err)
	}
	if err := m.db.SetWorkspaceState(ctx, id, StateRunning, ""); err != nil {
		return row, st, err
	}
	m.log.Info("workspace started on use", "workspace_id", id)
	row.State = StateRunning
	return row, st, nil
}

// spec returns a workspace's stored spec, decoded once per workspace: it
// never changes after creation. Callers must not modify it.
func (m *Manager) spec(row store.Workspace) (stored, error) {
	m.mu.Lock()
	st, ok := m.specs[row.ID]
	m.mu.Unlock()
	if ok {
		return st, nil
	}
	st, err := decode(row)
	if err != nil {
		return st, err
	}
	m.mu.Lock()
	m.specs[row.ID] = st
	m.mu.Unlock()
	return st, nil
}

// Close waits for the exec records still being written. Call it before
// closing the store.
func (m *Manager) Close() {
	m.records.Wait()
}

// decode reads a workspace's stored spec. A spec that cannot be read is
// errdefs.ErrFailedPrecondition coded "workspace_corrupt": the workspace
// can still be listed, shown and deleted, but not used.
func decode(row store.Workspace) (stored, error) {
	var st stored
	if err := json.Unmarshal(row.Spec, &st); err != nil {
		return st, errdefs.New(errdefs.ErrFailedPrecondition, "workspace_corrupt",
			"the stored settings of workspace %s cannot be read (%v); delete it", row.ID, err)
	}
	return st, nil
}

// brokenView shows a workspace whose spec cannot be decoded: state error,
// with the reason, and no settings.
func brokenView(row store.Workspace, err error) Workspace {
	return Workspace{
		ID: row.ID, State: StateError, Runtime: row.Runtime, Image: row.Image, Error: err.Error(),
		CreatedAt: row.CreatedAt, UpdatedAt: row.UpdatedAt, LastUsedAt: row.LastUsedAt,
	}
}

// flagUndecodable marks a workspace whose stored spec cannot be decoded as
// errored, with the reason, and reports whether the spec is fine. Run at
// start-up, so that such a row is visible as broken (and deletable) rather
// than failing whatever reads it.
func (m *Manager) flagUndecodable(ctx context.Context, row store.Workspace) bool {
	_, err := decode(row)
	if err == nil {
		return true
	}
	m.log.Warn("workspace spec cannot be decoded; marking it errored", "workspace_id", row.ID, "user_id", row.UserID, "error", err)
	if row.State != StateError || row.Error != err.Error() {
		if serr := m.db.SetWorkspaceState(ctx, row.ID, StateError, err.Error()); serr != nil {
			m.log.Error("mark workspace errored", "workspace_id", row.ID, "error", serr)
		}
	}
	return false
}

func view(row store.Workspace) (Workspace, error) {
	st, err := decode(row)
	if err != nil {
		return Workspace{}, err
	}
	return Workspace{
		ID: row.ID, State: row.State, Runtime: row.Runtime, Image: row.Image, Env: st.Env,
		Limits: st.Policy.Limits, Network: st.Policy.Network, Error: row.Error,
		CreatedAt: row.CreatedAt, UpdatedAt: row.UpdatedAt, LastUsedAt: row.LastUsedAt,
	}, nil
}
