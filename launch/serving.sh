#!/usr/bin/env bash
# From training to serving on the demo: train, write the held-out pairs, encode
# the docs into an index, search it with the queries (printing Recall@1/5/10,
# equal to the binary row of the run's results.json), export a bundle, and
# search again through the bundle.
#
#   launch/serving.sh [OUT_DIR]        # default /tmp/bebr_serving
set -euo pipefail
out=${1:-/tmp/bebr_serving}
bebrjax train --config configs/bebr/demo.py --workdir "$out/run"
bebrjax heldout --workdir "$out/run" --out "$out/eval.npz" --overwrite
bebrjax encode --workdir "$out/run" --input "$out/eval.npz" --key doc \
  --index "$out/docs.bebr" --overwrite
bebrjax search --index "$out/docs.bebr" --workdir "$out/run" \
  --queries "$out/eval.npz" --key query --k 100 --out "$out/hits.npz" \
  --relevant "$out/eval.npz:relevant" --overwrite
bebrjax export --workdir "$out/run" --out "$out/bundle" \
  --index "$out/docs.bebr" --overwrite
bebrjax search --index "$out/bundle/index" --bundle "$out/bundle" \
  --queries "$out/eval.npz" --k 100 --out "$out/hits_bundle.npz" \
  --relevant "$out/eval.npz:relevant" --overwrite
