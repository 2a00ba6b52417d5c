#!/usr/bin/env bash
# setup-podman.sh prepares a Debian 12 machine (run as root) for Corral's podman
# runtime and its tests, rootful and rootless:
#
#   - installs Debian's podman 4.3 and what it needs (crun, conmon, netavark,
#     slirp4netns, fuse-overlayfs, uidmap), busybox-static, docker-registry
#     (the pull test serves a registry on 127.0.0.1:5001) and catatonit;
#   - applies the host fixes of /work/shared/ENGINES.md: the v1 hugetlb
#     hierarchy, default_ulimits within root's hard limits, /dev/net/tun for
#     slirp4netns;
#   - creates the ordinary user corral-test with subordinate id ranges and the
#     overlay storage driver;
#   - starts `podman system service` by hand (no systemd here) for root and for
#     that user, and waits until both answer;
#   - imports the test image corral-test-busybox:latest (Debian's busybox-static
#     with its applet links) for both.
#
# Idempotent: it only does what is missing and says what it did. The sockets
# are at fixed paths, printed at the end:
#   rootful:  unix:///run/podman/podman.sock
#   rootless: unix:///run/user/<uid of corral-test>/podman/podman.sock
set -euo pipefail

IMAGE="${CORRAL_TEST_IMAGE:-corral-test-busybox:latest}"
USER_NAME="${CORRAL_PODMAN_USER:-corral-test}"
ROOT_SOCK=/run/podman/podman.sock
LOGDIR="${PODMAN_LOG_DIR:-/var/log}"
WAIT="${PODMAN_WAIT_SECONDS:-60}"

say() { printf 'setup-podman: %s\n' "$*"; }
die() {
	printf 'setup-podman: %s\n' "$*" >&2
	exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root"

# 1. Packages.
pkgs=(podman crun conmon netavark slirp4netns fuse-overlayfs uidmap busybox-static docker-registry curl)
missing=()
for pkg in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ! dpkg-query -W -f='${Status}' catatonit 2>/dev/null | grep -q 'install ok installed'; then
	# catatonit is optional (Corral runs its own init); install it when Debian has it.
	if apt-cache show catatonit >/dev/null 2>&1; then missing+=(catatonit); fi
fi
if [ ${#missing[@]} -gt 0 ]; then
	say "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
	say "packages already installed (${pkgs[*]})"
fi

# 2. Host fixes.
# crun refuses hybrid hosts whose hugetlb controller has no v1 hierarchy
# ("cgroups in hybrid mode not supported").
if [ -d /sys/fs/cgroup/memory ] && ! grep -qE '^cgroup [^ ]+ cgroup [^ ]*hugetlb' /proc/mounts; then
	mkdir -p /sys/fs/cgroup/hugetlb
	mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb
	say "mounted the v1 hugetlb hierarchy"
fi

# Root lacks CAP_SYS_RESOURCE here: podman's default ulimits (1048576) fail
# with "setrlimit RLIMIT_NOFILE: Operation not permitted". Cap them at what
# root may set.
hard_nofile="$(ulimit -Hn)"
[ "$hard_nofile" = unlimited ] && hard_nofile=1048576
nofile=$((hard_nofile < 20000 ? hard_nofile : 20000))
hard_nproc="$(ulimit -Hu)"
[ "$hard_nproc" = unlimited ] && hard_nproc=4194304
nproc=$((hard_nproc < 32768 ? hard_nproc : 32768))
conf=/etc/containers/containers.conf
line="default_ulimits = [\"nofile=${nofile}:${nofile}\", \"nproc=${nproc}:${nproc}\"]"
mkdir -p /etc/containers
if [ ! -e "$conf" ]; then
	printf '# Written by corral .ci/setup-podman.sh\n[containers]\n%s\n' "$line" >"$conf"
	say "wrote $conf ($line)"
elif ! grep -qE '^[[:space:]]*default_ulimits' "$conf"; then
	if grep -qE '^\[containers\]' "$conf"; then
		sed -i "/^\[containers\]/a $line" "$conf"
	else
		printf '\n[containers]\n%s\n' "$line" >>"$conf"
	fi
	say "added default_ulimits to $conf ($line)"
else
	say "$conf already sets default_ulimits: $(grep -E '^[[:space:]]*default_ulimits' "$conf")"
fi

# slirp4netns (rootless networking) opens /dev/net/tun as the user.
if [ -e /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
	chmod 666 /dev/net/tun
	say "chmod 666 /dev/net/tun"
fi

# Open-mode isolation: bridged traffic between containers must pass the
# host's nf_tables hooks (br_netfilter), and rootless workspaces' source
# address sits on a veth pair. The runtime loads br_netfilter itself when it
# can; loading it here makes a missing module fail loudly at setup.
if [ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
	if modprobe br_netfilter 2>/dev/null; then
		say "loaded br_netfilter"
	else
		say "note: br_netfilter could not be loaded: podman (rootful) will refuse network mode open"
	fi
fi
modprobe veth 2>/dev/null || true

# 3. The rootless user.
if ! id "$USER_NAME" >/dev/null 2>&1; then
	useradd --create-home --shell /bin/bash "$USER_NAME"
	say "created user $USER_NAME"
fi
uid="$(id -u "$USER_NAME")"
gid="$(id -g "$USER_NAME")"
home="$(getent passwd "$USER_NAME" | cut -d: -f6)"
for f in /etc/subuid /etc/subgid; do
	touch "$f"
	if ! grep -q "^${USER_NAME}:" "$f"; then
		# Pick a range above every existing one.
		start="$(awk -F: 'BEGIN{m=100000} {e=$2+$3; if (e>m) m=e} END{print m}' "$f")"
		echo "${USER_NAME}:${start}:65536" >>"$f"
		say "added ${USER_NAME}:${start}:65536 to $f"
	fi
done
install -d -o "$uid" -g "$gid" -m 0755 "$home/.config" "$home/.config/containers"
storage="$home/.config/containers/storage.conf"
if ! grep -qE '^[[:space:]]*driver[[:space:]]*=[[:space:]]*"overlay"' "$storage" 2>/dev/null; then
	# Debian's 4.3 would otherwise pick the slow vfs driver.
	printf '[storage]\ndriver = "overlay"\n' >"$storage"
	chown "$uid:$gid" "$storage"
	say "wrote $storage (overlay)"
fi
XDG="/run/user/$uid"
install -d -o "$uid" -g "$gid" -m 0700 "$XDG"
USER_SOCK="$XDG/podman/podman.sock"

# AS_USER runs a command as the user, with the environment a login would give.
AS_USER=(runuser -u "$USER_NAME" -- env -i HOME="$home" USER="$USER_NAME" LOGNAME="$USER_NAME"
	XDG_RUNTIME_DIR="$XDG" PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin)

# 4. The services.
pings() { curl -fsS --max-time 2 --unix-socket "$1" http://d/_ping >/dev/null 2>&1; }

# start_service NAME SOCKET LOG CMD... starts the service unless it answers,
# then waits at most $WAIT seconds for it.
start_service() {
	local name="$1" sock="$2" log="$3"
	shift 3
	if pings "$sock"; then
		say "$name service already answers on $sock"
		return
	fi
	say "starting $name service on $sock (log: $log)"
	rm -f "$sock"
	# From /: conmon writes files (an "oom" marker) relative to the
	# service's working directory, which must not be a checkout.
	env -C / setsid nohup "$@" >>"$log" 2>&1 </dev/null &
	local i
	for ((i = 0; i < WAIT * 10; i++)); do
		pings "$sock" && break
		sleep 0.1
	done
	if ! pings "$sock"; then
		tail -n 20 "$log" >&2 || true
		die "$name service did not answer on $sock within ${WAIT}s"
	fi
	say "$name service ready after ~$((i / 10)).$((i % 10))s"
}

mkdir -p /run/podman
start_service rootful "$ROOT_SOCK" "$LOGDIR/corral-podman-root.log" \
	podman system service --time=0 "unix://$ROOT_SOCK"
ulog="$LOGDIR/corral-podman-$USER_NAME.log"
touch "$ulog" && chown "$uid:$gid" "$ulog"
install -d -o "$uid" -g "$gid" -m 0700 "$XDG/podman"
start_service rootless "$USER_SOCK" "$ulog" \
	"${AS_USER[@]}" podman system service --time=0 "unix://$USER_SOCK"

# 5. The test image, for root and for the user: busybox-static with its
# applet links, imported locally (no registry is reachable from CI).
rootfs=""
make_rootfs() {
	[ -n "$rootfs" ] && return
	rootfs="$(mktemp -d)"
	chmod 755 "$rootfs"
	trap 'rm -rf "$rootfs"' EXIT
	local r="$rootfs/root"
	mkdir -p "$r/bin" "$r/tmp" "$r/etc" "$r/workspace" "$r/root" "$r/proc" "$r/sys" "$r/dev" \
		"$r/run" "$r/usr/bin" "$r/usr/sbin" "$r/sbin"
	chmod 1777 "$r/tmp"
	cp /bin/busybox "$r/bin/busybox"
	chroot "$r" /bin/busybox --install -s
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$r/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
	tar -C "$r" -cf "$rootfs/rootfs.tar" .
	chmod 644 "$rootfs/rootfs.tar"
}
import_image() { # import_image NAME podman-command...
	local name="$1"
	shift
	if "$@" image exists "$IMAGE"; then
		say "$name: image $IMAGE already present"
		return
	fi
	make_rootfs
	"$@" import \
		--change 'CMD ["/bin/sh"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--message "corral test image: Debian busybox-static" "$rootfs/rootfs.tar" "$IMAGE" >/dev/null
	say "$name: imported $IMAGE"
}
import_image rootful podman --url "unix://$ROOT_SOCK"
import_image rootless "${AS_USER[@]}" podman --url "unix://$USER_SOCK"

# 6. Check both run it.
podman --url "unix://$ROOT_SOCK" run --rm --network none "$IMAGE" /bin/sh -c 'test -x /bin/busybox && echo ok' | grep -qx ok ||
	die "rootful podman cannot run $IMAGE"
"${AS_USER[@]}" podman --url "unix://$USER_SOCK" run --rm --network none "$IMAGE" /bin/sh -c 'test -x /bin/busybox && echo ok' | grep -qx ok ||
	die "rootless podman cannot run $IMAGE"
say "checked: $IMAGE runs rootful and rootless"
say "rootful:  CONTAINER_HOST=unix://$ROOT_SOCK"
say "rootless: CONTAINER_HOST=unix://$USER_SOCK (user $USER_NAME, uid $uid)"
