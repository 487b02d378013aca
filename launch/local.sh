#!/usr/bin/env bash
# Runs a config on this machine, optionally on N forced CPU devices (to try the
# data-parallel mesh without accelerators).
#
#   launch/local.sh CONFIG WORKDIR [--cpu-devices N] [--config.key=value ...]
#
# Example:
#   launch/local.sh configs/bebr/demo.py:bits=2 /tmp/bebr_demo --cpu-devices 8
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--cpu-devices N] [--config.key=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
if [[ ${1:-} == --cpu-devices ]]; then
  [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "--cpu-devices needs a positive integer" >&2; exit 2; }
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$2"
  shift 2
fi
exec bebrjax train --config "$config" --workdir "$workdir" "$@"
