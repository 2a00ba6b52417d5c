package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"iter"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/term"

	"github.com/corralhq/corral/client"
)

// cliConfig is what `corral login` stores in the user's config directory.
type cliConfig struct {
	URL string `json:"url"`
	Key string `json:"key"`
}

// configPath is $XDG_CONFIG_HOME/corral/config.json (or the platform's
// equivalent).
func configPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find the config directory: %w", err)
	}
	return filepath.Join(dir, "corral", "config.json"), nil
}

// loadConfig reads the stored login, then applies CORRAL_URL and
// CORRAL_API_KEY over it.
func loadConfig() (cliConfig, error) {
	var cfg cliConfig
	if p, err := configPath(); err == nil {
		b, err := os.ReadFile(p)
		switch {
		case err == nil:
			if err := json.Unmarshal(b, &cfg); err != nil {
				return cfg, fmt.Errorf("read %s: %w", p, err)
			}
		case !errors.Is(err, os.ErrNotExist):
			return cfg, err
		}
	}
	cfg.URL = env("CORRAL_URL", cfg.URL)
	cfg.Key = env("CORRAL_API_KEY", cfg.Key)
	return cfg, nil
}

// newClient returns a client for the configured server.
func newClient() (*client.Client, error) {
	cfg, err := loadConfig()
	if err != nil {
		return nil, err
	}
	if cfg.URL == "" || cfg.Key == "" {
		return nil, errors.New("not logged in: run `corral login URL`, or set CORRAL_URL and CORRAL_API_KEY")
	}
	return client.New(cfg.URL, cfg.Key, client.WithUserAgent("corral-cli/"+version))
}

// login stores the server's URL and a key, after checking them.
func login(args []string) error {
	fs := flag.NewFlagSet("login", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: corral login URL [--key KEY]\n\nStores URL and an API key (asked for if not given; CORRAL_API_KEY is used if set)\nin the user's config directory, readable by the user only.")
	}
	key := fs.String("key", "", "the API key (default: CORRAL_API_KEY, else asked for)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errUsage
	}
	k := *key
	if k == "" {
		k = os.Getenv("CORRAL_API_KEY")
	}
	if k == "" {
		fmt.Fprint(os.Stderr, "API key: ")
		if term.IsTerminal(int(os.Stdin.Fd())) {
			b, err := term.ReadPassword(int(os.Stdin.Fd()))
			fmt.Fprintln(os.Stderr)
			if err != nil {
				return err
			}
			k = string(b)
		} else {
			line, err := bufio.NewReader(os.Stdin).ReadString('\n')
			if err != nil && line == "" {
				return fmt.Errorf("read the key: %w", err)
			}
			k = line
		}
	}
	k = strings.TrimSpace(k)
	c, err := client.New(pos[0], k)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	for _, err := range c.Workspaces(ctx) {
		if err != nil {
			return fmt.Errorf("check the key: %w", err)
		}
		break
	}
	p, err := configPath()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(cliConfig{URL: c.URL(), Key: k}, "", "  ")
	// Written to a new file then renamed, so the key is never readable by
	// others, even for a moment, and a crash leaves the old login.
	tmp, err := os.CreateTemp(filepath.Dir(p), ".config-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "logged in to %s (saved in %s)\n", c.URL(), p)
	return nil
}

// errUsage is a usage error whose usage has been printed.
var errUsage = errors.New("usage")

// exitCode makes main exit with a given status, silently.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// parseInterspersed parses flags anywhere among the arguments (until
// "--"), and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, errUsage
			}
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		// fs.Parse stops at the first non-flag, or after "--".
		if n := len(args); n > 0 && args[0] != "--" {
			pos = append(pos, args[0])
			args = args[1:]
			continue
		}
		return append(pos, args...), nil
	}
}

// splitDashDash splits args at the first "--".
func splitDashDash(args []string) (before, after []string, found bool) {
	for i, a := range args {
		if a == "--" {
			return args[:i], args[i+1:], true
		}
	}
	return args, nil, false
}

// signalContext is cancelled by SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// collect reads every item of a paged listing, stopping at the first
// error. An empty listing is an empty slice (JSON [], not null).
func collect[T any](seq iter.Seq2[T, error]) ([]T, error) {
	list := []T{}
	for v, err := range seq {
		if err != nil {
			return nil, err
		}
		list = append(list, v)
	}
	return list, nil
}

// outputFlag adds -o to fs: "json" for scripts, or unset for people. Any
// other value fails fs.Parse.
func outputFlag(fs *flag.FlagSet) *string {
	out := new(string)
	fs.Func("o", `output format: "json" for scripts`, func(v string) error {
		if v != "json" {
			return fmt.Errorf(`only "json" is supported`)
		}
		*out = v
		return nil
	})
	return out
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// describeError renders an error for stderr: the server's code first.
func describeError(err error) string {
	var apiErr *client.Error
	if errors.As(err, &apiErr) {
		return fmt.Sprintf("%s: %s", apiErr.Code, apiErr.Message)
	}
	return err.Error()
}

func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }
