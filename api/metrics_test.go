package api_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// Made-up methods, sent without a key, do not each add a metrics series.
func TestMetricsMethodsAreBounded(t *testing.T) {
	e := newEnv(t, processBackend)
	for i := 0; i < 20; i++ {
		e.do("", fmt.Sprintf("MADEUP%d", i), "/workspaces", nil)
	}
	_, body := e.do("", "GET", "/metrics", nil)
	if strings.Contains(string(body), "MADEUP") {
		t.Fatalf("metrics keep made-up methods as labels:\n%s", body)
	}
	if !strings.Contains(string(body), `method="OTHER"`) {
		t.Fatalf("metrics do not count unknown methods as OTHER:\n%s", body)
	}
	resp, _ := e.do("", "GET", "/metrics", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatal(resp.Status)
	}
}
