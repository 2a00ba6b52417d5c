// Package api serves Corral's HTTP + WebSocket API: chi routes, middleware,
// handlers and wire types. It holds no business logic: workspaces are the
// workspace package's, conversations the conversation package's.
package api

import (
	"context"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/hashicorp/go-hclog"

	"github.com/corralhq/corral/conversation"
	"github.com/corralhq/corral/store"
	"github.com/corralhq/corral/workspace"
)

// Config is what a Server is built from.
type Config struct {
	DB         *store.DB
	Workspaces *workspace.Manager
	// Conversations serves /conversations; nil leaves those routes out.
	Conversations *conversation.Service
	Logger        hclog.Logger
	// Version is reported by /health.
	Version string
	// BodyIdleTimeout is how long a request body may send nothing before
	// the request fails with 408 "body_timeout" (default
	// DefaultBodyIdleTimeout).
	BodyIdleTimeout time.Duration
}

// Server is the HTTP API. Build it with New and serve Handler().
type Server struct {
	db            *store.DB
	workspaces    *workspace.Manager
	conversations *conversation.Service
	log           hclog.Logger
	version       string
	metrics       *metrics
	bodyIdle      time.Duration
	sockets       sockets
}

// New returns a Server. With conversations it also makes a workspace's
// deletion (by a client or at the end of its lifetime) delete its
// conversations first, their agents stopped.
func New(cfg Config) *Server {
	if cfg.Conversations != nil && cfg.Workspaces != nil {
		cfg.Workspaces.OnDelete(cfg.Conversations.DeleteInWorkspace)
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	bodyIdle := cfg.BodyIdleTimeout
	if bodyIdle <= 0 {
		bodyIdle = DefaultBodyIdleTimeout
	}
	return &Server{db: cfg.DB, workspaces: cfg.Workspaces, conversations: cfg.Conversations, log: log, version: cfg.Version, metrics: newMetrics(), bodyIdle: bodyIdle}
}

// Handler returns the router.
func (s *Server) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(s.recoverer, s.accessLog, s.bodyDeadline)
	r.Get("/health", s.health)
	r.Get("/ready", s.ready)
	r.Get("/metrics", s.metrics.serve)
	s.docRoutes(r) // GET /openapi.json, /docs
	r.Group(func(r chi.Router) {
		r.Use(s.authenticate)
		r.Route("/workspaces", func(r chi.Router) {
			r.Post("/", s.createWorkspace)
			r.Get("/", s.listWorkspaces)
			r.Route("/{id}", func(r chi.Router) {
				r.Get("/", s.getWorkspace)
				r.Delete("/", s.deleteWorkspace)
				r.Post("/execute", s.execute)
				r.Get("/files", s.getFile)
				r.Get("/files/*", s.getFile)
				r.Put("/files/*", s.putFile)
				r.Delete("/files/*", s.deleteFile)
				r.Get("/archive", s.getArchive)
				r.Put("/archive", s.putArchive)
			})
		})
		if s.conversations != nil {
			r.Route("/conversations", s.conversationRoutes)
		}
	})
	// The exec socket authenticates itself: browsers cannot set headers, so
	// it also accepts the key in its first frame.
	r.Get("/workspaces/{id}/exec", s.execSocket)
	if s.conversations != nil {
		r.Get("/conversations/{id}/stream", s.conversationStream)
	}
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, ErrorBody{Error: ErrorDetail{Code: "not_found", Message: "no such route"}})
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusMethodNotAllowed, ErrorBody{Error: ErrorDetail{Code: "method_not_allowed", Message: r.Method + " is not allowed here"}})
	})
	return r
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "version": s.version})
}

// ready checks that the database answers and the runtime can list its
// sandboxes.
func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	checks := map[string]string{"database": "ok", "runtime": "ok"}
	status := http.StatusOK
	if err := s.db.Ping(ctx); err != nil {
		s.log.Warn("not ready: database", "error", err)
		checks["database"], status = "unavailable", http.StatusServiceUnavailable
	}
	rt := s.workspaces.Runtime()
	// The runtime's own engine deadline (--engine-timeout) or 5s, whichever
	// is first, bounds this: a frozen engine is reported, not waited for.
	if _, err := rt.List(ctx); err != nil {
		s.log.Warn("not ready: runtime", "error", err)
		checks["runtime"], status = serverErrorDetail(http.StatusServiceUnavailable, err).Message, http.StatusServiceUnavailable
	}
	writeJSON(w, status, map[string]any{"ready": status == http.StatusOK, "runtime": rt.Name(), "checks": checks, "capabilities": rt.Capabilities()})
}
