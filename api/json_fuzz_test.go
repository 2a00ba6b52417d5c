package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/workspace"
)

// requestBodies are the JSON request types the handlers decode, indexed by
// the fuzzer's first argument.
var requestBodies = []func() any{
	func() any { return new(workspace.Spec) },
	func() any { return new(workspace.ExecuteRequest) },
	func() any { return new(CreateConversationRequest) },
	func() any { return new(MessageRequest) },
}

// FuzzDecodeJSON feeds request bodies to the decoder every handler uses.
// Whatever the bytes, the answer is a value or a client error (400 or 413
// with a stable code), never a 500 or a panic; and a value that decodes
// re-encodes to JSON that decodes to the same value.
func FuzzDecodeJSON(f *testing.F) {
	// More seeds are in testdata/fuzz/FuzzDecodeJSON.
	f.Add(uint8(0), []byte(`{"limits":{"memory":"256MiB","cpus":0.5,"timeout":"30s"},"network":{"mode":"allowlist","allowed_hosts":["*.pypi.org:443"]}}`))
	f.Add(uint8(1), []byte(`{"argv":["ls","-la"],"cwd":"src","env":{"A":"b"},"stdin":"x","timeout":"10s"}`))
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		newV := requestBodies[int(kind)%len(requestBodies)]
		v := newV()
		err := decodeBody(body, v)
		if err != nil {
			if s := statusOf(err); s != http.StatusBadRequest && s != http.StatusRequestEntityTooLarge {
				t.Fatalf("body %q: status %d (%v), want 400 or 413", body, s, err)
			}
			if c := errdefs.Code(err); c == "" || c == "internal" {
				t.Fatalf("body %q: error without a stable code: %v", body, err)
			}
			return
		}
		once, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("body %q decoded to %+v, which does not encode: %v", body, v, err)
		}
		w := newV()
		if err := decodeBody(once, w); err != nil {
			t.Fatalf("body %q decoded to %s, which does not decode again: %v", body, once, err)
		}
		twice, _ := json.Marshal(w)
		if !bytes.Equal(once, twice) {
			t.Fatalf("body %q: round trip changed the value:\n%s\n%s", body, once, twice)
		}
	})
}

func decodeBody(body []byte, v any) error {
	r := httptest.NewRequest("POST", "/", bytes.NewReader(body))
	return decodeJSON(httptest.NewRecorder(), r, v)
}
