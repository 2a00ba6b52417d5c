package conversation_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/corralhq/corral/conversation"
	"github.com/corralhq/corral/policy"
)

// TestUserChosenEndpointCannotReachHostAddresses: a service listening on
// every interface of the server's host is out of reach at each of the
// host's addresses, not only at loopback and private ones (issue 7: a
// base_url at the host's own interface address made the server POST to
// it), and stays so when the operator allows private endpoints: that opens
// other machines' private addresses, never this one's.
func TestUserChosenEndpointCannotReachHostAddresses(t *testing.T) {
	for _, allowPrivate := range []bool{false, true} {
		t.Run("allowPrivate="+strconv.FormatBool(allowPrivate), func(t *testing.T) {
			testHostAddressesRefused(t, allowPrivate)
		})
	}
}

func testHostAddressesRefused(t *testing.T, allowPrivate bool) {
	llm := newLLM(t)
	// A second listener for the same scripted LLM on every interface.
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(llm.srv.Config.Handler)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)

	addrs, err := policy.HostAddresses()
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig("http://127.0.0.1:1/v1")
	cfg.AllowPrivateLLMOverride = allowPrivate
	f := newFixture(t, cfg)
	ctx := context.Background()
	tried := 0
	bases := []string{"http://localhost:" + port + "/v1"}
	for _, a := range addrs {
		if a.Is6() && a.IsLinkLocalUnicast() {
			continue // needs a zone, which a URL cannot carry portably
		}
		bases = append(bases, "http://"+net.JoinHostPort(a.String(), port)+"/v1")
	}
	for _, base := range bases {
		tried++
		t.Run(base, func(t *testing.T) {
			c := f.create(conversation.LLMConfig{BaseURL: base})
			sub, _ := f.svc.Subscribe(ctx, f.alice.ID, c.ID, 0)
			defer sub.Close()
			f.svc.Send(ctx, f.alice.ID, c.ID, "hi")
			evs := waitState(t, sub, conversation.StateError)
			p := payload[conversation.ErrorPayload](t, ofKind(evs, conversation.KindError)[0])
			if p.Code != "llm_address_denied" {
				t.Fatalf("base_url %s: error %+v, want llm_address_denied", base, p)
			}
		})
	}
	if tried == 1 {
		t.Fatal("this machine lists no interface address")
	}
	if n := len(llm.Requests()); n != 0 {
		t.Fatalf("%d requests reached the server's own host through a user-chosen base_url", n)
	}
	// The listener itself answers: the refusals above are the policy's,
	// not a dead port.
	resp, err := http.Get("http://" + net.JoinHostPort("127.0.0.1", port) + "/")
	if err != nil {
		t.Fatalf("the listener itself is not reachable: %v", err)
	}
	resp.Body.Close()
}

// TestUserChosenPrivateEndpointWithAllowPrivate: the operator's opt-in
// opens another machine's private address to a user-chosen llm.base_url;
// without it the same endpoint is refused.
func TestUserChosenPrivateEndpointWithAllowPrivate(t *testing.T) {
	llm := newPrivateLLM(t, reply{content: "from a private host"})
	ctx := context.Background()
	for _, allowPrivate := range []bool{false, true} {
		cfg := testConfig("http://127.0.0.1:1/v1")
		cfg.AllowPrivateLLMOverride = allowPrivate
		f := newFixture(t, cfg)
		c := f.create(conversation.LLMConfig{BaseURL: llm.URL()})
		sub, _ := f.svc.Subscribe(ctx, f.alice.ID, c.ID, 0)
		f.svc.Send(ctx, f.alice.ID, c.ID, "hi")
		if !allowPrivate {
			evs := waitState(t, sub, conversation.StateError)
			p := payload[conversation.ErrorPayload](t, ofKind(evs, conversation.KindError)[0])
			if p.Code != "llm_address_denied" {
				t.Fatalf("private endpoint without allowPrivate: %+v, want llm_address_denied", p)
			}
		} else {
			waitState(t, sub, conversation.StateWaiting)
		}
		sub.Close()
		f.stop()
	}
	if n := len(llm.Requests()); n != 1 {
		t.Fatalf("%d requests reached the private endpoint, want 1 (with allowPrivate only)", n)
	}
}

// TestUserChosenEndpointNameResolvingToDeniedAddress: a host name is
// checked at the address it resolves to when dialled.
func TestUserChosenEndpointNameResolvingToDeniedAddress(t *testing.T) {
	llm := newLLM(t)
	_, port, _ := net.SplitHostPort(llm.srv.Listener.Addr().String())
	f := newFixture(t, testConfig("http://127.0.0.1:1/v1"))
	ctx := context.Background()
	// "localhost" is a name (not an IP literal), resolved by the dialer.
	c := f.create(conversation.LLMConfig{BaseURL: "http://localhost:" + port + "/v1"})
	sub, _ := f.svc.Subscribe(ctx, f.alice.ID, c.ID, 0)
	defer sub.Close()
	f.svc.Send(ctx, f.alice.ID, c.ID, "hi")
	evs := waitState(t, sub, conversation.StateError)
	p := payload[conversation.ErrorPayload](t, ofKind(evs, conversation.KindError)[0])
	if p.Code != "llm_address_denied" {
		t.Fatalf("error %+v", p)
	}
	if n := len(llm.Requests()); n != 0 {
		t.Fatalf("%d requests reached a loopback endpoint named by a host name", n)
	}
}
