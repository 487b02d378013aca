#!/usr/bin/env bash
# Compatible binary codes on FOLDOC (old = query_old/doc_old, new = query_new/doc_new):
# the u = 0 and u = 1 runs of the README, then the serving path on the u = 1 run:
# an index of old codes, a backfill step that re-encodes half the docs with the new
# model, new queries searching the mixed index, then old and new queries searching it
# version-aware (the run's scoring plan), and psi moving the rest of the old codes to
# the new version from the codes alone.
#
#   launch/compatible.sh [OUT_DIR] [PAIRS.npz]   # defaults /tmp/bebr_compatible,
#                                                # ../shared/data/foldoc_minilm.npz
set -euo pipefail
out=${1:-/tmp/bebr_compatible}
data=${2:-../shared/data/foldoc_minilm.npz}
for bits in 1 2; do
  bebrjax train --workdir "$out/u$((bits - 1))" \
    --config "configs/bebr/compatible.py:path=$data,bits=$bits"
done
run="$out/u1"
bebrjax heldout --workdir "$run/old" --out "$out/old_eval.npz" --overwrite
bebrjax heldout --workdir "$run/new" --out "$out/new_eval.npz" --overwrite
bebrjax encode --workdir "$run/old" --input "$out/old_eval.npz" --key doc \
  --index "$out/gallery.bebr" --overwrite
# A backfill step: the new model's embeddings of a random half of the docs, with their ids.
python - "$out" <<'PY'
import sys

import numpy as np

out = sys.argv[1]
new = np.load(f"{out}/new_eval.npz")
ids = np.random.default_rng(0).permutation(len(new["doc"]))[: len(new["doc"]) // 2]
np.savez(f"{out}/step.npz", doc=new["doc"][ids], ids=ids)
PY
bebrjax encode --workdir "$run/new" --input "$out/step.npz" --key doc \
  --ids "$out/step.npz:ids" --index "$out/gallery.bebr"
search() {
  bebrjax search --index "$out/gallery.bebr" --workdir "$run/new" \
    --queries "$out/new_eval.npz" --key query --k 10 --out "$out/hits.npz" \
    --relevant "$out/new_eval.npz:relevant" --overwrite
}
search                                                      # new queries, old + new codes
# Version-aware: old docs scored by the old and new queries, new docs by the new query.
bebrjax search --index "$out/gallery.bebr" --plan "$run/plans/version_aware.json" \
  --queries old="$out/old_eval.npz" --queries new="$out/new_eval.npz" --key query --k 10 \
  --out "$out/hits_version_aware.npz" --relevant "$out/new_eval.npz:relevant" --overwrite
bebrjax upgrade-gallery --workdir "$run" --index "$out/gallery.bebr"  # the rest: psi
search                                                      # new queries, new + psi codes
