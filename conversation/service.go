package conversation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/store"
	"github.com/hashicorp/go-hclog"
)

// MaxMessageBytes bounds one user message.
const MaxMessageBytes = 256 << 10

// Service runs conversations. All methods are safe for concurrent use.
// Methods taking a userID treat another user's conversation as missing
// (errdefs.ErrNotFound), never as forbidden.
type Service struct {
	db     *store.DB
	ws     Workspaces
	cfg    Config
	log    hclog.Logger
	sealer *sealer

	baseCtx context.Context // parent of every agent run; cancelled by Close
	cancel  context.CancelFunc
	wg      sync.WaitGroup // agent runs

	guardOnce sync.Once
	guarded   *http.Client // for user-chosen LLM endpoints; see llmHTTPClient

	mu      sync.Mutex // guards lives, closing; taken after a live's mu, never before
	lives   map[string]*live
	closing bool
}

// New returns a Service over db that executes tools through ws. It fails
// with errdefs.ErrInvalidArgument if cfg.SecretKey is set but shorter than
// 16 bytes. The caller should call Recover before serving, and Close before
// closing db.
func New(db *store.DB, ws Workspaces, cfg Config) (*Service, error) {
	cfg.setDefaults()
	sl, err := newSealer(cfg.SecretKey)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		db: db, ws: ws, cfg: cfg, log: cfg.Logger.Named("conversation"), sealer: sl,
		baseCtx: ctx, cancel: cancel, lives: map[string]*live{},
	}
	if s.cfg.NewAgent == nil {
		s.cfg.NewAgent = s.newOpenAIAgent
	}
	return s, nil
}

// Info is the public view of a conversation: what the API returns. It never
// carries an API key.
type Info struct {
	ID          string    `json:"id"`
	WorkspaceID string    `json:"workspace_id"`
	State       State     `json:"state"`
	LastSeq     int64     `json:"last_seq"`
	LLM         LLMInfo   `json:"llm"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// LLMInfo shows a conversation's LLM overrides; the key only as a flag.
type LLMInfo struct {
	BaseURL   string `json:"base_url,omitempty"`
	Model     string `json:"model,omitempty"`
	APIKeySet bool   `json:"api_key_set"`
}

// InfoOf returns c's public view.
func InfoOf(c store.Conversation) Info {
	return Info{
		ID: c.ID, WorkspaceID: c.WorkspaceID, State: State(c.State), LastSeq: c.LastSeq,
		LLM:       LLMInfo{BaseURL: c.LLMBaseURL, Model: c.LLMModel, APIKeySet: len(c.LLMKey) > 0},
		CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt,
	}
}

// CreateParams are the settings of a new conversation.
type CreateParams struct {
	WorkspaceID string
	// LLM overrides the server's endpoint, model and key. A conversation
	// that names its own BaseURL never gets the server's key: it must bring
	// its own or go without.
	LLM LLMConfig
}

// Create makes a conversation in the user's workspace, in state idle, with
// no events. An API key in p.LLM is stored encrypted. Errors:
// errdefs.ErrNotFound if the workspace is not the user's;
// errdefs.ErrInvalidArgument for a bad base URL; errdefs.ErrFailedPrecondition
// coded "secret_key_missing" if a key is given and the server has no
// CORRAL_SECRET_KEY. Not idempotent.
func (s *Service) Create(ctx context.Context, userID string, p CreateParams) (store.Conversation, error) {
	if p.WorkspaceID == "" {
		return store.Conversation{}, errdefs.Invalid("missing_workspace", "workspace_id is required")
	}
	if p.LLM.BaseURL != "" {
		u, err := url.Parse(p.LLM.BaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return store.Conversation{}, errdefs.Invalid("invalid_llm_base_url", "llm.base_url %q must be an http:// or https:// URL", p.LLM.BaseURL)
		}
	}
	if _, err := s.db.GetWorkspace(ctx, userID, p.WorkspaceID); err != nil {
		return store.Conversation{}, fmt.Errorf("create conversation: %w", err)
	}
	c := store.Conversation{
		ID: store.NewID("cv"), UserID: userID, WorkspaceID: p.WorkspaceID, State: string(StateIdle),
		LLMBaseURL: p.LLM.BaseURL, LLMModel: p.LLM.Model,
	}
	if p.LLM.APIKey != "" {
		if s.sealer == nil {
			return store.Conversation{}, errdefs.New(errdefs.ErrFailedPrecondition, "secret_key_missing",
				"this server cannot store LLM API keys: it was started without CORRAL_SECRET_KEY")
		}
		c.LLMKey = s.sealer.seal(c.ID, []byte(p.LLM.APIKey))
	}
	c, err := s.db.CreateConversation(ctx, c)
	if err != nil {
		return store.Conversation{}, err
	}
	s.log.Info("conversation created", "conversation_id", c.ID, "workspace_id", c.WorkspaceID, "user_id", userID)
	return c, nil
}

// Get returns the user's conversation. Errors: errdefs.ErrNotFound.
func (s *Service) Get(ctx context.Context, userID, id string) (store.Conversation, error) {
	return s.db.GetConversation(ctx, userID, id)
}

// List returns a page of the user's conversations with IDs greater than
// after, in creation order; see store.ListConversations.
func (s *Service) List(ctx context.Context, userID, after string, limit int) ([]store.Conversation, error) {
	return s.db.ListConversations(ctx, userID, after, limit)
}

// Events returns a page of the user's conversation's events with seq >
// after. Errors: errdefs.ErrNotFound; errdefs.ErrInvalidArgument for a
// negative after.
func (s *Service) Events(ctx context.Context, userID, id string, after int64, limit int) ([]store.Event, error) {
	if after < 0 {
		return nil, errdefs.Invalid("invalid_after", "after must be a sequence number >= 0")
	}
	if _, err := s.db.GetConversation(ctx, userID, id); err != nil {
		return nil, err
	}
	return s.db.ListEvents(ctx, id, after, limit)
}

// Send appends the user's message and starts the agent if it is not
// running; a message sent while it runs is seen at its next step. It
// returns the stored message event once it is committed. Errors:
// errdefs.ErrNotFound; errdefs.ErrInvalidArgument for an empty message;
// errdefs.ErrTooLarge past MaxMessageBytes; errdefs.ErrUnavailable while
// the server shuts down. Not idempotent.
func (s *Service) Send(ctx context.Context, userID, id, content string) (store.Event, error) {
	if strings.TrimSpace(content) == "" {
		return store.Event{}, errdefs.Invalid("empty_message", "message content is empty")
	}
	if len(content) > MaxMessageBytes {
		return store.Event{}, errdefs.New(errdefs.ErrTooLarge, "message_too_large", "message is %d bytes; the limit is %d", len(content), MaxMessageBytes)
	}
	c, err := s.db.GetConversation(ctx, userID, id)
	if err != nil {
		return store.Event{}, err
	}
	l, err := s.acquire(ctx, id)
	if err != nil {
		return store.Event{}, err
	}
	defer s.release(l)

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.deleting {
		return store.Event{}, errdefs.NotFound("conversation %s not found", id)
	}
	msg := event(SourceUser, KindMessage, MessagePayload{Content: content})
	if l.run != nil {
		evs, err := s.appendLocked(ctx, l, "", msg)
		if err != nil {
			return store.Event{}, fmt.Errorf("send message to conversation %s: %w", id, err)
		}
		l.run.pending = true
		return evs[0], nil
	}

	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return store.Event{}, errShutdown()
	}
	s.wg.Add(1)
	l.refs++ // the run's reference
	s.mu.Unlock()

	evs, err := s.appendLocked(ctx, l, StateRunning, msg, stateEvent(StateRunning, ""))
	if err != nil {
		s.wg.Done()
		s.release(l)
		return store.Event{}, fmt.Errorf("send message to conversation %s: %w", id, err)
	}
	rctx, cancel := context.WithCancel(s.baseCtx)
	r := &run{cancel: cancel, done: make(chan struct{})}
	l.run = r
	go s.runAgent(rctx, l, c, r)
	return evs[0], nil
}

// Interrupt stops the conversation's agent: a running command is killed,
// an LLM call abandoned, and the conversation ends in state interrupted.
// It returns the conversation once the agent has stopped. Idempotent: a
// conversation whose agent is not running is returned unchanged. Errors:
// errdefs.ErrNotFound, or ctx's error if it ends before the agent stops.
func (s *Service) Interrupt(ctx context.Context, userID, id string) (store.Conversation, error) {
	if _, err := s.db.GetConversation(ctx, userID, id); err != nil {
		return store.Conversation{}, err
	}
	if err := s.stop(ctx, id, "interrupted by the user", false); err != nil {
		return store.Conversation{}, err
	}
	return s.db.GetConversation(ctx, userID, id)
}

// stop cancels the conversation's run, if any, and waits for it to end. If
// deleting, the conversation is marked so that no new run starts.
func (s *Service) stop(ctx context.Context, id, reason string, deleting bool) error {
	l, err := s.acquire(ctx, id)
	if err != nil {
		return err
	}
	defer s.release(l)
	l.mu.Lock()
	if deleting {
		if l.deleting {
			l.mu.Unlock()
			return errdefs.NotFound("conversation %s not found", id)
		}
		l.deleting = true
	}
	r := l.run
	if r != nil {
		if r.reason == "" {
			r.reason = reason
		}
		r.cancel()
	}
	l.mu.Unlock()
	if r == nil {
		return nil
	}
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for the agent of conversation %s to stop: %w", id, ctx.Err())
	}
}

// Delete stops the conversation's agent and deletes it with its events;
// its subscribers end with errdefs.ErrNotFound. Errors: errdefs.ErrNotFound
// (also for a second Delete).
func (s *Service) Delete(ctx context.Context, userID, id string) error {
	if _, err := s.db.GetConversation(ctx, userID, id); err != nil {
		return err
	}
	l, err := s.acquire(ctx, id)
	if err != nil {
		return err
	}
	defer s.release(l)
	if err := s.stop(ctx, id, "conversation deleted", true); err != nil {
		l.mu.Lock()
		l.deleting = false
		l.mu.Unlock()
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := s.db.DeleteConversation(context.WithoutCancel(ctx), userID, id); err != nil {
		l.deleting = false
		return fmt.Errorf("delete conversation %s: %w", id, err)
	}
	for sub := range l.subs {
		sub.endLocked(errDeleted(id))
	}
	s.log.Info("conversation deleted", "conversation_id", id, "user_id", userID)
	return nil
}

// DeleteInWorkspace deletes every conversation held in the user's
// workspace, as Delete does each. The server calls it before deleting the
// workspace (whose rows would otherwise take the conversations along by
// cascade, leaving their agents and subscribers to find out late).
// Idempotent.
func (s *Service) DeleteInWorkspace(ctx context.Context, userID, workspaceID string) error {
	cs, err := s.db.ConversationsOfWorkspace(ctx, workspaceID)
	if err != nil {
		return fmt.Errorf("delete conversations of workspace %s: %w", workspaceID, err)
	}
	for _, c := range cs {
		if c.UserID != userID {
			continue
		}
		if err := s.Delete(ctx, userID, c.ID); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("delete conversations of workspace %s: %w", workspaceID, err)
		}
	}
	return nil
}

// Subscribe returns a subscription to the user's conversation's events
// with seq > after: stored ones first, then live ones. Errors:
// errdefs.ErrNotFound; errdefs.ErrInvalidArgument coded "invalid_after" if
// after is negative or beyond the last event; errdefs.ErrUnavailable while
// the server shuts down. The caller must Close it.
func (s *Service) Subscribe(ctx context.Context, userID, id string, after int64) (*Subscription, error) {
	c, err := s.db.GetConversation(ctx, userID, id)
	if err != nil {
		return nil, err
	}
	l, err := s.acquire(ctx, id)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	switch {
	case closing:
		s.release(l)
		return nil, errShutdown()
	case l.deleting:
		s.release(l)
		return nil, errdefs.NotFound("conversation %s not found", id)
	case after < 0 || after > l.lastSeq:
		s.release(l)
		return nil, errdefs.Invalid("invalid_after", "after=%d is not a sequence number of this conversation (last is %d)", after, l.lastSeq)
	}
	c.State, c.LastSeq = string(l.state), l.lastSeq
	sub := &Subscription{
		s: s, l: l,
		snapshot: Snapshot{Conversation: c, State: l.state, LastSeq: l.lastSeq},
		ch:       make(chan store.Event, s.cfg.SubscriberBuffer),
		upTo:     l.lastSeq,
		last:     after,
	}
	l.subs[sub] = struct{}{}
	return sub, nil
}

// Recover marks every conversation that a previous run of the server left
// running as interrupted, with a state event. Call it at start-up before
// serving. It returns how many it marked. Idempotent.
func (s *Service) Recover(ctx context.Context) (int, error) {
	cs, err := s.db.ConversationsInState(ctx, string(StateRunning))
	if err != nil {
		return 0, fmt.Errorf("recover conversations: %w", err)
	}
	n := 0
	for _, c := range cs {
		l, err := s.acquire(ctx, c.ID)
		if errors.Is(err, errdefs.ErrNotFound) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("recover conversation %s: %w", c.ID, err)
		}
		l.mu.Lock()
		if l.run == nil && l.state == StateRunning {
			_, err = s.appendLocked(ctx, l, StateInterrupted, stateEvent(StateInterrupted, "server restarted"))
			if err == nil {
				n++
			}
		}
		l.mu.Unlock()
		s.release(l)
		if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return n, fmt.Errorf("recover conversation %s: %w", c.ID, err)
		}
	}
	if n > 0 {
		s.log.Info("marked conversations left running as interrupted", "count", n)
	}
	return n, nil
}

// Close interrupts every running agent (each conversation ends in state
// interrupted with a state event), waits for them until ctx is done, and
// ends every subscription with errdefs.ErrUnavailable. New messages and
// subscriptions are refused from then on. Close it before closing the
// store. Idempotent.
func (s *Service) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	lives := make([]*live, 0, len(s.lives))
	for _, l := range s.lives {
		lives = append(lives, l)
	}
	s.mu.Unlock()
	for _, l := range lives {
		l.mu.Lock()
		if l.run != nil && l.run.reason == "" {
			l.run.reason = "server shutting down"
		}
		l.mu.Unlock()
	}
	s.cancel()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("wait for agents to stop: %w", ctx.Err())
	}
	for _, l := range lives {
		l.mu.Lock()
		for sub := range l.subs {
			sub.endLocked(errShutdown())
		}
		l.mu.Unlock()
	}
	return err
}

// event builds an event to append; payload is marshalled to JSON.
func event(source, kind string, payload any) store.Event {
	b, err := json.Marshal(payload)
	if err != nil {
		// Our payload types always marshal.
		panic(fmt.Sprintf("conversation: marshal %s payload: %v", kind, err))
	}
	return store.Event{Source: source, Kind: kind, Payload: b}
}

func stateEvent(state State, reason string) store.Event {
	return event(SourceSystem, KindState, StatePayload{State: state, Reason: reason})
}

func errorEvent(err error) store.Event {
	return event(SourceSystem, KindError, ErrorPayload{Code: errdefs.Code(err), Message: err.Error()})
}
