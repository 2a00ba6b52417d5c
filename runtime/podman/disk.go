package podman

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/containers/podman/v5/pkg/bindings/volumes"

	"github.com/corralhq/corral/runtime"
)

// Disk limits. This host has no quotas, and Podman's --storage-opt size
// needs XFS project quotas, so a workspace with a disk limit gets its files
// on an ext4 filesystem image of that size, loop-mounted on its volume's
// directory: the container sees a plain volume that cannot grow past the
// limit, the files persist across stop/start, and the mount is restored
// when the driver opens after a reboot. It needs root next to a rootful
// service on the same host, which New checks by doing it once.

// labelDisk marks a volume that lives on a disk image; its value is the
// size in bytes.
const labelDisk = "dev.corral.disk"

// diskDir is where the images are kept, under runtime.Config.DataDir.
func (d *Driver) diskImage(id string) string {
	return filepath.Join(d.dataDir, "podman-disks", id+".img")
}

// probeDisk reports whether disk limits work here, and if not, why.
func (d *Driver) probeDisk(ctx context.Context) (bool, string) {
	switch {
	case d.rootless:
		return false, "rootless podman cannot mount the size-capped filesystem a disk limit needs, and has no quotas here"
	case os.Geteuid() != 0:
		return false, "a disk limit needs a loop-mounted filesystem, which only root can mount"
	case d.dataDir == "":
		return false, "the runtime has no data directory to keep disk images in"
	}
	for _, tool := range []string{"mkfs.ext4", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return false, tool + " is missing on this host"
		}
	}
	dir, err := os.MkdirTemp(d.dataDir, "podman-disk-probe-")
	if err != nil {
		return false, "cannot make a probe directory: " + err.Error()
	}
	defer os.RemoveAll(dir)
	mnt := filepath.Join(dir, "mnt")
	img := filepath.Join(dir, "probe.img")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return false, err.Error()
	}
	if err := makeDisk(ctx, img, 4<<20); err != nil {
		return false, err.Error()
	}
	if err := mountDisk(ctx, img, mnt); err != nil {
		return false, err.Error()
	}
	if err := unmountDisk(ctx, mnt); err != nil {
		return false, err.Error()
	}
	return true, ""
}

// makeDisk creates an ext4 image of size bytes at img.
func makeDisk(ctx context.Context, img string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(img), 0o700); err != nil {
		return fmt.Errorf("disk image: %w", err)
	}
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("disk image: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(img)
		return fmt.Errorf("disk image: %w", err)
	}
	// -m 0: no blocks reserved for root, who is the workspace's user.
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-m", "0", img).CombinedOutput(); err != nil {
		os.Remove(img)
		return fmt.Errorf("mkfs.ext4: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// mountDisk loop-mounts img on dir and removes mkfs's lost+found, so the
// workspace starts empty.
func mountDisk(ctx context.Context, img, dir string) error {
	if out, err := exec.CommandContext(ctx, "mount", "-t", "ext4", "-o", "loop,nodev,nosuid", img, dir).CombinedOutput(); err != nil {
		return fmt.Errorf("mount %s: %v: %s", img, err, strings.TrimSpace(string(out)))
	}
	// A lost+found with files in it (recovered by fsck) stays.
	_ = os.Remove(filepath.Join(dir, "lost+found"))
	return nil
}

// unmountDisk unmounts dir, detaching it lazily if it is busy (a container
// being removed may still hold it for a moment).
func unmountDisk(ctx context.Context, dir string) error {
	if !isMountPoint(dir) {
		return nil
	}
	if out, err := exec.CommandContext(ctx, "umount", dir).CombinedOutput(); err != nil {
		if out2, err2 := exec.CommandContext(ctx, "umount", "-l", dir).CombinedOutput(); err2 != nil {
			return fmt.Errorf("umount %s: %v: %s; %s", dir, err, strings.TrimSpace(string(out)), strings.TrimSpace(string(out2)))
		}
	}
	return nil
}

// isMountPoint reports whether dir is on another device than its parent.
func isMountPoint(dir string) bool {
	var a, b syscall.Stat_t
	if syscall.Stat(dir, &a) != nil || syscall.Stat(filepath.Dir(dir), &b) != nil {
		return false
	}
	return a.Dev != b.Dev
}

// attachDisk gives the workspace's volume (at dir) a new disk of size
// bytes. On failure nothing is left.
func (d *Driver) attachDisk(ctx context.Context, id, dir string, size int64) error {
	img := d.diskImage(id)
	if err := makeDisk(ctx, img, size); err != nil {
		return err
	}
	if err := mountDisk(ctx, img, dir); err != nil {
		os.Remove(img)
		return err
	}
	return nil
}

// detachDisk unmounts the workspace's disk and deletes its image.
// Idempotent.
func (d *Driver) detachDisk(ctx context.Context, id, dir string) error {
	if dir != "" {
		if err := unmountDisk(ctx, dir); err != nil {
			return err
		}
	}
	if err := os.Remove(d.diskImage(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove disk image: %w", err)
	}
	return nil
}

// remountDisks mounts again the disks of this server's volumes that are not
// mounted (after a reboot), so that no workspace comes back without its
// files or its limit.
func (d *Driver) remountDisks(ctx context.Context) error {
	list, err := volumes.List(d.ctx(ctx), &volumes.ListOptions{Filters: map[string][]string{
		"label": {runtime.LabelServer + "=" + d.serverID, labelDisk},
	}})
	if err != nil {
		return fmt.Errorf("list disk volumes: %w", mapErr(err))
	}
	for _, v := range list {
		id := v.Labels[runtime.LabelWorkspace]
		if id == "" || v.Mountpoint == "" || isMountPoint(v.Mountpoint) {
			continue
		}
		if _, err := os.Stat(d.diskImage(id)); err != nil {
			d.log.Warn("disk image of a workspace is missing", "workspace_id", id, "error", err)
			continue
		}
		if err := mountDisk(ctx, d.diskImage(id), v.Mountpoint); err != nil {
			return fmt.Errorf("remount disk of workspace %s: %w", id, err)
		}
		d.log.Info("disk remounted", "workspace_id", id)
	}
	return nil
}

func formatSize(n int64) string { return strconv.FormatInt(n, 10) }
