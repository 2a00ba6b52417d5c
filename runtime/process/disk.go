package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The disk limit is a size-capped ext4 file system in a sparse image file
// (DataDir/workspaces/ID/disk.img), loop-mounted on the workspace's home.
// Chosen over tmpfs because files must persist across Stop/Start and a
// server or host restart, and tmpfs would also count against the memory
// limit; this kernel has no quotas. The image is mounted at Create (so
// files can be copied in while stopped), again at Start if the host
// rebooted, and unmounted at Remove.

const diskImage = "disk.img"

// probeDisk reports whether loop-mounted images can work here, or why not.
func probeDisk(root bool) (bool, string) {
	if !root {
		return false, "not root: cannot mount a size-capped file system"
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		return false, "mkfs.ext4 not found (install e2fsprogs)"
	}
	if _, err := exec.LookPath("mount"); err != nil {
		return false, "mount not found"
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return false, "no loop devices (/dev/loop-control)"
	}
	return true, ""
}

// createDisk makes a size-byte ext4 image in wsDir and mounts it on home.
func createDisk(ctx context.Context, wsDir, home string, size int64) error {
	img := filepath.Join(wsDir, diskImage)
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create disk image: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("size disk image: %w", err)
	}
	// -m 0: no blocks reserved for root, the workspace gets all of it.
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-m", "0", "-E", "root_owner=0:0", img).CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if err := mountDisk(ctx, wsDir, home); err != nil {
		return err
	}
	// The workspace's root starts empty, as without a disk limit.
	_ = os.Remove(filepath.Join(home, "lost+found"))
	return os.Chmod(home, 0o755)
}

// mountDisk mounts wsDir's image on home unless it already is. Idempotent.
func mountDisk(ctx context.Context, wsDir, home string) error {
	if isMountPoint(home) {
		return nil
	}
	img := filepath.Join(wsDir, diskImage)
	if out, err := exec.CommandContext(ctx, "mount", "-o", "loop,nosuid,nodev", img, home).CombinedOutput(); err != nil {
		return fmt.Errorf("mount disk image: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// unmountDisk unmounts home if it is a mount point. Idempotent. The loop
// device is freed by the kernel (mount sets autoclear).
func unmountDisk(home string) error {
	if !isMountPoint(home) {
		return nil
	}
	if err := unix.Unmount(home, 0); err != nil {
		if !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("unmount %s: %w", home, err)
		}
		if err := unix.Unmount(home, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s: %w", home, err)
		}
	}
	return nil
}

// isMountPoint reports whether p is a mount point in our mount namespace.
func isMountPoint(p string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.ReplaceAll(f[4], `\040`, " ") == p {
			return true
		}
	}
	return false
}
