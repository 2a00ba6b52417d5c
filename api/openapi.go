package api

import (
	_ "embed"
	"encoding/json"
	"net/http"

	"github.com/go-chi/chi/v5"
)

// openAPISpec describes every route of Handler(); openapi_test.go checks
// that the two never drift apart.
//
//go:embed openapi.json
var openAPISpec []byte

// docsPage renders openapi.json in a browser. It is self-contained (no CDN,
// no external scripts) so that it works on offline servers.
//
//go:embed docs.html
var docsPage []byte

// docRoutes serves GET /openapi.json and GET /docs, without authentication.
func (s *Server) docRoutes(r chi.Router) {
	spec := specWithVersion(openAPISpec, s.version)
	r.Get("/openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(spec)
	})
	r.Get("/docs", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		// The page loads nothing but its own inline code and the spec.
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		_, _ = w.Write(docsPage)
	})
}

// specWithVersion returns the document with info.version set to the
// server's version, or unchanged if there is none (or it cannot be parsed,
// which the tests rule out).
func specWithVersion(spec []byte, version string) []byte {
	if version == "" {
		return spec
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(spec, &doc); err != nil {
		return spec
	}
	var info map[string]any
	if err := json.Unmarshal(doc["info"], &info); err != nil {
		return spec
	}
	info["version"] = version
	b, err := json.Marshal(info)
	if err != nil {
		return spec
	}
	doc["info"] = b
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return spec
	}
	return out
}
