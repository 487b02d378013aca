#!/usr/bin/env bash
# The FOLDOC table of the README: BEBR at 1, 2 and 3 bits per dimension on the
# all-MiniLM-L6-v2 headword/definition pairs. DATA_FILE is the pairs file that
# launch/make_foldoc.sh builds from public packages (docs/foldoc.md):
#
#   launch/make_foldoc.sh foldoc_minilm.npz && launch/foldoc.sh foldoc_minilm.npz
#
#   launch/foldoc.sh [DATA_FILE] [OUT_DIR]
set -euo pipefail
data=${1:-../shared/data/foldoc_minilm.npz}
out=${2:-/tmp/bebr_foldoc}
[[ -f $data ]] || { echo "$data: no such file" >&2; exit 2; }
for bits in 1 2 3; do
  bebrjax train \
    --config "configs/bebr/npz.py:path=$data,query_key=query_new,doc_key=doc_new,bits=$bits" \
    --config.eval.float_baseline=true \
    --workdir "$out/bits$bits"
done
