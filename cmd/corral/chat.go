package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/corralhq/corral/api/types"
	"github.com/corralhq/corral/client"
)

const chatUsage = `usage: corral chat [--workspace ID | --conversation ID] [-o json] "MESSAGE"

Sends MESSAGE to an agent and shows what it does until its turn ends: a new
conversation in a new workspace, or in --workspace ID, or the next message
of --conversation ID. The conversation's ID is printed on stderr.`

const conversationUsage = `usage:
  corral conversation follow ID [--after SEQ] [-o json]   show a conversation's events as they happen
  corral conversation ls [-o json]                         list your conversations`

func chatCommand(args []string) error {
	fs := flag.NewFlagSet("chat", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprintln(os.Stderr, chatUsage) }
	wsID := fs.String("workspace", "", "run in this workspace (default: a new one)")
	cvID := fs.String("conversation", "", "continue this conversation")
	out := outputFlag(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *wsID != "" && *cvID != "" {
		fs.Usage()
		return errUsage
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	id := *cvID
	if id == "" {
		req := types.CreateConversationRequest{WorkspaceID: *wsID}
		if *wsID == "" {
			req.Workspace = &types.WorkspaceSpec{}
		}
		cv, err := c.CreateConversation(ctx, req)
		if err != nil {
			return err
		}
		id = cv.ID
		fmt.Fprintf(os.Stderr, "conversation %s in workspace %s\n", cv.ID, cv.WorkspaceID)
	}
	msg, err := c.Send(ctx, id, pos[0])
	if err != nil {
		return err
	}
	// From the message on, until the agent's turn ends.
	return follow(ctx, c, id, msg.Seq-1, *out == "json", true)
}

func conversationCommand(args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(os.Stderr, conversationUsage)
		return errUsage
	}
	switch args[0] {
	case "follow":
		fs := flag.NewFlagSet("conversation follow", flag.ContinueOnError)
		after := fs.Int64("after", 0, "start after this event seq")
		out := outputFlag(fs)
		pos, err := parseInterspersed(fs, args[1:])
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			fmt.Fprintln(os.Stderr, conversationUsage)
			return errUsage
		}
		c, err := newClient()
		if err != nil {
			return err
		}
		ctx, cancel := signalContext()
		defer cancel()
		err = follow(ctx, c, pos[0], *after, *out == "json", false)
		if errors.Is(err, context.Canceled) {
			return nil // Ctrl-C is how following ends
		}
		return err
	case "ls", "list":
		fs := flag.NewFlagSet("conversation ls", flag.ContinueOnError)
		out := outputFlag(fs)
		if _, err := parseInterspersed(fs, args[1:]); err != nil {
			return err
		}
		c, err := newClient()
		if err != nil {
			return err
		}
		ctx, cancel := signalContext()
		defer cancel()
		list, err := collect(c.Conversations(ctx))
		if err != nil {
			return err
		}
		if *out == "json" {
			return printJSON(os.Stdout, list)
		}
		for _, cv := range list {
			fmt.Printf("%s  %-11s  %s\n", cv.ID, cv.State, cv.WorkspaceID)
		}
		return nil
	}
	fmt.Fprintln(os.Stderr, conversationUsage)
	return errUsage
}

// follow prints a conversation's events after seq after, reconnecting as
// needed. With untilTurnEnds it returns when the agent's turn is over.
func follow(ctx context.Context, c *client.Client, id string, after int64, asJSON, untilTurnEnds bool) error {
	enc := json.NewEncoder(os.Stdout)
	for e, err := range c.Events(ctx, id, after) {
		if err != nil {
			return err
		}
		if asJSON {
			if err := enc.Encode(e); err != nil {
				return err
			}
		} else {
			render(os.Stdout, e)
		}
		if untilTurnEnds && e.Kind == types.KindState {
			var st types.StatePayload
			if json.Unmarshal(e.Payload, &st) == nil && st.State != types.ConversationRunning && st.State != types.ConversationIdle {
				if st.State == types.ConversationError {
					return exitCode(1)
				}
				return nil
			}
		}
	}
	return nil
}

// render writes an event for a person.
func render(w io.Writer, e types.Event) {
	switch e.Kind {
	case types.KindMessage:
		var p types.MessagePayload
		_ = json.Unmarshal(e.Payload, &p)
		fmt.Fprintf(w, "%s> %s\n", e.Source, p.Content)
	case types.KindAction:
		var p types.ActionPayload
		_ = json.Unmarshal(e.Payload, &p)
		var args map[string]any
		_ = json.Unmarshal(p.Arguments, &args)
		if cmd, ok := args["command"].(string); ok && p.Tool == "run_command" {
			fmt.Fprintf(w, "$ %s\n", cmd)
			return
		}
		fmt.Fprintf(w, "→ %s %s\n", p.Tool, compact(p.Arguments))
	case types.KindOutput:
		var p types.OutputPayload
		_ = json.Unmarshal(e.Payload, &p)
		fmt.Fprint(w, p.Data)
	case types.KindObservation:
		var p types.ObservationPayload
		_ = json.Unmarshal(e.Payload, &p)
		var notes []string
		if p.Tool == "run_command" {
			notes = append(notes, "exit "+strconv.Itoa(p.ExitCode))
		}
		if p.Error != "" {
			notes = append(notes, p.Error)
		}
		if p.TimedOut {
			notes = append(notes, "timed out")
		}
		if p.Signal != "" {
			notes = append(notes, p.Signal)
		}
		if p.Truncated {
			notes = append(notes, "output truncated")
		}
		if len(notes) > 0 {
			fmt.Fprintf(w, "[%s]\n", strings.Join(notes, ", "))
		}
	case types.KindError:
		var p types.ErrorPayload
		_ = json.Unmarshal(e.Payload, &p)
		fmt.Fprintf(w, "error: %s: %s\n", p.Code, p.Message)
	case types.KindState:
		var p types.StatePayload
		_ = json.Unmarshal(e.Payload, &p)
		if p.Reason != "" {
			fmt.Fprintf(w, "· %s (%s)\n", p.State, p.Reason)
		} else {
			fmt.Fprintf(w, "· %s\n", p.State)
		}
	default:
		fmt.Fprintf(w, "%s %s %s\n", e.Source, e.Kind, compact(e.Payload))
	}
}

func compact(b json.RawMessage) string {
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}
