package api

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"

	"github.com/corralhq/corral/conversation"
)

var openAPIMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

func loadOpenAPI(t *testing.T) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(openAPISpec, &doc); err != nil {
		t.Fatalf("openapi.json is not valid JSON: %v", err)
	}
	return doc
}

// docServer is a Server whose router has every route, conversations
// included. Handler() needs its dependencies only at request time, and the
// routes under test (/openapi.json, /docs) need none.
func docServer(version string) *Server {
	return New(Config{Conversations: &conversation.Service{}, Version: version})
}

var chiParam = regexp.MustCompile(`\{([^}:]+)(:[^}]*)?\}`)

// openAPIPath maps a chi route pattern to an OpenAPI path template:
// "/workspaces/{id}/" is "/workspaces/{id}", ".../files/*" is
// ".../files/{path}", "{id:[0-9]+}" is "{id}".
func openAPIPath(route string) string {
	p := chiParam.ReplaceAllString(route, "{$1}")
	if strings.HasSuffix(p, "/*") {
		p = strings.TrimSuffix(p, "*") + "{path}"
	}
	if len(p) > 1 {
		p = strings.TrimSuffix(p, "/")
	}
	return p
}

func TestOpenAPIDocument(t *testing.T) {
	doc := loadOpenAPI(t)
	if v, _ := doc["openapi"].(string); !strings.HasPrefix(v, "3.1.") {
		t.Fatalf("openapi = %q, want 3.1.x", v)
	}
	if info, _ := doc["info"].(map[string]any); info["title"] == nil || info["version"] == nil {
		t.Errorf("info needs a title and a version: %v", info)
	}
	comps, _ := doc["components"].(map[string]any)
	schemes, _ := comps["securitySchemes"].(map[string]any)
	if b, _ := schemes["bearerAuth"].(map[string]any); b["type"] != "http" || b["scheme"] != "bearer" {
		t.Errorf("bearerAuth scheme = %v", b)
	}
	if k, _ := schemes["sessionKey"].(map[string]any); k["type"] != "apiKey" || k["in"] != "header" || k["name"] != "X-Session-API-Key" {
		t.Errorf("sessionKey scheme = %v", k)
	}
	schemas, _ := comps["schemas"].(map[string]any)
	errSchema, _ := schemas["Error"].(map[string]any)
	errProps, _ := errSchema["properties"].(map[string]any)
	detail, _ := errProps["error"].(map[string]any)
	detailProps, _ := detail["properties"].(map[string]any)
	if detailProps["code"] == nil || detailProps["message"] == nil {
		t.Errorf(`Error schema is not {"error":{"code","message"}}: %v`, errSchema)
	}

	// Every $ref resolves.
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if ref, ok := v["$ref"].(string); ok {
				if resolvePointer(doc, ref) == nil {
					t.Errorf("%s: $ref %q does not resolve", path, ref)
				}
			}
			for k, c := range v {
				walk(path+"/"+k, c)
			}
		case []any:
			for i, c := range v {
				walk(path+"/"+strconv.Itoa(i), c)
			}
		}
	}
	walk("#", doc)

	// Every operation has a unique operationId and responses, and every
	// path template parameter is declared as a path parameter.
	ids := map[string]string{}
	paths, _ := doc["paths"].(map[string]any)
	for path, item := range paths {
		item, _ := item.(map[string]any)
		params := map[string]bool{}
		collect := func(list any) {
			l, _ := list.([]any)
			for _, p := range l {
				p, _ := p.(map[string]any)
				if ref, ok := p["$ref"].(string); ok {
					p, _ = resolvePointer(doc, ref).(map[string]any)
				}
				if p["in"] == "path" {
					params[p["name"].(string)] = true
				}
			}
		}
		collect(item["parameters"])
		for _, m := range openAPIMethods {
			op, ok := item[m].(map[string]any)
			if !ok {
				continue
			}
			where := strings.ToUpper(m) + " " + path
			id, _ := op["operationId"].(string)
			if id == "" {
				t.Errorf("%s has no operationId", where)
			} else if other, dup := ids[id]; dup {
				t.Errorf("%s and %s share operationId %q", where, other, id)
			}
			ids[id] = where
			if r, _ := op["responses"].(map[string]any); len(r) == 0 {
				t.Errorf("%s has no responses", where)
			}
			opParams := map[string]bool{}
			for k := range params {
				opParams[k] = true
			}
			before := params
			params = opParams
			collect(op["parameters"])
			for _, m := range chiParam.FindAllStringSubmatch(path, -1) {
				if !params[m[1]] {
					t.Errorf("%s: path parameter {%s} is not declared", where, m[1])
				}
			}
			params = before
		}
	}
}

// resolvePointer follows a local JSON pointer ("#/components/schemas/X").
func resolvePointer(doc map[string]any, ref string) any {
	if !strings.HasPrefix(ref, "#/") {
		return nil
	}
	var cur any = doc
	for _, part := range strings.Split(ref[2:], "/") {
		part = strings.ReplaceAll(strings.ReplaceAll(part, "~1", "/"), "~0", "~")
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		if cur, ok = m[part]; !ok {
			return nil
		}
	}
	return cur
}

// TestOpenAPIMatchesRouter keeps the document and the router in step: every
// route is documented and every documented operation is routed.
func TestOpenAPIMatchesRouter(t *testing.T) {
	doc := loadOpenAPI(t)
	documented := map[string]bool{}
	paths, _ := doc["paths"].(map[string]any)
	for path, item := range paths {
		item, _ := item.(map[string]any)
		for _, m := range openAPIMethods {
			if item[m] != nil {
				documented[strings.ToUpper(m)+" "+path] = true
			}
		}
	}

	routed := map[string]bool{}
	h, ok := docServer("").Handler().(chi.Routes)
	if !ok {
		t.Fatal("Handler() is not a chi router")
	}
	err := chi.Walk(h, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		routed[method+" "+openAPIPath(route)] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(routed) < 20 {
		t.Fatalf("walked only %d routes: %v", len(routed), routed)
	}
	for _, r := range sortedKeys(routed) {
		if !documented[r] {
			t.Errorf("route %s is not in api/openapi.json", r)
		}
	}
	for _, d := range sortedKeys(documented) {
		if !routed[d] {
			t.Errorf("api/openapi.json documents %s, which the router does not serve", d)
		}
	}
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestOpenAPIWebSocketProse checks that the two WebSocket endpoints describe
// their frames and close codes.
func TestOpenAPIWebSocketProse(t *testing.T) {
	doc := loadOpenAPI(t)
	desc := func(path string) string {
		op, _ := resolvePointer(doc, "#/paths/"+strings.ReplaceAll(path, "/", "~1")+"/get").(map[string]any)
		d, _ := op["description"].(string)
		if d == "" {
			t.Fatalf("GET %s has no description", path)
		}
		return d
	}
	code := func(c websocket.StatusCode) string { return strconv.Itoa(int(c)) }
	for path, words := range map[string][]string{
		"/workspaces/{id}/exec": {
			`"auth"`, "`start`", "`stdin`", "`close_stdin`", "`resize`", "`signal`",
			"`started`", "`stdout`", "`stderr`", "`exit`", "`error`", "base64",
			code(CloseBadRequest), code(CloseUnauthenticated), code(CloseNotFound),
			code(websocket.StatusNormalClosure), code(websocket.StatusInternalError), code(websocket.StatusGoingAway),
		},
		"/conversations/{id}/stream": {
			`"auth"`, "`snapshot`", "`event`", "after",
			code(CloseResume), code(websocket.StatusGoingAway), code(CloseNotFound), code(CloseUnauthenticated),
			code(CloseBadRequest), code(websocket.StatusInternalError),
		},
	} {
		d := desc(path)
		for _, w := range words {
			if !strings.Contains(d, w) {
				t.Errorf("GET %s description does not mention %s", path, w)
			}
		}
	}
}

func TestOpenAPIServed(t *testing.T) {
	srv := httptest.NewServer(docServer("v9.9.9-test").Handler())
	defer srv.Close()
	get := func(path string) (*http.Response, string) {
		t.Helper()
		// No key: both routes are public.
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s = %d: %s", path, resp.StatusCode, b)
		}
		return resp, string(b)
	}

	resp, body := get("/openapi.json")
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("/openapi.json Content-Type = %q", ct)
	}
	var doc struct {
		OpenAPI string `json:"openapi"`
		Info    struct {
			Version string `json:"version"`
		} `json:"info"`
		Paths map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("served document: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1.") || doc.Info.Version != "v9.9.9-test" || len(doc.Paths) == 0 {
		t.Errorf("served document: openapi %q, version %q, %d paths", doc.OpenAPI, doc.Info.Version, len(doc.Paths))
	}

	resp, body = get("/docs")
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("/docs Content-Type = %q", ct)
	}
	if !strings.Contains(body, "<html") || !strings.Contains(body, "/openapi.json") || !strings.Contains(body, `SPEC_URL = "openapi.json"`) {
		t.Error("/docs does not look like a page that loads /openapi.json")
	}
	// Self-contained: nothing loaded from elsewhere.
	for _, bad := range []string{"http://", "https://", "<script src", "<link"} {
		if strings.Contains(body, bad) {
			t.Errorf("/docs contains %q; it must not load anything from elsewhere", bad)
		}
	}
}
