#!/usr/bin/env bash
# launch/train_detached.sh --output-dir runs/ho3d_v2 [--launch-config launch/4gpu.yaml] [--max-restarts 20] -- --config configs/ho3d_v2.yaml
#
# Starts `utnet train` so that it survives a closed terminal or ssh session: the run is started in its
# own session (setsid) with nohup and all output appended to <output-dir>/train.log. accelerate launch /
# torchrun install their own SIGHUP handler, so nohup alone does not protect a run (REFERENCE.md 5).
# When the run stops because it received a signal (it saves a checkpoint and writes
# "stopped_on_signal" to <output-dir>/run_state.json), it is relaunched with --resume auto.
# To stop for good: kill "$(cat <output-dir>/supervisor.pid)" (the signal is forwarded, the run saves
# a checkpoint, and nothing is relaunched).
set -euo pipefail

usage() { sed -n '2p' "$0" | sed 's/^# /usage: /' >&2; exit 2; }

output_dir="" launch_config="" max_restarts=20 supervise=0
while [ $# -gt 0 ]; do
  case "$1" in
    --output-dir) output_dir="${2:?}"; shift 2 ;;
    --launch-config) launch_config="${2:?}"; shift 2 ;;
    --max-restarts) max_restarts="${2:?}"; shift 2 ;;
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
mkdir -p "$output_dir"
log="$output_dir/train.log"

if [ "$supervise" -eq 0 ]; then
  # Re-run this script detached from the terminal; return at once.
  setsid nohup "$0" --supervise --output-dir "$output_dir" ${launch_config:+--launch-config "$launch_config"} \
    --max-restarts "$max_restarts" -- "$@" >>"$log" 2>&1 < /dev/null &
  echo "started detached run: log $log, supervisor pid $!"
  echo "follow: tail -f $log    stop: kill \$(cat $output_dir/supervisor.pid)"
  exit 0
fi

echo $$ > "$output_dir/supervisor.pid"
child=""
stop_requested=0
forward() {  # a signal to the supervisor: pass it on, and do not relaunch afterwards
  stop_requested=1
  [ -n "$child" ] && kill -"$1" "$child" 2>/dev/null || true
}
for sig in TERM INT HUP USR1; do trap "forward $sig" "$sig"; done

if [ -n "$launch_config" ]; then
  cmd=(accelerate launch --config_file "$launch_config" -m utnet train)
else
  cmd=("${PYTHON:-python}" -m utnet train)
fi

restarts=0
while true; do
  echo "[train_detached $(date -u +%FT%TZ)] ${cmd[*]} --output-dir $output_dir --resume auto $*"
  "${cmd[@]}" --output-dir "$output_dir" --resume auto "$@" &
  child=$!
  set +e
  wait "$child"; code=$?
  while kill -0 "$child" 2>/dev/null; do wait "$child"; code=$?; done  # wait returns early on a trapped signal
  set -e
  child=""
  status=$("${PYTHON:-python}" -c "import json,sys; print(json.load(open(sys.argv[1])).get('status',''))" \
           "$output_dir/run_state.json" 2>/dev/null || echo "")
  echo "[train_detached $(date -u +%FT%TZ)] exit code $code, run status '${status:-unknown}'"
  if [ "$stop_requested" -eq 1 ] || [ "$status" != "stopped_on_signal" ]; then
    break
  fi
  restarts=$((restarts + 1))
  if [ "$restarts" -gt "$max_restarts" ]; then
    echo "[train_detached] $max_restarts restarts reached: giving up"; code=1; break
  fi
  sleep 5
done
rm -f "$output_dir/supervisor.pid"
exit "$code"
