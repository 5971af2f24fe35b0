# Shared by the project's scripts: dependencies, build, and throwaway servers.
# Source it; it expects to run as root on Debian 12 with PostgreSQL 15.

set -euo pipefail

# LEDGER_PGBIN runs the scripts on another copy of PostgreSQL's binaries,
# e.g. one with a build of the extension installed by DESTDIR.
PGBIN=${LEDGER_PGBIN:-/usr/lib/postgresql/15/bin}
export PATH="$PGBIN:$PATH"
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGUSER_OS=postgres

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Install the Debian packages named, updating the package lists once if a
# package is missing.
need_packages() {
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build_dependencies() {
	need_packages postgresql-15 postgresql-client-15 postgresql-server-dev-15 \
		postgresql-15-plproxy build-essential libipc-run-perl
}

# Build and install the extension into the server's directories.
build_and_install() {
	# scripts/test.sh has installed the package already
	[ -n "${LEDGER_INSTALLED:-}" ] && return 0
	log "building and installing the extension"
	make -C "$TOP" -s clean >/dev/null
	make -C "$TOP" -s >/dev/null
	make -C "$TOP" -s install >/dev/null
}

# Build the Debian package of the extension and install it.
build_and_install_package() {
	log "building and installing the Debian package"
	make -C "$TOP" -s clean >/dev/null
	make -C "$TOP" -s deb >/dev/null
	dpkg -i "$TOP"/build/postgresql-15-ledger_*.deb >/dev/null
}

# The tree is built by root but tests run as postgres, which may need to
# write results into it.
give_tree_to_postgres() {
	chown -R "$PGUSER_OS" "$TOP"
}

as_pg() { runuser -u "$PGUSER_OS" -- "$@"; }

# start_server DIR PORT [extra postgresql.conf lines...]
# A throwaway cluster in DIR listening on 127.0.0.1:PORT and a socket in DIR.
# With DATA_TMPFS_MB set, the data directory is a tmpfs of that size (so a
# test can fill it) and pg_wal is beside it on disk, in DIR/pg_wal.
start_server() {
	local dir=$1 port=$2 initdb_opts=()
	shift 2
	mountpoint -q "$dir/data" && umount "$dir/data"
	rm -rf "$dir"
	mkdir -p "$dir"
	if [ -n "${DATA_TMPFS_MB:-}" ]; then
		mkdir "$dir/data"
		mount -t tmpfs -o "size=${DATA_TMPFS_MB}m,mode=0700" tmpfs "$dir/data" || return 1
		chown "$PGUSER_OS" "$dir/data"
		initdb_opts=(--waldir="$dir/pg_wal")
	fi
	chown "$PGUSER_OS" "$dir"
	as_pg initdb -D "$dir/data" -A trust -U postgres "${initdb_opts[@]}" >/dev/null
	{
		echo "port = $port"
		echo "listen_addresses = '127.0.0.1'"
		echo "unix_socket_directories = '$dir'"
		echo "shared_preload_libraries = 'ledger'"
		echo "ledger.database = 'postgres'"
		for line in "$@"; do echo "$line"; done
	} >>"$dir/data/postgresql.conf"
	as_pg pg_ctl -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
}

stop_server() {
	local dir=$1
	[ -f "$dir/data/postmaster.pid" ] && as_pg pg_ctl -D "$dir/data" -m fast -w stop >/dev/null || true
}
