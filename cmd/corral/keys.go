package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/corralhq/corral/store"
)

func keys(args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(os.Stderr, `usage:
  corral keys create --user NAME [--data-dir DIR]   create a key (and the user); prints it once
  corral keys list [--user NAME] [--data-dir DIR]   list keys (never their secrets)
  corral keys revoke KEY_ID [--data-dir DIR]        revoke a key`)
		return nil
	}
	fs := flag.NewFlagSet("keys "+args[0], flag.ContinueOnError)
	dataDir := fs.String("data-dir", env("CORRAL_DATA_DIR", "data"), "data directory (env CORRAL_DATA_DIR)")
	user := fs.String("user", "", "user name")
	if err := fs.Parse(reorder(args[1:])); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := store.Open(ctx, filepath.Join(*dataDir, "corral.db"))
	if err != nil {
		return err
	}
	defer db.Close()
	switch args[0] {
	case "create":
		if *user == "" {
			return fmt.Errorf("keys create: --user is required")
		}
		u, err := db.EnsureUser(ctx, *user)
		if err != nil {
			return err
		}
		secret, k, err := db.CreateKey(ctx, u.ID)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "created key %s for user %s; it is shown only now:\n", k.ID, u.Name)
		fmt.Println(secret)
		return nil
	case "list":
		userID := ""
		if *user != "" {
			u, err := db.UserByName(ctx, *user)
			if err != nil {
				return err
			}
			userID = u.ID
		}
		list, err := db.ListKeys(ctx, userID)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tUSER\tPREFIX\tCREATED\tLAST USED\tREVOKED")
		for _, k := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s…\t%s\t%s\t%s\n", k.ID, k.UserName, k.Prefix, k.CreatedAt.Format(time.RFC3339), when(k.LastUsedAt), when(k.RevokedAt))
		}
		return tw.Flush()
	case "revoke":
		if fs.NArg() != 1 {
			return fmt.Errorf("keys revoke: give exactly one key ID")
		}
		if err := db.RevokeKey(ctx, fs.Arg(0)); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "revoked key %s\n", fs.Arg(0))
		return nil
	default:
		return fmt.Errorf("keys: unknown subcommand %q (create, list, revoke)", args[0])
	}
}

func when(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Format(time.RFC3339)
}

// reorder moves flags before positional arguments, so that
// "revoke KEY --data-dir d" parses like "revoke --data-dir d KEY".
func reorder(args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if len(a) > 1 && a[0] == '-' {
			flags = append(flags, a)
			if !strings.Contains(a, "=") && i+1 < len(args) {
				flags = append(flags, args[i+1])
				i++
			}
			continue
		}
		pos = append(pos, a)
	}
	return append(flags, pos...)
}
