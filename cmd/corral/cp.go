package main

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/corralhq/corral/api/types"
	"github.com/corralhq/corral/client"
)

const cpUsage = `usage:
  corral cp LOCAL ID:PATH    copy a local file or directory into a workspace
  corral cp ID:PATH LOCAL    copy a workspace's file or directory out

Like cp -r: a directory copied to an existing directory lands inside it
(LOCAL/NAME or PATH/NAME); a file copied to an existing directory keeps its
name. Progress is shown on a terminal.`

// remoteArg splits "ID:PATH"; ok is false for a local path.
func remoteArg(s string) (id, p string, ok bool) {
	id, p, ok = strings.Cut(s, ":")
	if !ok || !strings.HasPrefix(id, "ws_") || strings.ContainsAny(id, `/\`) {
		return "", "", false
	}
	return id, p, true
}

func cpCommand(args []string) error {
	if len(args) != 2 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(os.Stderr, cpUsage)
		return errUsage
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	srcID, srcPath, srcRemote := remoteArg(args[0])
	dstID, dstPath, dstRemote := remoteArg(args[1])
	switch {
	case srcRemote && !dstRemote:
		return copyOut(ctx, c, srcID, srcPath, args[1])
	case !srcRemote && dstRemote:
		return copyIn(ctx, c, args[0], dstID, dstPath)
	default:
		fmt.Fprintln(os.Stderr, cpUsage)
		return errUsage
	}
}

func copyIn(ctx context.Context, c *client.Client, local, id, remote string) error {
	fi, err := os.Stat(local)
	if err != nil {
		return err
	}
	remote = strings.Trim(path.Clean("/"+remote), "/")
	// Into an existing directory: as a child named like the source.
	if st, err := c.Stat(ctx, id, remote); err == nil && st.Type == types.TypeDir {
		remote = path.Join(remote, filepath.Base(filepath.Clean(local)))
	} else if err != nil && !errors.Is(err, client.ErrNotFound) {
		return err
	}
	prog := newTransfer(filepath.Base(local), fi.Size())
	defer prog.done()
	if !fi.IsDir() {
		f, err := os.Open(local)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = c.WriteFile(ctx, id, remote, prog.reader(f), fi.Size(), fi.Mode().Perm())
		return err
	}
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.AddFS(os.DirFS(local))
		if cerr := tw.Close(); err == nil {
			err = cerr
		}
		pw.CloseWithError(err)
	}()
	err = c.ArchiveIn(ctx, id, remote, prog.reader(pr))
	pr.CloseWithError(errors.New("upload ended"))
	return err
}

func copyOut(ctx context.Context, c *client.Client, id, remote, local string) error {
	st, err := c.Stat(ctx, id, remote)
	if err != nil {
		return err
	}
	lst, lerr := os.Stat(local)
	localIsDir := lerr == nil && lst.IsDir()
	if st.Type != types.TypeDir {
		target := local
		if localIsDir {
			target = filepath.Join(local, path.Base(st.Path))
		}
		rc, err := c.OpenFile(ctx, id, remote)
		if err != nil {
			return err
		}
		defer rc.Close()
		prog := newTransfer(path.Base(st.Path), st.Size)
		defer prog.done()
		mode := os.FileMode(0o644)
		if _, err := fmt.Sscanf(st.Mode, "%o", &mode); err != nil {
			mode = 0o644
		}
		f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode.Perm())
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, prog.reader(rc)); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	// A directory: the archive's entries are named NAME/..., so it lands
	// as LOCAL/NAME when LOCAL exists, else it becomes LOCAL.
	dir := local
	if !localIsDir {
		tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(local)), ".corral-cp-*")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	rc, err := c.ArchiveOut(ctx, id, remote)
	if err != nil {
		return err
	}
	defer rc.Close()
	prog := newTransfer(path.Base(st.Path), -1)
	err = client.Extract(prog.reader(rc), dir)
	prog.done()
	if err != nil {
		return err
	}
	if !localIsDir {
		name := path.Base(st.Path)
		if st.Path == "" || name == "." || name == "/" {
			// The whole workspace: entries are not under one name.
			return os.Rename(dir, local)
		}
		return os.Rename(filepath.Join(dir, name), local)
	}
	return nil
}

// transfer shows a transfer's progress on a terminal's stderr.
type transfer struct {
	p   *mpb.Progress
	bar *mpb.Bar
}

func newTransfer(name string, size int64) *transfer {
	if !isTerminal(os.Stderr) {
		return &transfer{}
	}
	p := mpb.New(mpb.WithOutput(os.Stderr), mpb.WithRefreshRate(150*time.Millisecond))
	total := size
	if total < 0 {
		total = 0
	}
	bar := p.AddBar(total, mpb.PrependDecorators(decor.Name(name+" ")),
		mpb.AppendDecorators(decor.Current(decor.SizeB1024(0), "% .1f"), decor.Name(" "), decor.AverageSpeed(decor.SizeB1024(0), "% .1f")))
	return &transfer{p: p, bar: bar}
}

func (t *transfer) reader(r io.Reader) io.Reader {
	if t.bar == nil {
		return r
	}
	return t.bar.ProxyReader(r)
}

func (t *transfer) done() {
	if t.p == nil {
		return
	}
	t.bar.SetTotal(-1, true)
	t.p.Wait()
	t.p = nil
}
