#!/usr/bin/env bash
# Runs a config on N local processes under jax.distributed, each with its own
# forced CPU devices: the multi-process path of a cluster, on one machine.
#
#   launch/multiprocess.sh N CONFIG WORKDIR [--config.key=value ...]
#
# Example (prints the same table as the one-process demo):
#   launch/multiprocess.sh 2 configs/bebr/demo.py /tmp/bebr_demo_2p
#
# What it sets, per process I in 0..N-1:
#   JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT, JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=I
#     (read by bebrjax.distributed.initialize; CPU collectives use gloo);
#   JAX_PLATFORMS=cpu and XLA_FLAGS=--xla_force_host_platform_device_count=D.
# Knobs (environment): DEVICES_PER_PROCESS=D (default 1); PORT (default: a free
# port); COMMAND (default train; e.g. search, with its own flags after N in
# place of CONFIG WORKDIR ...: `bebrjax COMMAND FLAGS`); PYTHON (default python).
# Process 0 prints to this terminal; the others log to a temporary directory,
# whose path is printed when one of them fails. When any process fails, the
# others are stopped and its exit status is returned.
set -euo pipefail
usage="usage: $0 N CONFIG WORKDIR [--config.key=value ...]"
[[ $# -ge 2 ]] || { echo "$usage" >&2; exit 2; }
n=$1
shift
[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "N='$n': must be a positive integer; $usage" >&2; exit 2; }
command=${COMMAND:-train}
if [[ $command == train ]]; then
  [[ $# -ge 2 ]] || { echo "$usage" >&2; exit 2; }
  set -- --config "$1" --workdir "$2" "${@:3}"
fi
devices=${DEVICES_PER_PROCESS:-1}
[[ $devices =~ ^[1-9][0-9]*$ ]] || { echo "DEVICES_PER_PROCESS='$devices': must be a positive integer" >&2; exit 2; }
python=${PYTHON:-python}
port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
logs=$(mktemp -d "${TMPDIR:-/tmp}/bebrjax-multiprocess.XXXXXX")

export JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=$n JAX_PLATFORMS=cpu
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; }
trap 'stop; exit 130' INT TERM
for ((i = 0; i < n; i++)); do
  if ((i == 0)); then
    JAX_PROCESS_ID=$i "$python" -m bebrjax "$command" "$@" &
  else
    JAX_PROCESS_ID=$i "$python" -m bebrjax "$command" "$@" >"$logs/process-$i.log" 2>&1 &
  fi
  pids+=($!)
done
status=0
for ((left = n; left > 0; left--)); do
  wait -n || { status=$?; break; }
done
if ((status)); then
  stop
  wait 2>/dev/null || true
  echo "a process exited with status $status; the others' logs: $logs" >&2
  exit "$status"
fi
rm -rf "$logs"
