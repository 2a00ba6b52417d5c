package api_test

import (
	"net/http"
	"testing"
)

// The Bearer scheme is matched case-insensitively, and X-Session-API-Key
// still works when Authorization carries some other scheme (say, a proxy's
// Basic credentials).
func TestAuthHeaderForms(t *testing.T) {
	e := newEnv(t, processBackend)
	for name, h := range map[string]http.Header{
		"lower-case bearer":          {"Authorization": {"bearer " + e.alice}},
		"upper-case bearer":          {"Authorization": {"BEARER " + e.alice}},
		"session key beside basic":   {"Authorization": {"Basic dXNlcjpwYXNz"}, "X-Session-Api-Key": {e.alice}},
		"session key without bearer": {"X-Session-Api-Key": {e.alice}},
	} {
		req, _ := http.NewRequest("GET", e.url+"/workspaces", nil)
		req.Header = h
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %d", name, resp.StatusCode)
		}
	}
	e.wantError("", "GET", "/workspaces", nil, http.StatusUnauthorized, "unauthenticated")
}
