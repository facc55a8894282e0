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

# apt_install PKG...: install Debian packages (root only), apt-get update once first.
apt_updated=
apt_install() {
	[ "$(id -u)" = 0 ] || die "need root to install Debian packages: $*"
	if [ -z "$apt_updated" ]; then
		say "apt-get update"
		apt-get update -qq >/dev/null || die "apt-get update failed: no package mirror reachable"
		apt_updated=1
	fi
	say "installing Debian packages: $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
		die "apt-get install $* failed"
}

# ensure_kubectl: kubectl from Debian (package kubectl, else kubernetes-client).
ensure_kubectl() {
	command -v kubectl >/dev/null && return 0
	apt_install kubectl 2>/dev/null || apt_install kubernetes-client
	command -v kubectl >/dev/null || die "kubectl is missing and could not be installed"
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
