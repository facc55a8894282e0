# shellcheck shell=bash
# Helpers for the scripts in scripts/ (sourced, never run). The sourcing script sets
# SCRIPT_NAME (the progress-line tag) and T0 (`date +%s` at its start) first.

# say MSG...: a progress line on stderr with seconds since the script started.
say() { printf '[%s %4ss] %s\n' "${SCRIPT_NAME:-scripts}" "$(($(date +%s) - ${T0:-$(date +%s)}))" "$*" >&2; }

# die MSG...: say it as an error and exit 1.
die() {
	say "error: $*"
	exit 1
}

# apt_update_once [PKG...]: apt-get update (root only), once per script run.
apt_updated=
apt_update_once() {
	[ "$(id -u)" = 0 ] || die "need root to install Debian packages: $*"
	[ -z "$apt_updated" ] || return 0
	say "apt-get update"
	apt-get update -qq >/dev/null || die "apt-get update failed: no package mirror reachable"
	apt_updated=1
}

# apt_try_install PKG...: install Debian packages (root only), apt-get update once first;
# return 1 instead of dying when apt-get install fails (e.g. no such package in this
# release), with apt-get's own messages hidden.
apt_try_install() {
	apt_update_once "$@"
	say "installing Debian packages: $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1
}

# apt_install PKG...: install Debian packages (root only), apt-get update once first; die
# (showing apt-get's messages) when that fails.
apt_install() {
	apt_update_once "$@"
	say "installing Debian packages: $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
		die "apt-get install $* failed"
}

# ensure_kubectl: kubectl from Debian: package kubectl (where a repository provides it), else
# kubernetes-client (Debian 12 main has only that one).
ensure_kubectl() {
	command -v kubectl >/dev/null && return 0
	apt_try_install kubectl || say "no installable Debian package kubectl; trying kubernetes-client"
	command -v kubectl >/dev/null || apt_try_install kubernetes-client || true
	command -v kubectl >/dev/null ||
		die "kubectl is missing and neither Debian package kubectl nor kubernetes-client could be installed (apt-get install kubectl / kubernetes-client failed)"
}

# cache_target_dir: print the Cargo target dir of the cache scheme of .ci/run (a dir keyed by
# Cargo.lock and the compiler under ${CLOUDPODS_CACHE_DIR:-/var/cache/cloudpods}; on a miss
# the newest earlier one is renamed to the new key). Unlike .ci/run, a dir that a cargo
# process is building in right now is not renamed (others may share the cache): then the new
# key starts empty and the build is cold. Run from the repository root.
cache_target_dir() {
	local cache key target newest busy='' lock
	cache=${CLOUDPODS_CACHE_DIR:-/var/cache/cloudpods}
	mkdir -p "$cache"
	key=$( (cat Cargo.lock; rustc -V) | sha256sum | cut -c1-16)
	target="$cache/target-$key"
	if [ ! -d "$target" ]; then
		# shellcheck disable=SC2012 # names are ours: target-<hex>
		newest=$(ls -1dt "$cache"/target-* 2>/dev/null | head -n 1 || true)
		if [ -n "$newest" ] && command -v flock >/dev/null; then
			for lock in "$newest"/{debug,release}/.cargo-lock; do
				if [ -e "$lock" ] && ! flock -n "$lock" true; then busy=1; fi
			done
		fi
		if [ -n "$newest" ] && [ -z "$busy" ]; then
			say "new cargo cache key $key: renaming $newest (as .ci/run does)"
			mv "$newest" "$target"
		else
			[ -z "$busy" ] || say "cargo is building in $newest: not renaming it; cold build in $target"
			mkdir -p "$target"
		fi
	fi
	echo "$target"
}
