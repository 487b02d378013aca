#!/usr/bin/env bash
# A bebrjax config on a Cloud TPU VM pod slice: the same command on every
# worker (host), under jax.distributed (JAX reads the slice's topology itself).
#
#   launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]
#
# Example:
#   launch/tpu_vm.sh my-v5p-64 us-east5-a configs/bebr/reference.py gs://bucket/runs/ref
#
# What it sets: `gcloud compute tpus tpu-vm ssh --worker=all` runs, on every
# host of the slice, `python -m bebrjax train ... --distributed` in the
# directory REPO (default ~/bebrjax, where bebrjax is installed: clone it and
# `pip install -e .` on every worker first, e.g. with the same --worker=all
# ssh); jax.distributed.initialize() finds the coordinator, the number of
# processes (one per host) and this host's id from the TPU metadata.
# WORKDIR must be reachable from every host (a bucket or a shared disk):
# orbax writes one checkpoint collectively, process 0 the other files.
# Not run here (no TPU was available); `bash -n` checks it in the tests.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
name=$1 zone=$2 config=$3 workdir=$4
shift 4
repo=${REPO:-\~/bebrjax}
printf -v overrides ' %q' "$@"
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command \
  "cd $repo && python -m bebrjax train --config $(printf %q "$config") --workdir $(printf %q "$workdir") --distributed$overrides"
