package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"golang.org/x/term"

	"github.com/corralhq/corral/client"
)

const execUsage = `usage: corral exec [-i] [-t] [--cwd DIR] [--env K=V]... ID -- CMD [ARGS...]

Runs CMD in workspace ID; its exit status becomes corral's.
  -i  pass stdin to the command (without it, the command's stdin is empty)
  -t  run it on a terminal: the local terminal goes raw, follows window
      resizes, and keys such as Ctrl-C go to the command
Without -t, stdout and stderr stay separate and binary-safe:
  corral exec ID -- tar c . > out.tar
  corral exec -i ID -- tar x < in.tar`

func execCommand(args []string) error {
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprintln(os.Stderr, execUsage) }
	interactive := fs.Bool("i", false, "pass stdin")
	tty := fs.Bool("t", false, "allocate a terminal")
	cwd := fs.String("cwd", "", "working directory, relative to the workspace root")
	var envs listFlag
	fs.Var(&envs, "env", "environment variable K=V (repeatable)")
	before, argv, found := splitDashDash(args)
	// -it is -i -t.
	for i, a := range before {
		if a == "-it" || a == "-ti" {
			before = append(append(append([]string{}, before[:i]...), "-i", "-t"), before[i+1:]...)
			break
		}
	}
	pos, err := parseInterspersed(fs, before)
	if err != nil {
		return err
	}
	if !found || len(pos) != 1 || len(argv) == 0 {
		fs.Usage()
		return errUsage
	}
	cmd := client.Cmd{Argv: argv, Cwd: *cwd, Stdout: os.Stdout, Stderr: os.Stderr}
	for _, kv := range envs {
		k, v, ok := splitKV(kv)
		if !ok {
			return fmt.Errorf("--env %q: want K=V", kv)
		}
		if cmd.Env == nil {
			cmd.Env = map[string]string{}
		}
		cmd.Env[k] = v
	}
	if *interactive {
		cmd.Stdin = os.Stdin
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var restore func()
	if *tty {
		fd := int(os.Stdin.Fd())
		if !term.IsTerminal(fd) {
			return fmt.Errorf("-t needs a terminal on stdin")
		}
		cmd.TTY = true
		if w, h, err := term.GetSize(fd); err == nil {
			cmd.Cols, cmd.Rows = uint16(w), uint16(h)
		}
		if cmd.Env == nil {
			cmd.Env = map[string]string{}
		}
		if t := os.Getenv("TERM"); t != "" {
			if _, set := cmd.Env["TERM"]; !set {
				cmd.Env["TERM"] = t
			}
		}
		state, err := term.MakeRaw(fd)
		if err != nil {
			return fmt.Errorf("raw terminal: %w", err)
		}
		restore = func() { _ = term.Restore(fd, state) }
		defer restore()
		// In raw mode Ctrl-C is a byte for the command, not SIGINT for us.
	}
	p, err := c.Start(ctx, pos[0], cmd)
	if err != nil {
		return err
	}
	// SIGINT, SIGTERM and SIGHUP go to the remote command (with -t, Ctrl-C
	// is a byte on stdin instead); it decides whether to end.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		for sig := range sigs {
			_ = p.Signal(strconv.Itoa(int(sig.(syscall.Signal))))
		}
	}()
	if *tty {
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if w, h, err := term.GetSize(int(os.Stdin.Fd())); err == nil {
					_ = p.Resize(uint16(w), uint16(h))
				}
			}
		}()
	}
	res, err := p.Wait()
	if restore != nil {
		restore()
	}
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return exitCode(res.ExitCode)
	}
	return nil
}

func splitKV(kv string) (string, string, bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], i > 0
		}
	}
	return "", "", false
}
