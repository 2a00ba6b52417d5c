package sandboxinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// confine limits what commands can touch of the host's file system, in the
// supervisor's own (private) mount namespace:
//
//   - home is bound onto itself, so it is a mount of its own that stays
//     writable;
//   - every other mount is remounted read-only (keeping the flags that a
//     user namespace locks: nosuid, nodev, noexec, atime);
//   - each of hide (the runtime's data directory, holding other workspaces
//     and the supervisors' sockets; the directory of every workspace's
//     egress proxy socket) loses the mounts below it and is covered by an
//     empty tmpfs;
//   - /tmp and /dev/shm are fresh, private tmpfs (of tmpSize bytes each if
//     set; their pages are charged to the writer's memory cgroup anyway);
//   - /run (and so /var/run), where the host's daemons keep their sockets,
//     is covered by an empty tmpfs but for /run/systemd/resolve;
//   - home, and the proxy socket's directory if it was covered (the
//     directory, so that a socket the proxy re-creates stays reachable), are
//     bound back at their
//     paths.
//
// Commands still read the host's files outside hide (they run the host's
// programs); they can write only to home, /tmp and /dev/shm.
func confine(home string, hide []string, proxy string, tmpSize int64, resolvConf string) error {
	if home == "" {
		return errors.New("confine: no home directory given")
	}
	if err := unix.Mount(home, home, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("confine: bind %s: %w", home, err)
	}
	// No device nodes or setuid programs from the workspace's files.
	if err := remount(home, unix.MS_NOSUID|unix.MS_NODEV); err != nil {
		return err
	}
	if err := protectProc(); err != nil {
		return err
	}
	homeFD, err := unix.Open(home, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("confine: open %s: %w", home, err)
	}
	defer unix.Close(homeFD)
	proxyFD, proxyDir := -1, filepath.Dir(proxy)
	if proxy != "" {
		if proxyFD, err = unix.Open(proxyDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
			return fmt.Errorf("confine: open proxy socket directory %s: %w", proxyDir, err)
		}
		defer unix.Close(proxyFD)
	}
	resolvFD := -1
	if resolvConf != "" {
		// Opened now: it lives in the runtime's data directory, hidden below.
		if resolvFD, err = unix.Open(resolvConf, unix.O_PATH|unix.O_CLOEXEC, 0); err != nil {
			return fmt.Errorf("confine: open %s: %w", resolvConf, err)
		}
		defer unix.Close(resolvFD)
	}
	hide = outermost(hide)
	for _, h := range hide {
		if err := detachUnder(h, home); err != nil {
			return err
		}
	}
	mounts, err := mountPoints()
	if err != nil {
		return err
	}
	for _, mp := range mounts {
		if mp == "/proc" || strings.HasPrefix(mp, "/proc/") || mp == home || strings.HasPrefix(mp, home+"/") {
			continue
		}
		if err := remount(mp, unix.MS_RDONLY); err != nil {
			return err
		}
	}
	for _, h := range hide {
		if err := unix.Mount("tmpfs", h, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=1m"); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // nothing there to hide
			}
			return fmt.Errorf("confine: cover %s: %w", h, err)
		}
	}
	// /dev: the host's device nodes (disks, loop devices of other
	// workspaces' file systems...) are writable on a read-only mount, so
	// commands get a fresh /dev with the harmless ones only.
	if err := minimalDev(); err != nil {
		return err
	}
	opts := "mode=1777"
	if tmpSize > 0 {
		opts += ",size=" + strconv.FormatInt(tmpSize, 10)
	}
	for _, dir := range []string{"/tmp", "/dev/shm"} {
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
			return fmt.Errorf("confine: tmpfs on %s: %w", dir, err)
		}
	}
	// /run holds the host's daemon sockets (docker, podman, containerd,
	// dbus...): a read-only mount does not stop connect(), so cover it,
	// keeping only the resolver's files for DNS in network mode open.
	if err := coverRun(); err != nil {
		return err
	}
	if resolvFD >= 0 {
		// Onto /etc/resolv.conf or, if it is a symlink, the file it names.
		if err := unix.Mount(fdPath(resolvFD), "/etc/resolv.conf", "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("confine: bind %s on /etc/resolv.conf: %w", resolvConf, err)
		}
		if err := unix.Mount("", "/etc/resolv.conf", "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("confine: make /etc/resolv.conf read-only: %w", err)
		}
	}
	// Home (and the proxy socket) may now be covered: bind them back.
	if err := os.MkdirAll(home, 0o755); err != nil {
		return fmt.Errorf("confine: recreate %s: %w", home, err)
	}
	if err := unix.Mount(fdPath(homeFD), home, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("confine: bind %s back: %w", home, err)
	}
	if proxyFD >= 0 {
		if _, err := os.Stat(proxyDir); err != nil {
			if err := os.MkdirAll(proxyDir, 0o755); err != nil {
				return fmt.Errorf("confine: proxy socket directory: %w", err)
			}
			if err := unix.Mount(fdPath(proxyFD), proxyDir, "", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("confine: bind proxy socket directory back: %w", err)
			}
		}
	}
	return nil
}

// procReadOnly are the parts of the fresh /proc that reach the host's
// kernel rather than the sandbox's namespaces (Docker's read-only paths):
// writable, they let root set kernel.core_pattern or kernel.modprobe to a
// program the kernel then runs as the host's root, or reboot the host.
var procReadOnly = []string{"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"}

// protectProc binds each of procReadOnly onto itself, read-only.
func protectProc() error {
	for _, p := range procReadOnly {
		if _, err := os.Lstat(p); err != nil {
			continue
		}
		if err := unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("confine: bind %s: %w", p, err)
		}
		if err := remount(p, unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC); err != nil {
			return err
		}
	}
	return nil
}

// devNodes are the host's device nodes that a sandbox's /dev keeps, bound
// from the host; devLinks are the symlinks it gets.
var (
	devNodes = []string{"null", "zero", "full", "random", "urandom", "tty", "ptmx"}
	devLinks = map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
		"stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}
)

// minimalDev covers /dev with a tmpfs holding devNodes (bound from the
// host), devLinks, the host's /dev/pts (where the driver's terminals live)
// and an empty shm directory, and makes it read-only. A read-only mount does
// not stop writes to device nodes, so the host's /dev (its disks, the loop
// devices holding other workspaces' files) must not be reachable at all.
func minimalDev() error {
	if fi, err := os.Lstat("/dev"); err != nil || !fi.IsDir() {
		return nil
	}
	type kept struct {
		name string
		fd   int
		dir  bool
	}
	var keep []kept
	defer func() {
		for _, k := range keep {
			unix.Close(k.fd)
		}
	}()
	for _, n := range devNodes {
		if fd, err := unix.Open("/dev/"+n, unix.O_PATH|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0); err == nil {
			keep = append(keep, kept{n, fd, false})
		}
	}
	if fd, err := unix.Open("/dev/pts", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		keep = append(keep, kept{"pts", fd, true})
	}
	if err := unix.Mount("tmpfs", "/dev", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
		return fmt.Errorf("confine: cover /dev: %w", err)
	}
	for _, k := range keep {
		p := "/dev/" + k.name
		var err error
		if k.dir {
			err = os.Mkdir(p, 0o755)
		} else {
			var f *os.File
			if f, err = os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); err == nil {
				f.Close()
			}
		}
		if err != nil {
			return fmt.Errorf("confine: %w", err)
		}
		if err := unix.Mount(fdPath(k.fd), p, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("confine: bind %s back: %w", p, err)
		}
	}
	for name, target := range devLinks {
		if err := os.Symlink(target, "/dev/"+name); err != nil {
			return fmt.Errorf("confine: %w", err)
		}
	}
	if err := os.Mkdir("/dev/shm", 0o1777); err != nil {
		return fmt.Errorf("confine: %w", err)
	}
	return remount("/dev", unix.MS_RDONLY)
}

// outermost cleans dirs and drops the empty ones, "/" (never hidden),
// duplicates and those inside another: covering the outer one hides them already (and their
// paths no longer exist to mount on).
func outermost(dirs []string) []string {
	var out []string
	for _, d := range dirs {
		if d == "" || filepath.Clean(d) == "/" {
			continue
		}
		out = append(out, filepath.Clean(d))
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) < len(out[j]) })
	var keep []string
next:
	for _, d := range out {
		for _, k := range keep {
			if d == k || strings.HasPrefix(d, k+"/") {
				continue next
			}
		}
		keep = append(keep, d)
	}
	return keep
}

// keptRun are the directories under /run that stay visible: the stub
// resolver's configuration, which /etc/resolv.conf may link to.
var keptRun = []string{"/run/systemd/resolve", "/run/resolvconf"}

// coverRun covers /run with an empty read-only tmpfs, binding back
// keptRun.
func coverRun() error {
	if fi, err := os.Lstat("/run"); err != nil || !fi.IsDir() {
		return nil
	}
	type kept struct {
		path string
		fd   int
	}
	var keep []kept
	defer func() {
		for _, k := range keep {
			unix.Close(k.fd)
		}
	}()
	for _, p := range keptRun {
		fd, err := unix.Open(p, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err == nil {
			keep = append(keep, kept{p, fd})
		}
	}
	if err := unix.Mount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755,size=1m"); err != nil {
		return fmt.Errorf("confine: cover /run: %w", err)
	}
	for _, k := range keep {
		if err := os.MkdirAll(k.path, 0o755); err != nil {
			return fmt.Errorf("confine: %w", err)
		}
		if err := unix.Mount(fdPath(k.fd), k.path, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("confine: bind %s back: %w", k.path, err)
		}
	}
	return remount("/run", unix.MS_RDONLY)
}

func fdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// remount adds flags (MS_RDONLY, MS_NOSUID...) to the mount at mp,
// keeping its other flags (which a user namespace may have locked).
func remount(mp string, add uintptr) error {
	var st unix.Statfs_t
	if err := unix.Statfs(mp, &st); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EACCES) {
			return nil // covered by a later mount: not reachable anyway
		}
		return fmt.Errorf("confine: statfs %s: %w", mp, err)
	}
	flags := unix.MS_BIND | unix.MS_REMOUNT | add
	for _, f := range []struct{ st, ms uintptr }{
		{unix.ST_RDONLY, unix.MS_RDONLY},
		{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV}, {unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if uintptr(st.Flags)&f.st != 0 {
			flags |= f.ms
		}
	}
	if err := unix.Mount("", mp, "", flags, ""); err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // mp is over-mounted: its path leads to another mount
		}
		return fmt.Errorf("confine: remount %s: %w", mp, err)
	}
	return nil
}

// mountPoints lists our mount points, outermost first.
func mountPoints() ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 {
			out = append(out, unescapeMount(f[4]))
		}
	}
	return out, nil
}

// detachUnder detaches, in our mount namespace, every mount below dir but
// keep and those below it, so that other workspaces' file systems are
// neither reachable nor kept busy by this namespace.
func detachUnder(dir, keep string) error {
	mounts, err := mountPoints()
	if err != nil {
		return err
	}
	dir = filepath.Clean(dir) + "/"
	var targets []string
	for _, mp := range mounts {
		if strings.HasPrefix(mp, dir) && mp != keep && !strings.HasPrefix(mp, keep+"/") {
			targets = append(targets, mp)
		}
	}
	// Deepest first.
	sort.Slice(targets, func(i, j int) bool { return len(targets[i]) > len(targets[j]) })
	for _, t := range targets {
		if err := unix.Unmount(t, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("detach %s: %w", t, err)
		}
	}
	return nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space...).
func unescapeMount(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
