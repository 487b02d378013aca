"""Every compatibility method on one split, against one old model and one paragon.

The contract of a trainer module: `train_and_evaluate(config, workdir)`.
Each method runs as the `upgrade` trainer in `workdir/<method>`, sharing
`workdir/old` and `workdir/paragon`, so the methods differ only in their
compatibility loss. The comparison (mAP@R of every cell of the matrix, the
new->old R@1, update gain and negative-flip rate) is written to
results.json, results.md and results.png.

A sweep (`sweep.key`, `sweep.grid`) runs every method once per value of
one config key, as `<method>@<key>=<value>` in `workdir/<method>@<value>`
(e.g. BiCT's lambda_bc: compat.weight).
"""

from __future__ import annotations

import copy
import os

import ml_collections

from bebrjax import report
from bebrjax import workdir as wd
from bebrjax.config import apply_overrides, to_dict
from bebrjax.errors import ConfigError
from bebrjax.trainers import upgrade
from bebrjax.trainers.upgrade.checks import preflight
from bebrjax.trainers.upgrade.stages import stage_record


def method_configs(config: ml_collections.ConfigDict, workdir: str):
    """{run name: (its `upgrade` config, its directory)}, checked before anything is written.

    Runs share `workdir/old` and `workdir/paragon` when those stages would be
    trained identically; a swept key that changes them (e.g. the seed or
    the data) gives each value its own `old@<value>` and `paragon@<value>`.

    Raises:
      ConfigError, DataError: for the first run whose config or data is unusable.
    """
    sweep = config.get("sweep") or ml_collections.ConfigDict(dict(key="", grid=()))
    if sweep.key and not sweep.grid:
        raise ConfigError(f"config key 'sweep.grid' is empty (sweeping {sweep.key!r})")
    out, shared = {}, None
    for method in config.methods:
        for value in sweep.grid if sweep.key else (None,):
            sub = copy.deepcopy(config)
            with sub.unlocked():
                del sub.methods
                if "sweep" in sub:
                    del sub.sweep
                sub.trainer = "upgrade"
                sub.method = method
            name, directory = method, method
            if value is not None:
                apply_overrides(sub, [f"{sweep.key}={value}"])
                name, directory = f"{method}@{sweep.key}={value}", f"{method}@{value}"
            records = [stage_record(sub, sub[s], "independent") for s in ("old", "new")]
            shared = shared or records
            suffix = "" if records == shared else f"@{value}"
            with sub.unlocked():
                sub.old_workdir = os.path.join(workdir, "old" + suffix)
                sub.paragon_workdir = os.path.join(workdir, "paragon" + suffix)
            preflight(sub)
            out[name] = (sub, os.path.join(workdir, directory))
    return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs every method of `config.methods` and writes the comparison."""
    if not config.methods:
        raise ConfigError("config key 'methods' is empty")
    subs = method_configs(config, workdir)
    wd.prepare(workdir, to_dict(config))
    runs = {name: upgrade.train_and_evaluate(sub, path) for name, (sub, path) in subs.items()}
    results = {"split": config.split.kind, "methods": runs}
    wd.write_json(os.path.join(workdir, "results.json"), results)
    wd.write_atomic(os.path.join(workdir, "results.md"), report.comparison_table(runs) + "\n")
    report.plot_comparison(os.path.join(workdir, "results.png"), runs, config.split.kind)
    return results
