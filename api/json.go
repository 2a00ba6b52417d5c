package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/corralhq/corral/errdefs"
)

// maxJSONBody caps every JSON request body.
const maxJSONBody = 1 << 20

// readJSON decodes the request body into v, rejecting unknown fields,
// trailing data and bodies over maxJSONBody. On failure it answers 400 (or
// 413) with a structured error and returns false.
func (s *Server) readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := decodeJSON(w, r, v); err != nil {
		s.writeError(w, r, err)
		return false
	}
	return true
}

func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxJSONBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &tooBig):
			return errdefs.New(errdefs.ErrTooLarge, "body_too_large", "request body exceeds %d bytes", maxJSONBody)
		case errors.Is(err, io.EOF):
			return errdefs.Invalid("invalid_json", "request body is empty; a JSON object is required")
		case errors.As(err, &syn):
			return errdefs.Invalid("invalid_json", "malformed JSON at byte %d", syn.Offset)
		case errors.As(err, &typ):
			return errdefs.Invalid("invalid_json", "field %q must be %s", typ.Field, typ.Type)
		default:
			return errdefs.Invalid("invalid_json", "%s", err.Error())
		}
	}
	if dec.More() {
		return errdefs.Invalid("invalid_json", "request body has data after the JSON object")
	}
	return nil
}

// writeJSON answers with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// pageParams reads ?after= and ?limit= (1..1000, default 50).
func pageParams(r *http.Request) (after string, limit int, err error) {
	after = r.URL.Query().Get("after")
	limit = 50
	if l := r.URL.Query().Get("limit"); l != "" {
		n, perr := strconv.Atoi(l)
		if perr != nil || n < 1 || n > 1000 {
			return "", 0, errdefs.Invalid("invalid_limit", "limit must be a number from 1 to 1000")
		}
		limit = n
	}
	return after, limit, nil
}
