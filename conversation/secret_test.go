package conversation_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/corralhq/corral/conversation"
	"github.com/corralhq/corral/errdefs"
)

func TestConversationKeyIsSealedAndUsed(t *testing.T) {
	llm := newPrivateLLM(t, reply{content: "a"}, reply{content: "b"}, reply{content: "c"})
	cfg := testConfig("http://127.0.0.1:1/unused")
	cfg.SecretKey = "0123456789abcdef-server-secret"
	cfg.AllowPrivateLLMOverride = true // the scripted LLM is on a private address
	f := newFixture(t, cfg)
	ctx := context.Background()

	// Its own endpoint and key: the key is sent there, stored sealed, and
	// never shown.
	c := f.create(conversation.LLMConfig{BaseURL: llm.URL(), Model: "their-model", APIKey: "sk-user-secret"})
	stored, err := f.db.GetConversation(ctx, f.alice.ID, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(stored.LLMKey) == 0 || bytes.Contains(stored.LLMKey, []byte("sk-user-secret")) {
		t.Fatalf("stored key %q", stored.LLMKey)
	}
	if info := conversation.InfoOf(stored); !info.LLM.APIKeySet || info.LLM.Model != "their-model" {
		t.Fatalf("info %+v", info)
	}
	sub, _ := f.svc.Subscribe(ctx, f.alice.ID, c.ID, 0)
	f.svc.Send(ctx, f.alice.ID, c.ID, "hi")
	waitState(t, sub, conversation.StateWaiting)
	sub.Close()
	reqs := llm.Requests()
	if reqs[0].Auth != "Bearer sk-user-secret" || reqs[0].Req.Model != "their-model" {
		t.Fatalf("request %+v", reqs[0])
	}

	// Its own endpoint without a key: the server's key stays home.
	c2 := f.create(conversation.LLMConfig{BaseURL: llm.URL()})
	sub2, _ := f.svc.Subscribe(ctx, f.alice.ID, c2.ID, 0)
	f.svc.Send(ctx, f.alice.ID, c2.ID, "hi")
	waitState(t, sub2, conversation.StateWaiting)
	sub2.Close()
	if reqs := llm.Requests(); reqs[1].Auth != "" || reqs[1].Req.Model != "test-model" {
		t.Fatalf("request to an overridden endpoint %+v", reqs[1])
	}

	// A server restarted with another secret says so instead of sending
	// garbage.
	for _, tc := range []struct{ secret, code string }{
		{"another-secret-of-16+bytes", "secret_key_changed"},
		{"", "secret_key_missing"},
	} {
		f.stop()
		f.cfg.SecretKey = tc.secret
		f.start()
		cur, err := f.svc.Get(ctx, f.alice.ID, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		sub, _ := f.svc.Subscribe(ctx, f.alice.ID, c.ID, cur.LastSeq)
		f.svc.Send(ctx, f.alice.ID, c.ID, "again")
		evs := waitState(t, sub, conversation.StateError)
		sub.Close()
		p := payload[conversation.ErrorPayload](t, ofKind(evs, conversation.KindError)[0])
		if p.Code != tc.code {
			t.Fatalf("with secret %q: error %+v", tc.secret, p)
		}
	}
	if n := len(llm.Requests()); n != 2 {
		t.Fatalf("%d requests reached the LLM", n)
	}
	// Without a secret, a key cannot be accepted at all.
	_, err = f.svc.Create(ctx, f.alice.ID, conversation.CreateParams{WorkspaceID: f.aliceW.ID, LLM: conversation.LLMConfig{APIKey: "k"}})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || errdefs.Code(err) != "secret_key_missing" {
		t.Fatalf("create with a key and no secret: %v", err)
	}
}

func TestShortSecretIsRefused(t *testing.T) {
	cfg := testConfig("http://127.0.0.1:1")
	cfg.SecretKey = "short"
	if _, err := conversation.New(nil, nil, cfg); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("short secret: %v", err)
	}
}

func TestUserChosenEndpointCannotReachPrivateAddresses(t *testing.T) {
	llm := newLLM(t)
	f := newFixture(t, testConfig("http://127.0.0.1:1/v1"))
	ctx := context.Background()
	c := f.create(conversation.LLMConfig{BaseURL: llm.URL()})
	sub, _ := f.svc.Subscribe(ctx, f.alice.ID, c.ID, 0)
	defer sub.Close()
	f.svc.Send(ctx, f.alice.ID, c.ID, "hi")
	evs := waitState(t, sub, conversation.StateError)
	p := payload[conversation.ErrorPayload](t, ofKind(evs, conversation.KindError)[0])
	if p.Code != "llm_address_denied" {
		t.Fatalf("error %+v", p)
	}
	if n := len(llm.Requests()); n != 0 {
		t.Fatalf("%d requests reached a loopback endpoint chosen by a user", n)
	}
}
