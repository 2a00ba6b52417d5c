package api_test

import (
	"context"
	"testing"
	"time"
)

// "started" is the first frame of a command, before any of its output,
// however fast the command writes.
func TestExecSocketStartedComesFirst(t *testing.T) {
	for _, be := range append([]backend{processBackend}, engineBackends...) {
		t.Run(be.name, func(t *testing.T) { startedComesFirst(t, be) })
	}
}

func startedComesFirst(t *testing.T, be backend) {
	e := newEnv(t, be)
	ws := e.createWorkspace(e.alice, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < 15; i++ {
		c := dialExec(t, ctx, e.url+"/workspaces/"+ws.ID+"/exec", e.alice)
		send(t, ctx, c, map[string]any{"type": "start", "argv": []string{"echo", "hi"}})
		if f := readFrame(t, ctx, c); f.Type != "started" {
			t.Fatalf("run %d: first frame %q (%q), want started", i, f.Type, f.Data)
		}
		if f := readExit(t, ctx, c); f.ExitCode != 0 {
			t.Fatalf("run %d: exit %+v", i, f.ExitResult)
		}
		c.CloseNow()
	}
}
