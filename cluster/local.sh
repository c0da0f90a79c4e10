#!/usr/bin/env bash
# A local Ray head node for timevec: start | stop | status.
#
#   cluster/local.sh start  [--port N] [--dashboard-port N] [--num-cpus N] [--num-gpus N]
#                           [--dir DIR] [--auth disabled|token] [--dashboard-host HOST]
#   cluster/local.sh status [--dir DIR]
#   cluster/local.sh stop   [--dir DIR]
#
# `start` runs `ray start --head --block` in the background in a process group of its own, with
# its own Ray temp dir (DIR/ray), and records the PID in DIR/head.pid; `stop` ends exactly that
# process group, never any other Ray on the machine (unlike a bare `ray stop`, which stops every
# Ray process of the machine). DIR defaults to $TIMEVEC_RAY_DIR or /tmp/timevec-ray-$USER; use a
# different --dir to run several heads side by side.
#
# Authentication (Ray >= 2.52): `ray start --head` turns token auth ON when a token exists in
# ~/.ray/auth_token (any earlier local `ray.init()` of Ray 2.6x creates one), while CLI clients such
# as `ray job submit` default to OFF -- a head started naively then answers every submit with 401.
# This script therefore always sets RAY_AUTH_MODE explicitly:
#   --auth disabled (default): a local dev head without auth; the dashboard binds 127.0.0.1 only.
#   --auth token: token auth on; clients must `export RAY_AUTH_MODE=token` (the token is read
#                 from ~/.ray/auth_token, created here with `ray get-auth-token --generate`).
#
# Environment: the head's processes -- and so every job, task and actor on it -- inherit the
# environment of `local.sh start`. Start it from the shell whose PATH (the project's venv) and
# credentials (AWS_* for an s3:// store, HF_TOKEN for gated models) jobs should see; never put
# credentials into configs or runtime_env files.
set -euo pipefail

PROG="cluster/local.sh"
usage() {
  cat <<EOF
usage: $PROG start|stop|status [options]

  start    start a local Ray head node (ray start --head) and print where to submit jobs
  status   say whether the head started here is running (and show 'ray status')
  stop     stop ONLY the head started here (by its recorded process group), not other Rays

options:
  --port N             GCS port of the head (default 6379)
  --dashboard-port N   dashboard / job-submission port (default 8265)
  --num-cpus N         CPUs the head offers (default: all of the machine)
  --num-gpus N         GPUs the head offers (default: autodetected)
  --dir DIR            state dir: pid, log, Ray temp dir (default \$TIMEVEC_RAY_DIR or /tmp/timevec-ray-\$USER)
  --auth MODE          disabled (default) or token; see the header of this script
  --dashboard-host H   address the dashboard binds (default 127.0.0.1; 0.0.0.0 exposes it)
  -h, --help           this help
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 2; }

[ $# -ge 1 ] || { usage >&2; exit 2; }
ACTION="$1"; shift
case "$ACTION" in
  start|stop|status) ;;
  -h|--help|help) usage; exit 0 ;;
  *) echo "$PROG: error: unknown action '$ACTION' (expected start, stop or status)" >&2; usage >&2; exit 2 ;;
esac

PORT=6379
DASHBOARD_PORT=8265
NUM_CPUS=""
NUM_GPUS=""
AUTH=disabled
DASHBOARD_HOST=127.0.0.1
STATE_DIR="${TIMEVEC_RAY_DIR:-/tmp/timevec-ray-$(id -un)}"

need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "option $1 needs a value"; }
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

while [ $# -gt 0 ]; do
  case "$1" in
    --port) need_value "$@"; is_uint "$2" || die "--port must be a number, got '$2'"; PORT="$2"; shift 2 ;;
    --dashboard-port) need_value "$@"; is_uint "$2" || die "--dashboard-port must be a number, got '$2'"; DASHBOARD_PORT="$2"; shift 2 ;;
    --num-cpus) need_value "$@"; is_uint "$2" && [ "$2" -ge 1 ] || die "--num-cpus must be a positive number, got '$2'"; NUM_CPUS="$2"; shift 2 ;;
    --num-gpus) need_value "$@"; is_uint "$2" || die "--num-gpus must be a number, got '$2'"; NUM_GPUS="$2"; shift 2 ;;
    --dir) need_value "$@"; STATE_DIR="$2"; shift 2 ;;
    --auth) need_value "$@"; case "$2" in disabled|token) AUTH="$2" ;; *) die "--auth must be 'disabled' or 'token', got '$2'" ;; esac; shift 2 ;;
    --dashboard-host) need_value "$@"; DASHBOARD_HOST="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see $PROG --help)" ;;
  esac
done

[ "$ACTION" = start ] && mkdir -p "$STATE_DIR"
[ -d "$STATE_DIR" ] && STATE_DIR="$(cd "$STATE_DIR" && pwd -P)"
RAY_TMP="$STATE_DIR/ray"
PID_FILE="$STATE_DIR/head.pid"
ENV_FILE="$STATE_DIR/head.env"
LOG_FILE="$STATE_DIR/head.log"

# Ray puts Unix sockets under its temp dir; their paths must stay under ~107 bytes.
if [ "${#RAY_TMP}" -gt 60 ]; then
  die "state dir path too long for Ray's sockets (${#RAY_TMP} > 60 characters): $RAY_TMP; use a shorter --dir"
fi

RAY_BIN="${RAY:-$(command -v ray || true)}"
PY_BIN=""
find_ray() {
  [ -n "$RAY_BIN" ] && [ -x "$RAY_BIN" ] || die "'ray' not found on PATH; activate the project's venv first (source .venv/bin/activate)"
  PY_BIN="$(dirname "$RAY_BIN")/python"
  [ -x "$PY_BIN" ] || PY_BIN="$(command -v python3 || true)"
  [ -n "$PY_BIN" ] || die "no python next to $RAY_BIN nor python3 on PATH"
}

# --- helpers -------------------------------------------------------------------------------

# The recorded head PID, if it is still the `ray start` we launched with this temp dir.
head_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid
  pid="$(cat "$PID_FILE")"
  is_uint "$pid" || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--temp-dir $RAY_TMP " || return 1
  echo "$pid"
}

# Processes still in the process group we created (its id is the recorded PID).
group_members() {
  local pgid="$1"
  ps -e -o pid= -o pgid= | awk -v g="$pgid" '$2 == g { print $1 }'
}

port_free() {
  "$PY_BIN" - "$1" <<'PYEOF'
import socket, sys
s = socket.socket()
try:
    s.bind(("", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PYEOF
}

free_port() {
  "$PY_BIN" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1]); s.close()'
}

load_env() {
  [ -f "$ENV_FILE" ] || return 1
  . "$ENV_FILE"
  if [ -z "${HEAD_GCS_ADDRESS:-}" ] && [ -s "$RAY_TMP/ray_current_cluster" ]; then
    HEAD_GCS_ADDRESS="$(cat "$RAY_TMP/ray_current_cluster")"
  fi
}

print_info() {
  load_env || true
  local auth_prefix=""
  [ "${HEAD_AUTH:-disabled}" = token ] && auth_prefix="RAY_AUTH_MODE=token "
  cat <<EOF
Ray head (pid ${HEAD_PID:-?}, auth ${HEAD_AUTH:-?}, Ray temp dir $RAY_TMP)
  dashboard:         $HEAD_DASHBOARD_URL
  job submission:    ${auth_prefix}ray job submit --address $HEAD_DASHBOARD_URL --working-dir . -- python -m timevec run timevec/demo/demo.yaml --set store.url=~/timevec-runs/demo
                     (or: export RAY_ADDRESS=$HEAD_DASHBOARD_URL${HEAD_AUTH:+ RAY_AUTH_MODE=$HEAD_AUTH})
  ray.init address:  $HEAD_GCS_ADDRESS
  logs:              $LOG_FILE and $RAY_TMP/session_latest/logs
  stop:              $PROG stop --dir $STATE_DIR
EOF
}

# --- actions -------------------------------------------------------------------------------

do_start() {
  local pid
  find_ray
  if pid="$(head_pid)"; then
    echo "$PROG: a head started here is already running"
    print_info
    return 0
  fi
  # ray_current_cluster is written by `ray start` as its last step: a stale one from an earlier
  # head in this dir would look like readiness.
  rm -f "$PID_FILE" "$ENV_FILE" "$RAY_TMP/ray_current_cluster"
  port_free "$PORT" || die "port $PORT (--port) is in use; choose another with --port N"
  port_free "$DASHBOARD_PORT" || die "port $DASHBOARD_PORT (--dashboard-port) is in use; choose another with --dashboard-port N"
  [ "$PORT" != "$DASHBOARD_PORT" ] || die "--port and --dashboard-port must differ"
  # Ray's other fixed default ports (client server 10001, dashboard agent 52365) would collide
  # with any other Ray on the machine: take free ones.
  local client_port agent_port
  client_port="$(free_port)"
  agent_port="$(free_port)"

  local token=""
  if [ "$AUTH" = token ]; then
    token="$("$RAY_BIN" get-auth-token --generate 2>/dev/null)" || die "could not create a token with 'ray get-auth-token --generate'"
  fi

  local -a args=(start --head --block --port "$PORT" --dashboard-port "$DASHBOARD_PORT"
    --dashboard-host "$DASHBOARD_HOST" --include-dashboard true
    --ray-client-server-port "$client_port" --dashboard-agent-listen-port "$agent_port"
    --temp-dir "$RAY_TMP" --disable-usage-stats)
  [ -n "$NUM_CPUS" ] && args+=(--num-cpus "$NUM_CPUS")
  [ -n "$NUM_GPUS" ] && args+=(--num-gpus "$NUM_GPUS")

  # setsid: a new session and process group whose id is the PID of `ray start`, so `stop` can
  # end every process of this head and nothing else. No drain wait on stop (local head).
  RAY_AUTH_MODE="$AUTH" RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 \
    setsid "$RAY_BIN" "${args[@]}" >"$LOG_FILE" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PID_FILE"
  if [ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" != "$pid" ]; then
    sleep 0.5
    [ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ] || {
      kill -TERM "$pid" 2>/dev/null || true
      die "ray start did not get a process group of its own; see $LOG_FILE"
    }
  fi

  local url_host="$DASHBOARD_HOST"
  [ "$url_host" = "0.0.0.0" ] && url_host=127.0.0.1
  local dashboard_url="http://$url_host:$DASHBOARD_PORT"
  local deadline=$((SECONDS + ${TIMEVEC_RAY_START_TIMEOUT:-120}))
  # Ready = `ray start` wrote the cluster address (its last step before blocking) and the job API
  # of the dashboard answers.
  until [ -s "$RAY_TMP/ray_current_cluster" ] && TIMEVEC_PROBE_TOKEN="$token" "$PY_BIN" -c '
import os, sys, urllib.request
request = urllib.request.Request(sys.argv[1] + "/api/jobs/")
if os.environ.get("TIMEVEC_PROBE_TOKEN"):
    request.add_header("Authorization", "Bearer " + os.environ["TIMEVEC_PROBE_TOKEN"])
urllib.request.urlopen(request, timeout=3)
' "$dashboard_url" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$PROG: error: ray start exited; last lines of $LOG_FILE:" >&2
      tail -n 30 "$LOG_FILE" >&2 || true
      rm -f "$PID_FILE"
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$PROG: error: the dashboard did not answer at $dashboard_url in time; stopping the head" >&2
      tail -n 30 "$LOG_FILE" >&2 || true
      "$0" stop --dir "$STATE_DIR" >&2 || true
      exit 1
    fi
    sleep 1
  done

  local gcs=""
  [ -f "$RAY_TMP/ray_current_cluster" ] && gcs="$(cat "$RAY_TMP/ray_current_cluster")"
  {
    echo "HEAD_PID=$pid"
    echo "HEAD_AUTH=$AUTH"
    echo "HEAD_DASHBOARD_URL=$dashboard_url"
    echo "HEAD_GCS_ADDRESS=$gcs"
    echo "HEAD_TEMP_DIR=$RAY_TMP"
  } >"$ENV_FILE"
  echo "$PROG: started"
  print_info
}

do_status() {
  local pid
  if ! pid="$(head_pid)"; then
    echo "$PROG: no head started by this script is running (state dir $STATE_DIR)"
    return 3
  fi
  echo "$PROG: running"
  print_info
  load_env || true
  if [ -n "${HEAD_GCS_ADDRESS:-}" ] && [ -n "$RAY_BIN" ]; then
    echo
    RAY_AUTH_MODE="${HEAD_AUTH:-disabled}" timeout 60 "$RAY_BIN" status --address "$HEAD_GCS_ADDRESS" || true
  fi
}

do_stop() {
  local pid pgid
  if pid="$(head_pid)"; then
    pgid="$pid"
    echo "$PROG: stopping the head (pid $pid) ..."
    # SIGTERM to `ray start --block`: it stops the processes it started, then exits.
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
  elif [ -f "$PID_FILE" ] && is_uint "$(cat "$PID_FILE")"; then
    pgid="$(cat "$PID_FILE")"   # the leader is gone; members of its group may remain
  else
    echo "$PROG: no head started by this script (state dir $STATE_DIR); nothing to stop"
    return 0
  fi
  # Whatever is left in our process group (workers, job drivers) goes too: TERM, then KILL.
  # A process group id is never reused while a member lives, so these are ours.
  local members
  members="$(group_members "$pgid")"
  if [ -n "$members" ]; then
    kill -TERM -- "-$pgid" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while [ -n "$(group_members "$pgid")" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
    if [ -n "$(group_members "$pgid")" ]; then
      kill -KILL -- "-$pgid" 2>/dev/null || true
    fi
  fi
  rm -f "$PID_FILE" "$ENV_FILE" "$RAY_TMP/ray_current_cluster"
  echo "$PROG: stopped (logs kept in $LOG_FILE and $RAY_TMP)"
}

case "$ACTION" in
  start) do_start ;;
  status) do_status ;;
  stop) do_stop ;;
esac
