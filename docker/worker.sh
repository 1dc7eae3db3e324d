#!/bin/sh
# Entrypoint of the worker services in docker/compose.yaml (CPU image and GPU image alike):
#   1. wait until the Prefect API answers $PREFECT_API_URL/health (depends_on covers a
#      fresh `up`, not a server that restarts later; give up after MEDHALL_WAIT_TIMEOUT s
#      and exit 1, so that the restart policy tries again);
#   2. create the work pools named in MEDHALL_POOLS (type process) that do not exist yet;
#   3. with MEDHALL_DEPLOY=1, `prefect deploy --all` from deployments/prefect.yaml (every
#      work pool that file names must exist by then: hence step 2);
#   4. exec `prefect worker start` on MEDHALL_POOL with its health server (the image's
#      HEALTHCHECK asks it, through the URL written to MEDHALL_HEALTH_FILE); arguments given
#      to this script are passed on (e.g. `--run-once`).
# Settings (environment):
#   PREFECT_API_URL        required, e.g. http://prefect-server:4200/api
#   MEDHALL_POOL           pool this worker polls (default medhall-process)
#   MEDHALL_POOLS          pools to create if missing (default: MEDHALL_POOL)
#   MEDHALL_DEPLOY         1: deploy deployments/prefect.yaml first (default 1)
#   MEDHALL_PREFECT_FILE   default deployments/prefect.yaml (relative to the repository)
#   MEDHALL_WORKER_LIMIT   most flow runs at once (default: no limit)
#   MEDHALL_WAIT_TIMEOUT   seconds to wait for the API (default 300)
#   MEDHALL_WAIT_INTERVAL  seconds between tries (default 2)
#   MEDHALL_HEALTH_FILE    default /tmp/medhall-health-url
#   MEDHALL_REPO           the repository in the image (default: this script's parent folder)
set -eu

: "${PREFECT_API_URL:?PREFECT_API_URL is not set (e.g. http://prefect-server:4200/api)}"
here=$(cd "$(dirname "$0")" && pwd)
MEDHALL_REPO=${MEDHALL_REPO:-$(dirname "$here")}
export MEDHALL_REPO  # deployments/prefect.yaml's pull step reads it
cd "$MEDHALL_REPO"

pool=${MEDHALL_POOL:-medhall-process}
pools=${MEDHALL_POOLS:-$pool}
timeout=${MEDHALL_WAIT_TIMEOUT:-300}
interval=${MEDHALL_WAIT_INTERVAL:-2}
py=$(command -v python3 || command -v python)

# The health server of `prefect worker start --with-healthcheck` (prefect's settings).
echo "http://127.0.0.1:${PREFECT_WORKER_WEBSERVER_PORT:-8080}/health" \
  >"${MEDHALL_HEALTH_FILE:-/tmp/medhall-health-url}"

api_health="${PREFECT_API_URL%/}/health"
echo "worker: waiting for the Prefect API at $api_health (up to ${timeout}s)"
start=$(date +%s)
tries=0
until err=$("$py" "$here/healthcheck.py" "$api_health" --timeout 5 2>&1); do
  tries=$((tries + 1))
  if [ $(($(date +%s) - start)) -ge "$timeout" ]; then
    echo "worker: the Prefect API did not answer within ${timeout}s ($tries tries; last: $err)" >&2
    exit 1
  fi
  sleep "$interval"
done
echo "worker: Prefect API is up"

for p in $pools; do
  if ! prefect work-pool inspect "$p" >/dev/null 2>&1; then
    # Another worker may create it at the same moment: then inspect finds it.
    prefect work-pool create "$p" --type process \
      || prefect work-pool inspect "$p" >/dev/null \
      || { echo "worker: cannot create work pool $p" >&2; exit 1; }
  fi
done

if [ "${MEDHALL_DEPLOY:-1}" = 1 ]; then
  prefect --no-prompt deploy --all --prefect-file "${MEDHALL_PREFECT_FILE:-deployments/prefect.yaml}"
fi

set -- prefect worker start --pool "$pool" --type process --with-healthcheck "$@"
if [ -n "${MEDHALL_WORKER_LIMIT:-}" ]; then
  set -- "$@" --limit "$MEDHALL_WORKER_LIMIT"
fi
echo "worker: $*"
exec "$@"
