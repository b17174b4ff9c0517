#!/usr/bin/env bash
# launch/train_detached.sh --output-dir runs/ho3d_v2 [--launch-config launch/4gpu.yaml] [--max-restarts 20] [--relaunch-delay 5] -- --config configs/ho3d_v2.yaml
#
# Starts `utnet train` so that it survives a closed terminal or ssh session: the run is started in its
# own session (setsid) with nohup and all output appended to <output-dir>/train.log. accelerate launch /
# torchrun install their own SIGHUP handler, so nohup alone does not protect a run (docs/distributed.md).
# When the run stops because it received a signal (it saves a checkpoint and writes
# "stopped_on_signal" to <output-dir>/run_state.json), it is relaunched with --resume auto.
# To stop for good: kill "$(cat <output-dir>/supervisor.pid)" (the signal is forwarded, the run saves
# a checkpoint, and nothing is relaunched).
#
# With --launch-config (accelerate launch, i.e. torch elastic): the launcher forwards only the signals
# in PET_SIGNALS_TO_HANDLE (torch's default SIGTERM,SIGINT,SIGHUP,SIGQUIT); any other signal, SIGUSR1
# included, kills the launcher by default and leaves the workers training as orphans. So this script
# adds SIGUSR1 to that list, forwards a SIGUSR1 it receives itself as SIGTERM, and sets
# TORCH_ELASTIC_SHUTDOWN_TIMEOUT (seconds between forwarding a signal and SIGKILLing the workers; torch's
# default 30 is too short for a step, an evaluation and a checkpoint save) to 600 unless it is set.
# Both variables are read by recent torch (2.14 here); older torch ignores them (four signals, 30 s).
set -euo pipefail

usage() { sed -n '2p' "$0" | sed 's/^# /usage: /' >&2; exit 2; }

output_dir="" launch_config="" max_restarts=20 relaunch_delay=5 supervise=0
while [ $# -gt 0 ]; do
  case "$1" in
    --output-dir) output_dir="${2:?}"; shift 2 ;;
    --launch-config) launch_config="${2:?}"; shift 2 ;;
    --max-restarts) max_restarts="${2:?}"; shift 2 ;;
    --relaunch-delay) relaunch_delay="${2:?}"; shift 2 ;;
    --supervise) supervise=1; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "train_detached.sh: unknown option $1 (utnet train options go after --)" >&2; usage ;;
  esac
done
[ -n "$output_dir" ] || { echo "train_detached.sh: --output-dir is required" >&2; usage; }
if [ -n "$launch_config" ] && [ ! -f "$launch_config" ]; then
  echo "train_detached.sh: --launch-config $launch_config: no such file" >&2; exit 2
fi
for arg in "$@"; do  # every relaunch passes the same options: --overwrite would move the run aside each time
  if [ "$arg" = "--overwrite" ]; then
    echo "train_detached.sh: --overwrite is refused here (each relaunch would move the run aside again); move $output_dir yourself or choose another --output-dir" >&2
    exit 2
  fi
done
mkdir -p "$output_dir"
log="$output_dir/train.log"

if [ "$supervise" -eq 0 ]; then
  # Re-run this script detached from the terminal; return at once.
  setsid nohup "$0" --supervise --output-dir "$output_dir" ${launch_config:+--launch-config "$launch_config"} \
    --max-restarts "$max_restarts" --relaunch-delay "$relaunch_delay" -- "$@" >>"$log" 2>&1 < /dev/null &
  echo "started detached run: log $log, supervisor pid $!"
  echo "follow: tail -f $log    stop: kill \$(cat $output_dir/supervisor.pid)"
  exit 0
fi

echo $$ > "$output_dir/supervisor.pid"
child="" sleeper="" pending="" stop_requested=0
# Bash runs a trap between two commands, so a signal can land anywhere in the loop below: before the
# child's pid is known (`pending` is forwarded once it is), or just before a `wait` that would then
# sleep out the whole relaunch delay (the handler ends the sleeper itself).
forward() {  # a signal to the supervisor: pass it on, and do not relaunch afterwards
  stop_requested=1
  local sig="$1"
  # accelerate launch may not forward SIGUSR1 (see above); SIGTERM means the same to the workers
  if [ -n "$launch_config" ] && [ "$sig" = USR1 ]; then sig=TERM; fi
  if [ -n "$child" ]; then kill -"$sig" "$child" 2>/dev/null || true; else pending="$sig"; fi
  if [ -n "$sleeper" ]; then kill "$sleeper" 2>/dev/null || true; fi
}
for sig in TERM INT HUP USR1; do trap "forward $sig" "$sig"; done

if [ -n "$launch_config" ]; then
  export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-600}"
  PET_SIGNALS_TO_HANDLE="${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT}"
  case ",$PET_SIGNALS_TO_HANDLE," in *,SIGUSR1,*) ;; *) PET_SIGNALS_TO_HANDLE="$PET_SIGNALS_TO_HANDLE,SIGUSR1" ;; esac
  export PET_SIGNALS_TO_HANDLE
  echo "[train_detached] launcher forwards $PET_SIGNALS_TO_HANDLE; workers get" \
       "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT}s to save before SIGKILL"
  cmd=(accelerate launch --config_file "$launch_config" -m utnet train)
else
  cmd=("${PYTHON:-python}" -m utnet train)
fi

restarts=0
code=0
while true; do
  if [ "$stop_requested" -eq 1 ]; then
    echo "[train_detached] stop requested before the launch: not launched"; break
  fi
  rm -f "$output_dir/run_state.json"  # the status read below must be this launch's, not a stale one
  echo "[train_detached $(date -u +%FT%TZ)] ${cmd[*]} --output-dir $output_dir --resume auto $*"
  "${cmd[@]}" --output-dir "$output_dir" --resume auto "$@" &
  # For the tests only: stay in the window between the fork and `child=$!` until a stop arrives (it becomes `pending`).
  if [ -n "${UTNET_DETACHED_TEST_HOLD_FORK:-}" ]; then while [ "$stop_requested" -eq 0 ]; do sleep 0.05; done; fi
  child=$!
  if [ -n "$pending" ]; then kill -"$pending" "$child" 2>/dev/null || true; pending=""; fi
  set +e
  wait "$child"; code=$?
  while kill -0 "$child" 2>/dev/null; do wait "$child"; code=$?; done  # wait returns early on a trapped signal
  set -e
  child=""
  status=$("${PYTHON:-python}" -c "import json,sys; print(json.load(open(sys.argv[1])).get('status',''))" \
           "$output_dir/run_state.json" 2>/dev/null || echo "")
  echo "[train_detached $(date -u +%FT%TZ)] exit code $code, run status '${status:-unknown}'"
  if [ "$stop_requested" -eq 1 ] || [ "$status" != "stopped_on_signal" ]; then
    if [ "$status" = running ] || [ -z "$status" ]; then
      echo "[train_detached] the run ended without recording why (crashed, killed, or signalled before its" \
           "signal handlers were installed): not relaunched; check that no training process is left:" \
           "ps -ef | grep 'utnet train'"
    fi
    # the stop may also land after the status line above: the log says why nothing follows either way
    if [ "$stop_requested" -eq 1 ]; then echo "[train_detached] stop requested: not relaunched"; fi
    break
  fi
  restarts=$((restarts + 1))
  if [ "$restarts" -gt "$max_restarts" ]; then
    echo "[train_detached] $max_restarts restarts reached: giving up"; code=1; break
  fi
  sleep "$relaunch_delay" & sleeper=$!
  # a signal during the wait ends it at once (the handler also kills the sleeper); one that came
  # before the sleeper's pid was known is seen here
  if [ "$stop_requested" -eq 0 ]; then wait "$sleeper" || true; fi
  kill "$sleeper" 2>/dev/null || true
  sleeper=""
  if [ "$stop_requested" -eq 1 ]; then
    echo "[train_detached] stop requested during the relaunch delay: not relaunched"; break
  fi
done
rm -f "$output_dir/supervisor.pid"
exit "$code"
