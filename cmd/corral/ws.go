package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/corralhq/corral/api/types"
	"github.com/corralhq/corral/policy"
)

const wsUsage = `usage:
  corral ws create [--image IMAGE] [--memory 512MiB] [--cpus 1] [--network none|open|allowlist]
                   [--allow HOST]... [--env K=V]... [-o json]   create a workspace; prints its ID
  corral ws ls [-o json]                                         list your workspaces
  corral ws get ID [-o json]                                     show one
  corral ws rm ID...                                             delete workspaces and their files`

func wsCommand(args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(os.Stderr, wsUsage)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	switch args[0] {
	case "create":
		return wsCreate(args[1:])
	case "ls", "list":
		return wsList(args[1:])
	case "get":
		return wsGet(args[1:])
	case "rm", "delete":
		return wsRemove(args[1:])
	}
	fmt.Fprintf(os.Stderr, "corral ws: unknown command %q\n\n%s\n", args[0], wsUsage)
	return errUsage
}

// listFlag collects a repeated flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func wsCreate(args []string) error {
	fs := flag.NewFlagSet("ws create", flag.ContinueOnError)
	image := fs.String("image", "", "image (default: the server's)")
	memory := fs.String("memory", "", `memory limit, e.g. "512MiB"`)
	cpus := fs.Float64("cpus", 0, "CPU share, e.g. 0.5")
	network := fs.String("network", "", "network mode: none, open or allowlist (default: the server's)")
	var allow, envs listFlag
	fs.Var(&allow, "allow", "a host an allowlist network may reach (repeatable)")
	fs.Var(&envs, "env", "an environment variable K=V (repeatable)")
	out := outputFlag(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return fmt.Errorf("ws create takes no arguments (got %q)", pos)
	}
	spec := types.WorkspaceSpec{Image: *image, Network: policy.Network{Mode: policy.Mode(*network), AllowedHosts: allow}}
	spec.Limits.CPUs = *cpus
	if *memory != "" {
		if spec.Limits.Memory, err = policy.ParseBytes(*memory); err != nil {
			return fmt.Errorf("--memory: %w", err)
		}
	}
	for _, kv := range envs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("--env %q: want K=V", kv)
		}
		if spec.Env == nil {
			spec.Env = map[string]string{}
		}
		spec.Env[k] = v
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	var bars *pullBars
	var progress func(types.PullProgress)
	if isTerminal(os.Stderr) {
		bars = newPullBars()
		progress = bars.update
	}
	ws, err := c.CreateWorkspace(ctx, spec, progress)
	if bars != nil {
		bars.done()
	}
	if err != nil {
		return err
	}
	if *out == "json" {
		return printJSON(os.Stdout, ws)
	}
	fmt.Println(ws.ID)
	return nil
}

// pullBars shows an image pull as one bar per layer on stderr.
type pullBars struct {
	p    *mpb.Progress
	mu   sync.Mutex
	bars map[string]*mpb.Bar
}

func newPullBars() *pullBars {
	return &pullBars{p: mpb.New(mpb.WithOutput(os.Stderr), mpb.WithRefreshRate(150*time.Millisecond)), bars: map[string]*mpb.Bar{}}
}

func (b *pullBars) update(p types.PullProgress) {
	if p.Layer == "" || p.Total <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	bar, ok := b.bars[p.Layer]
	if !ok {
		name := p.Layer
		if len(name) > 12 {
			name = name[:12]
		}
		bar = b.p.AddBar(p.Total,
			mpb.PrependDecorators(decor.Name(name+" "), decor.Name(p.Status, decor.WCSyncSpaceR)),
			mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f")))
		b.bars[p.Layer] = bar
	}
	bar.SetTotal(p.Total, false)
	bar.SetCurrent(min(p.Current, p.Total))
}

func (b *pullBars) done() {
	b.mu.Lock()
	for _, bar := range b.bars {
		bar.SetTotal(-1, true)
	}
	b.mu.Unlock()
	b.p.Wait()
}

func wsList(args []string) error {
	fs := flag.NewFlagSet("ws ls", flag.ContinueOnError)
	out := outputFlag(fs)
	if _, err := parseInterspersed(fs, args); err != nil {
		return err
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	list, err := collect(c.Workspaces(ctx))
	if err != nil {
		return err
	}
	if *out == "json" {
		return printJSON(os.Stdout, list)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tIMAGE\tNETWORK\tCREATED")
	for _, ws := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", ws.ID, ws.State, orDash(ws.Image), orDash(string(ws.Network.Mode)), ws.CreatedAt.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

func wsGet(args []string) error {
	fs := flag.NewFlagSet("ws get", flag.ContinueOnError)
	out := outputFlag(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintln(os.Stderr, "usage: corral ws get ID [-o json]")
		return errUsage
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	ws, err := c.Workspace(ctx, pos[0])
	if err != nil {
		return err
	}
	if *out == "json" {
		return printJSON(os.Stdout, ws)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "ID\t%s\nSTATE\t%s\nRUNTIME\t%s\nIMAGE\t%s\nNETWORK\t%s %s\n", ws.ID, ws.State, ws.Runtime, orDash(ws.Image),
		orDash(string(ws.Network.Mode)), strings.Join(ws.Network.AllowedHosts, ","))
	if ws.Limits.Memory > 0 {
		fmt.Fprintf(tw, "MEMORY\t%s\n", ws.Limits.Memory)
	}
	if ws.Error != "" {
		fmt.Fprintf(tw, "ERROR\t%s\n", ws.Error)
	}
	fmt.Fprintf(tw, "CREATED\t%s\nLAST USED\t%s\n", ws.CreatedAt.Local().Format(time.DateTime), ws.LastUsedAt.Local().Format(time.DateTime))
	return tw.Flush()
}

func wsRemove(args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: corral ws rm ID...")
		return errUsage
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	var failed int
	for _, id := range args {
		if err := c.DeleteWorkspace(ctx, id); err != nil {
			fmt.Fprintf(os.Stderr, "corral: %s: %s\n", id, describeError(err))
			failed++
			continue
		}
		fmt.Println(id)
	}
	if failed > 0 {
		return exitCode(1)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
