package api

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/store"
)

type ctxKey int

const userKey ctxKey = iota

// userFrom returns the authenticated user of a request.
func userFrom(ctx context.Context) store.User {
	u, _ := ctx.Value(userKey).(store.User)
	return u
}

// keyFrom reads the API key from Authorization: Bearer (the scheme is
// case-insensitive, RFC 9110) or else X-Session-API-Key.
func keyFrom(r *http.Request) string {
	const scheme = "bearer "
	if h := r.Header.Get("Authorization"); len(h) > len(scheme) && strings.EqualFold(h[:len(scheme)], scheme) {
		return strings.TrimSpace(h[len(scheme):])
	}
	return strings.TrimSpace(r.Header.Get("X-Session-API-Key"))
}

// authenticate answers 401 to requests without a valid key, and puts the
// key's user in the context of the others.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, err := s.authKey(r.Context(), keyFrom(r))
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if lw, ok := w.(*statusWriter); ok {
			lw.user = u.Name
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), userKey, u)))
	})
}

func (s *Server) authKey(ctx context.Context, key string) (store.User, error) {
	if key == "" {
		return store.User{}, errdefs.New(errdefs.ErrUnauthenticated, "unauthenticated", "an API key is required: Authorization: Bearer KEY or X-Session-API-Key: KEY")
	}
	u, err := s.db.Authenticate(ctx, key)
	if errors.Is(err, errdefs.ErrUnauthenticated) {
		return store.User{}, errdefs.New(errdefs.ErrUnauthenticated, "unauthenticated", "invalid or revoked API key")
	}
	return u, err
}

// statusWriter remembers the status for the access log.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
	user   string
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Hijack lets WebSockets through the access log.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("response writer cannot hijack")
	}
	if w.status == 0 {
		w.status = http.StatusSwitchingProtocols
	}
	return h.Hijack()
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// accessLog writes one line per request: method, route, status, duration,
// user. Never a key, header or body.
func (s *Server) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		d := time.Since(start)
		route := chi.RouteContext(r.Context()).RoutePattern()
		if route == "" {
			route = "unmatched"
		}
		s.metrics.observe(r.Method, route, sw.status, d)
		s.log.Info("request", "method", r.Method, "path", r.URL.Path, "status", sw.status,
			"duration_ms", float64(d.Microseconds())/1000, "bytes", sw.bytes, "user", sw.user)
	})
}

// recoverer turns a panic in a handler into a logged 500.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("panic in handler", "method", r.Method, "path", r.URL.Path, "panic", v)
				writeJSON(w, http.StatusInternalServerError, ErrorBody{Error: internalError})
			}
		}()
		next.ServeHTTP(w, r)
	})
}
