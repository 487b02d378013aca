#!/usr/bin/env bash
# The comparison table of every compatibility method on each universal split.
#
#   launch/upgrade_splits.sh [OUT_DIR] [ARG]      e.g. ARG=data=digits
set -euo pipefail
out=${1:-/tmp/bebr_upgrade}
arg=${2:-}
for split in extended_data extended_class open_data open_class; do
  bebrjax train --workdir "$out/$split" \
    --config "configs/upgrade/compare.py:split=$split${arg:+,$arg}"
done
