#!/usr/bin/env bash
# setup-docker.sh prepares a Debian 12 machine (run as root) for Corral's docker
# runtime and its tests: it installs Debian's docker.io, busybox-static and
# docker-registry, starts dockerd by hand when it is not running (no systemd on
# CI machines), and imports the test image corral-test-busybox:latest built from
# busybox-static. Idempotent: run it as often as you like; it only does what is
# missing and says what it did.
set -euo pipefail

IMAGE="${CORRAL_TEST_IMAGE:-corral-test-busybox:latest}"
SOCK="${DOCKER_SOCK:-/var/run/docker.sock}"
LOG="${DOCKERD_LOG:-/var/log/corral-dockerd.log}"
WAIT="${DOCKERD_WAIT_SECONDS:-60}"

say() { printf 'setup-docker: %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
	echo "setup-docker: must run as root" >&2
	exit 1
fi

# 1. Packages.
missing=()
for pkg in docker.io busybox-static docker-registry iproute2 iptables kmod; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
	say "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
	say "packages already installed (docker.io, busybox-static, docker-registry, iproute2, iptables, kmod)"
fi

# The open-network firewall (runtime/firewall) and its tests: nf_tables with
# NAT, fib and conntrack, and veth pairs. The kernel loads these on demand;
# loading them here makes a missing one fail loudly at setup, not in a test.
modprobe -a nf_tables nft_chain_nat nft_masq nft_fib_inet nft_ct veth 2>/dev/null ||
	say "note: modprobe could not load every nf_tables module (built in, or missing)"

# Debian's docker.io puts its client in /usr/bin; another docker client may
# come first in PATH, which is fine as long as it talks to our socket.
export DOCKER_HOST="unix://$SOCK"

# 2. dockerd, started by hand when it does not answer.
if docker info >/dev/null 2>&1; then
	say "dockerd already answers on $SOCK"
else
	if ! pgrep -x dockerd >/dev/null; then
		say "starting dockerd (log: $LOG)"
		# From /: nothing the engine writes lands in a checkout.
		env -C / nohup /usr/sbin/dockerd -H "unix://$SOCK" >>"$LOG" 2>&1 </dev/null &
	else
		say "dockerd is running but not answering yet; waiting"
	fi
	for ((i = 0; i < WAIT * 10; i++)); do
		docker info >/dev/null 2>&1 && break
		sleep 0.1
	done
	if ! docker info >/dev/null 2>&1; then
		echo "setup-docker: dockerd did not answer within ${WAIT}s; last log lines:" >&2
		tail -n 20 "$LOG" >&2 || true
		exit 1
	fi
	say "dockerd ready after ~$((i / 10)).$((i % 10))s"
fi

# 3. The test image: busybox-static with its applet links, imported locally
# (no registry is reachable from CI).
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
	say "image $IMAGE already present"
else
	root="$(mktemp -d)"
	trap 'rm -rf "$root"' EXIT
	mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/workspace" "$root/root" \
		"$root/proc" "$root/sys" "$root/dev" "$root/run" "$root/usr/bin" "$root/usr/sbin" "$root/sbin"
	chmod 1777 "$root/tmp"
	cp /bin/busybox "$root/bin/busybox"
	chroot "$root" /bin/busybox --install -s
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
	tar -C "$root" -c . | docker import \
		-c 'CMD ["/bin/sh"]' -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		-m "corral test image: Debian busybox-static" - "$IMAGE" >/dev/null
	say "imported $IMAGE ($(ls "$root/bin" | wc -l) entries in /bin)"
fi

docker run --rm --network none "$IMAGE" /bin/sh -c 'test -x /bin/busybox && echo ok' | grep -qx ok
say "checked: $IMAGE runs; DOCKER_HOST=$DOCKER_HOST"
