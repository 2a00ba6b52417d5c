package conversation_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/corralhq/corral/conversation"
	"github.com/corralhq/corral/store"
)

func ev(source, kind string, p any) store.Event {
	b, _ := json.Marshal(p)
	return store.Event{Source: source, Kind: kind, Payload: b}
}

func TestChatMessagesKeepTheProtocolsOrder(t *testing.T) {
	act := func(id string) store.Event {
		return ev("agent", "action", conversation.ActionPayload{CallID: id, Tool: "run_command", Arguments: json.RawMessage(`{"command":"ls"}`)})
	}
	obs := func(id string) store.Event {
		return ev("workspace", "observation", conversation.ObservationPayload{CallID: id, Tool: "run_command", Output: "out-" + id})
	}
	user := func(s string) store.Event { return ev("user", "message", conversation.MessagePayload{Content: s}) }
	state := func(s conversation.State) store.Event {
		return ev("system", "state", conversation.StatePayload{State: s})
	}
	history := []store.Event{
		user("u1"), state("running"),
		ev("agent", "message", conversation.MessagePayload{Content: "thinking"}),
		act("a"),
		user("u2"), // sent while the command ran
		ev("workspace", "output", conversation.OutputPayload{CallID: "a", Data: "x"}),
		obs("a"),
		act("b"),             // never answered: the server went down
		state("interrupted"), // recorded at restart
		user("u3"), state("running"),
		act("c"),
		ev("agent", "action", conversation.ActionPayload{CallID: "d", Tool: "write_file", Arguments: json.RawMessage(`"{not json"`)}),
		obs("c"),
	}
	msgs := conversation.ChatMessages("sys", history)
	var got []string
	for _, m := range msgs {
		s := m.Role + ":" + m.Content
		for _, c := range m.ToolCalls {
			s += "[" + c.ID + " " + string(c.Function.Arguments) + "]"
		}
		if m.ToolCallID != "" {
			s += "(" + m.ToolCallID + ")"
		}
		if strings.Contains(m.Content, "interrupted") {
			s = m.Role + ":interrupted(" + m.ToolCallID + ")"
		}
		got = append(got, s)
	}
	want := []string{
		"system:sys", "user:u1",
		`assistant:thinking[a {"command":"ls"}]`, "tool:exit code: 0\nout-a(a)", "user:u2",
		`assistant:[b {"command":"ls"}]`, "tool:interrupted(b)",
		"user:u3",
		`assistant:[c {"command":"ls"}][d {not json]`, "tool:exit code: 0\nout-c(c)", "tool:interrupted(d)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("messages\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
