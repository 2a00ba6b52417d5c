package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
)

// maxJSONBody caps every JSON request body.
const maxJSONBody = 1 << 20

// readJSON decodes the request body into v with strictJSON's rules and a
// cap of maxJSONBody. On failure it answers 400 (413 for a body too large,
// 408 for a client too slow to send it) with a structured error and
// returns false.
func (s *Server) readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := decodeJSON(w, r, v); err != nil {
		s.writeError(w, r, err)
		return false
	}
	return true
}

func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, maxJSONBody)
	err := jsonv2.UnmarshalRead(body, v, strictJSON)
	var tooBig *http.MaxBytesError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &tooBig):
		return errdefs.New(errdefs.ErrTooLarge, "body_too_large", "request body exceeds %d bytes", maxJSONBody)
	case errors.Is(err, errRequestTimeout):
		return errBodyTimeout
	case errors.Is(err, io.ErrUnexpectedEOF) && isEmpty(err):
		return errdefs.Invalid("invalid_json", "request body is empty; a JSON object is required")
	}
	return jsonError(err)
}

// strictJSON are the rules for every JSON request, on bodies and WebSocket
// frames alike: one object, nothing after it, member names matched exactly
// (case-sensitively), no unknown names, and no name given twice. A
// duplicate or case-variant key ({"command":"a","command":"b"},
// {"Command":"b"}) could otherwise mean one thing to a proxy or audit log
// in front of the server and another to the server.
//
// The rules are encoding/json/v2's (here as its mirror module, which
// aliases the standard library's once Go enables it by default): its
// decoder refuses duplicate names itself, at every nesting level, and
// reports the JSON pointer of every error, which is how a refusal names
// the field.
var strictJSON = jsonv2.JoinOptions(
	jsonv2.RejectUnknownMembers(true),
	jsonv2.MatchCaseInsensitiveNames(false),
	jsontext.AllowDuplicateNames(false),
)

// frameJSON are strictJSON's rules for WebSocket frames, except that
// unknown names are ignored, as they always were there: a client may send
// fields a later server version understands.
var frameJSON = jsonv2.JoinOptions(strictJSON, jsonv2.RejectUnknownMembers(false))

// unmarshalFrame decodes one WebSocket frame with frameJSON's rules;
// errors are jsonError's.
func unmarshalFrame(data []byte, v any) error {
	if err := jsonv2.Unmarshal(data, v, frameJSON); err != nil {
		return jsonError(err)
	}
	return nil
}

// isEmpty reports whether a decode error happened before the first byte.
func isEmpty(err error) bool {
	var syn *jsontext.SyntacticError
	return errors.As(err, &syn) && syn.ByteOffset == 0
}

// jsonError turns a decode error into a 400 that names the field: a
// duration or size that is out of range (see policy.Duration and
// policy.Bytes), as every malformed value under "limits" or a command's
// "timeout", is "invalid_limit"; everything else is "invalid_json".
func jsonError(err error) error {
	var sem *jsonv2.SemanticError
	var syn *jsontext.SyntacticError
	switch {
	case errors.As(err, &sem):
		field := fieldName(sem.JSONPointer)
		if field == "" {
			return errdefs.Invalid("invalid_json", "request body: %v", sem.Err)
		}
		if errors.Is(sem.Err, jsonv2.ErrUnknownName) {
			return errdefs.Invalid("invalid_json", "unknown field %q (field names are case-sensitive)", field)
		}
		if errdefs.Code(sem.Err) == policy.CodeInvalidLimit || isLimitField(sem.JSONPointer) {
			msg := "invalid value"
			if sem.Err != nil {
				msg = sem.Err.Error()
			} else if sem.GoType != nil {
				msg = "must be a " + sem.GoType.String() + " in range"
			}
			return errdefs.Invalid(policy.CodeInvalidLimit, "field %q: %s", field, msg)
		}
		if sem.GoType != nil {
			return errdefs.Invalid("invalid_json", "field %q must be %s", field, sem.GoType)
		}
		return errdefs.Invalid("invalid_json", "field %q: %v", field, sem.Err)
	case errors.As(err, &syn):
		if errors.Is(syn.Err, jsontext.ErrDuplicateName) {
			return errdefs.Invalid("invalid_json", "duplicate field %q", fieldName(syn.JSONPointer))
		}
		return errdefs.Invalid("invalid_json", "malformed JSON at byte %d: %v", syn.ByteOffset, syn.Err)
	}
	return errdefs.Invalid("invalid_json", "%v", err)
}

// fieldName renders a JSON pointer as a dotted field name: /limits/timeout
// is "limits.timeout".
func fieldName(p jsontext.Pointer) string {
	var parts []string
	for tok := range p.Tokens() {
		parts = append(parts, tok)
	}
	return strings.Join(parts, ".")
}

// isLimitField reports whether p is a numeric limit: anything under
// "limits" (workspace creation, a conversation's inline workspace) or a
// command's "timeout".
func isLimitField(p jsontext.Pointer) bool {
	s := string(p)
	return strings.HasPrefix(s, "/limits/") || strings.Contains(s, "/limits/") || s == "/timeout"
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
