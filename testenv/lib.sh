# shellcheck shell=bash
# Helpers shared by the testenv scripts (sourced, never run).
#
# Process records: a DIR/pids file holds one line per process we started:
#     NAME PID STARTTIME STOPSIGNAL
# STARTTIME is field 22 of /proc/PID/stat (clock ticks since boot), so a PID
# that the kernel has since handed to another process is never signalled.
# Nothing here ever looks a process up by name.

TESTENV_T0=${TESTENV_T0:-$(date +%s.%N)}

# say MSG...: a progress line on stderr with seconds since the script started.
say() {
	local t
	t=$(awk -v a="$TESTENV_T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
	printf '[testenv] %6ss %s\n' "$t" "$*" >&2
}

fail() {
	say "ERROR: $*"
	exit 1
}

# elapsed_since T: seconds (one decimal) since the date +%s.%N value T.
elapsed_since() {
	awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'
}

# proc_start PID: the process' start time, empty when there is no such process.
proc_start() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
	# Fields after the command name, which is in parentheses and may hold spaces.
	stat=${stat##*) }
	# shellcheck disable=SC2086
	set -- $stat
	echo "${20}"
}

# proc_alive PID STARTTIME: true when PID runs, is not a zombie, and is the
# same process that was recorded.
proc_alive() {
	local stat
	[ -n "${1:-}" ] && [ -n "${2:-}" ] || return 1
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	# shellcheck disable=SC2086
	set -- "$2" $stat
	[ "$2" != Z ] && [ "$2" != X ] && [ "${21}" = "$1" ]
}

# record DIR NAME PID STOPSIGNAL: append a process to DIR/pids.
record() {
	local st
	st=$(proc_start "$3")
	[ -n "$st" ] || return 1
	printf '%s %s %s %s\n' "$2" "$3" "$st" "$4" >>"$1/pids"
}

# any_alive DIR: true when a process recorded in DIR/pids still runs.
any_alive() {
	local name pid st sig
	[ -f "$1/pids" ] || return 1
	while read -r name pid st sig; do
		proc_alive "$pid" "$st" && return 0
	done <"$1/pids"
	return 1
}

# stop_recorded DIR [TIMEOUT_SECONDS]: stop the processes in DIR/pids, the
# last started first: their STOPSIGNAL, then SIGKILL after the timeout.
stop_recorded() {
	local dir=$1 timeout=${2:-10} lines=() i name pid st sig n
	if [ ! -f "$dir/pids" ]; then
		say "stop: nothing recorded in $dir"
		return 0
	fi
	mapfile -t lines <"$dir/pids"
	for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
		read -r name pid st sig <<<"${lines[$i]}"
		if ! proc_alive "$pid" "$st"; then
			say "stop: $name (pid $pid) was not running"
			continue
		fi
		kill "-${sig:-TERM}" "$pid" 2>/dev/null || true
		n=0
		while proc_alive "$pid" "$st" && [ "$n" -lt $((timeout * 10)) ]; do
			sleep 0.1
			n=$((n + 1))
		done
		if proc_alive "$pid" "$st"; then
			say "stop: $name (pid $pid) still running after ${timeout}s; SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			n=0
			while proc_alive "$pid" "$st" && [ "$n" -lt 50 ]; do
				sleep 0.1
				n=$((n + 1))
			done
		fi
		say "stop: $name (pid $pid) stopped"
	done
	rm -f "$dir/pids"
}

# print_status DIR: one line per recorded process; exit 0 when any runs.
print_status() {
	local name pid st sig rc=1
	if [ ! -f "$1/pids" ]; then
		echo "nothing running (no $1/pids)"
		return 1
	fi
	while read -r name pid st sig; do
		if proc_alive "$pid" "$st"; then
			echo "$name pid $pid running"
			rc=0
		else
			echo "$name pid $pid not running"
		fi
	done <"$1/pids"
	return "$rc"
}

# free_port: print a TCP port on 127.0.0.1 that nothing listens on or uses
# now. Callers still retry on "address in use", since another process may
# take it before they bind.
free_port() {
	local used port i
	# Local ports of all IPv4 and IPv6 sockets, hex, from /proc.
	used=$(awk 'FNR > 1 { split($2, a, ":"); print a[length(a)] }' /proc/net/tcp /proc/net/tcp6 2>/dev/null | sort -u)
	for ((i = 0; i < 200; i++)); do
		port=$((20000 + (RANDOM * 32768 + RANDOM) % 30000))
		if ! grep -qx "$(printf '%04X' "$port")" <<<"$used"; then
			echo "$port"
			return 0
		fi
	done
	return 1
}

# abs_dir DIR: create DIR if needed and print its absolute path.
abs_dir() {
	mkdir -p "$1"
	(cd "$1" && pwd -P)
}

# ensure_host_packages PKG...: apt-get install the packages that are missing
# (root only), running apt-get update first only when the lists are empty or
# the first install attempt fails.
ensure_host_packages() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	[ "$(id -u)" = 0 ] || fail "missing host packages: ${missing[*]} (run as root, or apt-get install them)"
	command -v apt-get >/dev/null || fail "missing host packages ${missing[*]} and no apt-get on this machine"
	say "installing host packages: ${missing[*]}"
	local log
	log=$(mktemp "${TMPDIR:-/tmp}/testenv-apt.XXXXXX")
	if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
		say "apt lists are empty: apt-get update"
		DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 ||
			fail "apt-get update failed on the host (see $log)"
	fi
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
		say "apt-get install failed; apt-get update and retry"
		DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 ||
			fail "apt-get update failed on the host (see $log)"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$log" 2>&1 ||
			fail "apt-get install ${missing[*]} failed on the host (see $log)"
	fi
	rm -f "$log"
}
