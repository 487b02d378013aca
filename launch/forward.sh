#!/usr/bin/env bash
# DMU and BiCT beyond one comparison table: BiCT's lambda_bc sweep, the
# three-step sequence (synthetic and digits), DMU against BCT over three
# seeds, and DMU and BiCT on digits.
#
#   launch/forward.sh [OUT_DIR]
set -euo pipefail
out=${1:-/tmp/bebr_forward}
bebrjax train --workdir "$out/bict_sweep" --config configs/upgrade/bict_sweep.py
bebrjax train --workdir "$out/sequential" --config configs/upgrade/sequential.py
bebrjax train --workdir "$out/sequential_digits" \
  --config configs/upgrade/sequential.py:data=digits
for seed in 0 1 2; do
  bebrjax train --workdir "$out/dmu_seed$seed" --config configs/upgrade/compare.py \
    --config.methods='("bct","dmu","bict")' --config.seed=$seed
done
bebrjax train --workdir "$out/digits" --config configs/upgrade/compare.py:data=digits \
  --config.methods='("bct","dmu","bict")'
