package conversation_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/corralhq/corral/conversation"
	"github.com/corralhq/corral/conversation/openai"
	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/store"
)

func TestAgentUsesToolsAndFinishes(t *testing.T) {
	llm := newLLM(t,
		reply{content: "I will write the file.", calls: []openai.ToolCall{call("c1", "write_file", map[string]string{"path": "dir/hello.txt", "content": "hi there\n"})}},
		reply{calls: []openai.ToolCall{call("c2", "run_command", map[string]string{"command": "cat dir/hello.txt; echo oops >&2; exit 3"})}},
		reply{calls: []openai.ToolCall{call("c3", "read_file", map[string]string{"path": "dir/hello.txt"})}},
		reply{calls: []openai.ToolCall{call("c4", "finish", map[string]string{"summary": "wrote and read the file"})}},
	)
	f := newFixture(t, testConfig(llm.URL()))
	ctx := context.Background()
	c := f.create(conversation.LLMConfig{})
	if c.State != string(conversation.StateIdle) {
		t.Fatalf("new conversation is %s", c.State)
	}
	sub, err := f.svc.Subscribe(ctx, f.alice.ID, c.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if sub.Snapshot().State != conversation.StateIdle || sub.Snapshot().LastSeq != 0 {
		t.Fatalf("snapshot %+v", sub.Snapshot())
	}
	msg, err := f.svc.Send(ctx, f.alice.ID, c.ID, "write hello.txt and show it")
	if err != nil {
		t.Fatal(err)
	}
	if msg.Seq != 1 || msg.Kind != conversation.KindMessage || msg.Source != conversation.SourceUser {
		t.Fatalf("message event %+v", msg)
	}
	evs := waitState(t, sub, conversation.StateFinished)
	want := "message:user state:running message:agent action:write_file observation action:run_command observation " +
		"action:read_file observation action:finish observation message:agent state:finished"
	if got := kinds(evs); got != want {
		t.Fatalf("events\n got %s\nwant %s", got, want)
	}
	for i, e := range evs {
		if e.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d", i, e.Seq)
		}
	}
	// The file is really there, and the command really ran.
	data, err := os.ReadFile(filepath.Join(f.ws.root, f.aliceW.ID, "dir", "hello.txt"))
	if err != nil || string(data) != "hi there\n" {
		t.Fatalf("file: %q, %v", data, err)
	}
	obs := ofKind(evs, conversation.KindObservation)
	run := payload[conversation.ObservationPayload](t, obs[1])
	if run.ExitCode != 3 || !strings.Contains(run.Output, "hi there") || !strings.Contains(run.Output, "oops") || run.CallID != "c2" {
		t.Fatalf("run_command observation %+v", run)
	}
	var streamed strings.Builder
	for _, e := range ofKind(evs, conversation.KindOutput) {
		p := payload[conversation.OutputPayload](t, e)
		if p.CallID != "c2" {
			t.Fatalf("output of %s", p.CallID)
		}
		streamed.WriteString(p.Data)
	}
	if !strings.Contains(streamed.String(), "hi there") || !strings.Contains(streamed.String(), "oops") {
		t.Fatalf("streamed output %q", streamed.String())
	}
	if read := payload[conversation.ObservationPayload](t, obs[2]); read.Output != "hi there\n" || read.ExitCode != 0 {
		t.Fatalf("read_file observation %+v", read)
	}

	// What the model was sent: the server's model and key, the four tools,
	// and each tool's result answering its call.
	reqs := llm.Requests()
	if len(reqs) != 4 {
		t.Fatalf("%d LLM requests", len(reqs))
	}
	if reqs[0].Auth != "Bearer server-key" || reqs[0].Req.Model != "test-model" || len(reqs[0].Req.Tools) != 4 {
		t.Fatalf("first request %+v", reqs[0])
	}
	last := reqs[3].Req.Messages
	roles := []string{}
	for _, m := range last {
		roles = append(roles, m.Role)
	}
	if got := strings.Join(roles, ","); got != "system,user,assistant,tool,assistant,tool,assistant,tool" {
		t.Fatalf("roles of the last request: %s", got)
	}
	if last[4].ToolCalls[0].ID != "c2" || last[5].ToolCallID != "c2" || !strings.Contains(last[5].Content, "exit code: 3") {
		t.Fatalf("tool exchange %+v %+v", last[4], last[5])
	}
	got, err := f.svc.Get(ctx, f.alice.ID, c.ID)
	if err != nil || got.State != string(conversation.StateFinished) || got.LastSeq != evs[len(evs)-1].Seq {
		t.Fatalf("conversation %+v, %v", got, err)
	}
}

func TestMessageWhileRunningIsQueuedForNextStep(t *testing.T) {
	release := make(chan struct{})
	llm := newLLM(t,
		reply{content: "first answer", block: release},
		reply{content: "second answer"},
	)
	f := newFixture(t, testConfig(llm.URL()))
	ctx := context.Background()
	c := f.create(conversation.LLMConfig{})
	sub, err := f.svc.Subscribe(ctx, f.alice.ID, c.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := f.svc.Send(ctx, f.alice.ID, c.ID, "one"); err != nil {
		t.Fatal(err)
	}
	waitState(t, sub, conversation.StateRunning)
	// The agent is inside its LLM call; this message waits for its next step.
	for len(llm.Requests()) == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := f.svc.Send(ctx, f.alice.ID, c.ID, "two"); err != nil {
		t.Fatal(err)
	}
	close(release)
	evs := waitState(t, sub, conversation.StateWaiting)
	if got := kinds(evs); got != "message:user message:agent message:agent state:waiting" {
		t.Fatalf("events: %s", got)
	}
	reqs := llm.Requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests", len(reqs))
	}
	var contents []string
	for _, m := range reqs[1].Req.Messages[1:] {
		contents = append(contents, m.Role+":"+m.Content)
	}
	if got := strings.Join(contents, "|"); got != "user:one|user:two|assistant:first answer" {
		t.Fatalf("second request: %s", got)
	}
	// A message to a waiting conversation starts the agent again.
	llm.push(reply{content: "third answer"})
	if _, err := f.svc.Send(ctx, f.alice.ID, c.ID, "three"); err != nil {
		t.Fatal(err)
	}
	evs = waitState(t, sub, conversation.StateWaiting)
	if got := kinds(evs); got != "message:user state:running message:agent state:waiting" {
		t.Fatalf("events: %s", got)
	}
}

func TestLLMRetriesThenAnswers(t *testing.T) {
	llm := newLLM(t,
		reply{status: 429, header: map[string]string{"Retry-After": "0"}, body: `{"error":{"message":"slow down"}}`},
		reply{status: 503, body: "overloaded"},
		reply{content: "hello"},
	)
	f := newFixture(t, testConfig(llm.URL()))
	ctx := context.Background()
	c := f.create(conversation.LLMConfig{})
	sub, _ := f.svc.Subscribe(ctx, f.alice.ID, c.ID, 0)
	defer sub.Close()
	f.svc.Send(ctx, f.alice.ID, c.ID, "hi")
	evs := waitState(t, sub, conversation.StateWaiting, conversation.StateError)
	if got := kinds(evs); got != "message:user state:running message:agent state:waiting" {
		t.Fatalf("events: %s", got)
	}
	if n := len(llm.Requests()); n != 3 {
		t.Fatalf("%d requests, want 3", n)
	}
}

func TestLLMFailuresBecomeErrorEvents(t *testing.T) {
	cases := []struct {
		name    string
		script  []reply
		code    string
		mention string
	}{
		{"bad request", []reply{{status: 400, body: `{"error":{"message":"model does not support tools"}}`}}, "llm_bad_request", "model does not support tools"},
		{"unauthorized", []reply{{status: 401, body: `{"error":{"message":"bad key"}}`}}, "llm_auth", "bad key"},
		{"retries spent", []reply{{status: 500, body: "a"}, {status: 502, body: "b"}, {status: 500, body: "c"}}, "llm_unavailable", "after 3 attempts"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			llm := newLLM(t, tc.script...)
			f := newFixture(t, testConfig(llm.URL()))
			ctx := context.Background()
			c := f.create(conversation.LLMConfig{})
			sub, _ := f.svc.Subscribe(ctx, f.alice.ID, c.ID, 0)
			defer sub.Close()
			f.svc.Send(ctx, f.alice.ID, c.ID, "hi")
			evs := waitState(t, sub, conversation.StateError)
			if got := kinds(evs); got != "message:user state:running error state:error" {
				t.Fatalf("events: %s", got)
			}
			p := payload[conversation.ErrorPayload](t, ofKind(evs, conversation.KindError)[0])
			if p.Code != tc.code || !strings.Contains(p.Message, tc.mention) || strings.Contains(p.Message, "server-key") {
				t.Fatalf("error %+v", p)
			}
		})
	}
}

func TestMaxStepsStopsTheAgent(t *testing.T) {
	var script []reply
	for i := range 3 {
		script = append(script, reply{calls: []openai.ToolCall{call("c"+strconv.Itoa(i), "run_command", map[string]string{"command": "true"})}})
	}
	llm := newLLM(t, script...)
	cfg := testConfig(llm.URL())
	cfg.MaxSteps = 2
	f := newFixture(t, cfg)
	ctx := context.Background()
	c := f.create(conversation.LLMConfig{})
	sub, _ := f.svc.Subscribe(ctx, f.alice.ID, c.ID, 0)
	defer sub.Close()
	f.svc.Send(ctx, f.alice.ID, c.ID, "loop")
	evs := waitState(t, sub, conversation.StateError)
	if got := kinds(evs); got != "message:user state:running action:run_command observation action:run_command observation error state:error" {
		t.Fatalf("events: %s", got)
	}
	if p := payload[conversation.ErrorPayload](t, ofKind(evs, conversation.KindError)[0]); p.Code != "max_steps" {
		t.Fatalf("error %+v", p)
	}
}

func TestInterruptKillsTheRunningCommand(t *testing.T) {
	llm := newLLM(t, reply{calls: []openai.ToolCall{call("c1", "run_command", map[string]string{"command": "echo $$ > pid; echo started; sleep 60; echo never"})}})
	f := newFixture(t, testConfig(llm.URL()))
	ctx := context.Background()
	c := f.create(conversation.LLMConfig{})
	sub, _ := f.svc.Subscribe(ctx, f.alice.ID, c.ID, 0)
	defer sub.Close()
	f.svc.Send(ctx, f.alice.ID, c.ID, "sleep")
	// Wait until the command has printed, streamed as it runs.
	for {
		e, err := sub.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind == conversation.KindOutput && strings.Contains(payload[conversation.OutputPayload](t, e).Data, "started") {
			break
		}
	}
	got, err := f.svc.Interrupt(ctx, f.alice.ID, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != string(conversation.StateInterrupted) {
		t.Fatalf("state after interrupt: %s", got.State)
	}
	evs := waitState(t, sub, conversation.StateInterrupted)
	if k := kinds(evs); k != "observation state:interrupted" {
		t.Fatalf("events: %s", k)
	}
	obs := payload[conversation.ObservationPayload](t, evs[0])
	if !obs.Interrupted || obs.Signal != "SIGKILL" || strings.Contains(obs.Output, "never") {
		t.Fatalf("observation %+v", obs)
	}
	if p := payload[conversation.StatePayload](t, evs[1]); p.Reason != "interrupted by the user" {
		t.Fatalf("state %+v", p)
	}
	pid, err := os.ReadFile(filepath.Join(f.ws.root, f.aliceW.ID, "pid"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/proc/" + strings.TrimSpace(string(pid))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("command %s still exists: %v", pid, err)
	}
	// Interrupting an agent that is not running changes nothing.
	again, err := f.svc.Interrupt(ctx, f.alice.ID, c.ID)
	if err != nil || again.LastSeq != got.LastSeq {
		t.Fatalf("second interrupt: %+v, %v", again, err)
	}
	// The next request tells the model the call was interrupted.
	llm.push(reply{content: "ok"})
	f.svc.Send(ctx, f.alice.ID, c.ID, "go on")
	waitState(t, sub, conversation.StateWaiting)
	reqs := llm.Requests()
	msgs := reqs[len(reqs)-1].Req.Messages
	if tool := msgs[3]; tool.Role != "tool" || tool.ToolCallID != "c1" || !strings.Contains(tool.Content, "interrupted") || msgs[4].Content != "go on" {
		t.Fatalf("messages after interrupt: %+v", msgs)
	}
}

func TestOwnershipIsolation(t *testing.T) {
	llm := newLLM(t)
	f := newFixture(t, testConfig(llm.URL()))
	ctx := context.Background()
	c := f.create(conversation.LLMConfig{})
	notFound := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("%s: %v, want not found", what, err)
		}
	}
	_, err := f.svc.Get(ctx, f.bob.ID, c.ID)
	notFound("get", err)
	_, err = f.svc.Send(ctx, f.bob.ID, c.ID, "hi")
	notFound("send", err)
	_, err = f.svc.Subscribe(ctx, f.bob.ID, c.ID, 0)
	notFound("subscribe", err)
	_, err = f.svc.Events(ctx, f.bob.ID, c.ID, 0, 10)
	notFound("events", err)
	_, err = f.svc.Interrupt(ctx, f.bob.ID, c.ID)
	notFound("interrupt", err)
	notFound("delete", f.svc.Delete(ctx, f.bob.ID, c.ID))
	_, err = f.svc.Create(ctx, f.bob.ID, conversation.CreateParams{WorkspaceID: f.aliceW.ID})
	notFound("create in another's workspace", err)
	list, err := f.svc.List(ctx, f.bob.ID, "", 10)
	if err != nil || len(list) != 0 {
		t.Fatalf("bob's list: %v, %v", list, err)
	}
	if _, err := f.svc.Send(ctx, f.alice.ID, c.ID, "  "); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("empty message: %v", err)
	}
	if _, err := f.svc.Subscribe(ctx, f.alice.ID, c.ID, 5); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("after beyond the end: %v", err)
	}
}

func TestDeleteEndsSubscriptionsAndRun(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	llm := newLLM(t, reply{content: "never seen", block: release})
	f := newFixture(t, testConfig(llm.URL()))
	ctx := context.Background()
	c := f.create(conversation.LLMConfig{})
	sub, _ := f.svc.Subscribe(ctx, f.alice.ID, c.ID, 0)
	defer sub.Close()
	f.svc.Send(ctx, f.alice.ID, c.ID, "hi")
	waitState(t, sub, conversation.StateRunning)
	if err := f.svc.Delete(ctx, f.alice.ID, c.ID); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := sub.Next(ctx)
		if err == nil {
			continue // the interrupted state the run recorded on its way out
		}
		if !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("subscription ended with %v", err)
		}
		break
	}
	if _, err := f.svc.Get(ctx, f.alice.ID, c.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if evs, err := f.db.ListEvents(ctx, c.ID, 0, 0); err != nil || len(evs) != 0 {
		t.Fatalf("events after delete: %d, %v", len(evs), err)
	}
	if err := f.svc.Delete(ctx, f.alice.ID, c.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestRestartMarksRunningConversationsInterrupted(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	llm := newLLM(t, reply{content: "never seen", block: release})
	f := newFixture(t, testConfig(llm.URL()))
	ctx := context.Background()
	c := f.create(conversation.LLMConfig{})
	sub, _ := f.svc.Subscribe(ctx, f.alice.ID, c.ID, 0)
	f.svc.Send(ctx, f.alice.ID, c.ID, "hi")
	waitState(t, sub, conversation.StateRunning)
	last := sub.Last()
	sub.Close()

	// A crash: a second server opens the same file while the first one's
	// agent is still "running" as far as the database knows.
	db2, err := store.Open(ctx, f.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	svc2, err := conversation.New(db2, f.ws, f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	n, err := svc2.Recover(ctx)
	if err != nil || n != 1 {
		t.Fatalf("recover: %d, %v", n, err)
	}
	got, err := svc2.Get(ctx, f.alice.ID, c.ID)
	if err != nil || got.State != string(conversation.StateInterrupted) {
		t.Fatalf("after recover: %+v, %v", got, err)
	}
	evs, err := svc2.Events(ctx, f.alice.ID, c.ID, last, 10)
	if err != nil || len(evs) != 1 {
		t.Fatalf("events after recover: %v, %v", evs, err)
	}
	if p := payload[conversation.StatePayload](t, evs[0]); p.State != conversation.StateInterrupted || p.Reason != "server restarted" {
		t.Fatalf("recover event %+v", p)
	}
	if n, err := svc2.Recover(ctx); err != nil || n != 0 {
		t.Fatalf("second recover: %d, %v", n, err)
	}
	svc2.Close(ctx)
}

func TestShutdownAndReopenKeepsEverything(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	llm := newLLM(t,
		reply{calls: []openai.ToolCall{call("c1", "run_command", map[string]string{"command": "echo one"})}},
		reply{content: "never seen", block: release},
	)
	f := newFixture(t, testConfig(llm.URL()))
	ctx := context.Background()
	c := f.create(conversation.LLMConfig{})
	sub, _ := f.svc.Subscribe(ctx, f.alice.ID, c.ID, 0)
	f.svc.Send(ctx, f.alice.ID, c.ID, "hi")
	for len(llm.Requests()) < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	before, err := f.svc.Events(ctx, f.alice.ID, c.ID, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.stop()
	// The subscription ends with "unavailable" once the events recorded on
	// the way out are delivered.
	for {
		_, err := sub.Next(ctx)
		if err == nil {
			continue
		}
		if !errors.Is(err, errdefs.ErrUnavailable) {
			t.Fatalf("subscription ended with %v", err)
		}
		break
	}
	f.start()
	after, err := f.svc.Events(ctx, f.alice.ID, c.ID, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before)+1 {
		t.Fatalf("%d events before, %d after", len(before), len(after))
	}
	for i := range before {
		if before[i].ID != after[i].ID || string(before[i].Payload) != string(after[i].Payload) {
			t.Fatalf("event %d changed", i)
		}
	}
	if p := payload[conversation.StatePayload](t, after[len(after)-1]); p.State != conversation.StateInterrupted || p.Reason != "server shutting down" {
		t.Fatalf("last event %+v", p)
	}
	got, err := f.svc.Get(ctx, f.alice.ID, c.ID)
	if err != nil || got.State != string(conversation.StateInterrupted) {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}
}

func TestWorkspaceDeletionEndsItsConversations(t *testing.T) {
	release := make(chan struct{})
	llm := newLLM(t, reply{content: "late", block: release})
	f := newFixture(t, testConfig(llm.URL()))
	ctx := context.Background()
	c1 := f.create(conversation.LLMConfig{})
	c2 := f.create(conversation.LLMConfig{})
	sub1, _ := f.svc.Subscribe(ctx, f.alice.ID, c1.ID, 0)
	defer sub1.Close()
	f.svc.Send(ctx, f.alice.ID, c1.ID, "hi")
	waitState(t, sub1, conversation.StateRunning)

	// The server's way: conversations first.
	if err := f.svc.DeleteInWorkspace(ctx, f.alice.ID, f.aliceW.ID); err != nil {
		t.Fatal(err)
	}
	close(release)
	for {
		if _, err := sub1.Next(ctx); err != nil {
			if !errors.Is(err, errdefs.ErrNotFound) {
				t.Fatalf("subscription ended with %v", err)
			}
			break
		}
	}
	for _, id := range []string{c1.ID, c2.ID} {
		if _, err := f.svc.Get(ctx, f.alice.ID, id); !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("%s after its workspace: %v", id, err)
		}
	}

	// A workspace row deleted behind the service's back (cascade): the
	// running agent finds out at its next step and ends its subscribers.
	block := make(chan struct{})
	llm.push(reply{content: "late", block: block})
	w := store.Workspace{ID: store.NewID("ws"), UserID: f.alice.ID, Runtime: "test", State: "running"}
	if err := f.db.CreateWorkspace(ctx, w); err != nil {
		t.Fatal(err)
	}
	c3, err := f.svc.Create(ctx, f.alice.ID, conversation.CreateParams{WorkspaceID: w.ID})
	if err != nil {
		t.Fatal(err)
	}
	sub3, _ := f.svc.Subscribe(ctx, f.alice.ID, c3.ID, 0)
	defer sub3.Close()
	f.svc.Send(ctx, f.alice.ID, c3.ID, "hi")
	waitState(t, sub3, conversation.StateRunning)
	if err := f.db.DeleteWorkspace(ctx, w.ID); err != nil {
		t.Fatal(err)
	}
	close(block)
	for {
		if _, err := sub3.Next(ctx); err != nil {
			if !errors.Is(err, errdefs.ErrNotFound) {
				t.Fatalf("subscription ended with %v", err)
			}
			break
		}
	}
}
