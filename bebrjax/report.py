"""Results as a markdown table and a picture."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from bebrjax import distributed


def _subplots(*args, figsize: tuple[float, float], **kwargs):
    """(figure, axes) of a new figure that belongs to no pyplot state.

    Figures are built with `matplotlib.figure.Figure` and saved directly, so
    importing this module never switches matplotlib's backend (a notebook's
    inline backend survives) and no figure is left open.
    """
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def _save(fig, path: str) -> None:
    """Writes a figure as a PNG (on process 0 of a multi-process run)."""
    if not distributed.is_primary():
        return
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table of `rows` under `head` (cells already formatted, or str()-ed)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# Why a metric can be undefined (NaN in memory, null in results.json, "n/a" in results.md).
UNDEFINED = {
    "update gain": "the paragon scores the same as old/old, so there is no gap to close",
    "TAR@FAR": "the held-out queries and gallery form no same-class or no other-class pair",
}


def number(value: float | None) -> str:
    """A metric to 3 decimals, or "n/a" when it is undefined (None or not finite)."""
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


def undefined_notes(values: Iterable[tuple[str, float | None]]) -> list[str]:
    """A line saying why, per kind of metric in `UNDEFINED` undefined among (name, value) pairs."""
    kinds = {
        kind
        for name, value in values
        for kind in UNDEFINED
        if name.startswith(kind) and number(value) == "n/a"
    }
    return [f"n/a: {kind} is undefined: {UNDEFINED[kind]}." for kind in sorted(kinds)]


METHOD_NAMES = {
    "float": "float (raw embeddings, cosine)",
    "binary": "binary (recurrent codes)",
    "binary_symmetric": "binary, queries as codes (symmetric)",
    "hash": "hash (random projection, same bits)",
    "trained_hash": "hash (sign MLP trained with the same loss, same bits)",
    "float_ft": "float fine-tuned (binarizer without sign)",
}


def retrieval_table(retrieval: Mapping[str, Mapping[str, Any]], reference: str = "float") -> str:
    """A markdown table of retrieval results, one row per method.

    The last column is each method's R@10 relative to `reference`'s.
    """
    ks = [key for key in next(iter(retrieval.values())) if key.startswith("R@")]
    ref = retrieval.get(reference, {}).get(ks[-1])
    head = ["method", "bits", "bytes/vector", "compression", *ks]
    if ref:
        head.append(f"{ks[-1]} / {reference}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in retrieval.items():
        cells = [
            METHOD_NAMES.get(name, name),
            str(row["bits"]),
            f"{row['bytes_per_vector']:g}",
            f"{row['compression']:.1f}x",
            *(f"{row[k]:.3f}" for k in ks),
        ]
        if ref:
            cells.append(f"{row[ks[-1]] / ref:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budgets_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of a run's stored budgets (`evaluators.retrieval.budgets`)."""
    ks = [key for key in rows[0] if key.startswith("R@")]
    head = ["stored bits/dim", "queries", "bytes/vector", *ks]
    body = [
        [
            row["stored_bits"],
            f"{row['query_bits']}-bit" if row["query_bits"] else "codes",
            f"{row['bytes_per_vector']:g}",
            *(f"{row[k]:.3f}" for k in ks),
        ]
        for row in rows
    ]
    return table(head, body)


def plot_run(
    path: str, metrics: Sequence[Mapping[str, Any]], retrieval: Mapping[str, Mapping[str, Any]]
) -> None:
    """Saves a PNG: the training loss curve beside Recall@k of each method."""
    fig, (ax_loss, ax_rec) = _subplots(1, 2, figsize=(11, 4))
    if metrics:
        ax_loss.plot([m["step"] for m in metrics], [m["loss"] for m in metrics])
    ax_loss.set(xlabel="step", ylabel="training loss", title="training")
    ks = [key for key in next(iter(retrieval.values())) if key.startswith("R@")]
    width = 0.8 / len(retrieval)
    for i, (name, row) in enumerate(retrieval.items()):
        xs = [j + i * width for j in range(len(ks))]
        ax_rec.bar(xs, [row[k] for k in ks], width, label=f"{name} ({row['bits']} bits)")
    ax_rec.set_xticks([j + 0.4 - width / 2 for j in range(len(ks))], ks)
    ax_rec.set(ylim=(0, 1), ylabel="recall", title="query -> doc retrieval")
    ax_rec.legend(fontsize=8)
    _save(fig, path)


MATRIX_ROWS = {
    "old/old": "old / old",
    "new/new": "new / new",
    "new->old": "new -> old (compatibility)",
    "old->new": "old -> new",
    "paragon": "paragon (independent new) / itself",
    "new->psi(old)": "new -> psi(old) (upgraded gallery)",
}


def matrix_table(results: Mapping[str, Any]) -> str:
    """The compatibility matrix as a markdown table, with gain and flips below."""
    matrix = results["matrix"]
    metrics = list(next(iter(matrix.values())))
    lines = [
        "| queries / gallery | " + " | ".join(metrics) + " |",
        "|" + "---|" * (len(metrics) + 1),
    ]
    values = [(m, cell[m]) for cell in matrix.values() for m in metrics]
    for key, label in MATRIX_ROWS.items():
        if key in matrix:
            cells = " | ".join(number(matrix[key][m]) for m in metrics)
            lines.append(f"| {label} | {cells} |")
    lines.append("")
    for cross, r in (("new->old", results), ("new->psi(old)", results.get("adapted"))):
        if r is not None:
            values.append(("update gain", r["update_gain"]))
            lines.append(
                f"{cross}: update gain {number(r['update_gain'])}; negative-flip rate "
                f"{r['negative_flip_rate']:.3f}; compatible ({cross} > old/old): {r['compatible']}"
            )
    return "\n".join(lines + undefined_notes(values))


def plot_matrix(path: str, results: Mapping[str, Any], metric: str = "mAP@R") -> None:
    """Saves a heatmap: queries of old/new models against galleries of old/new models.

    With an upgraded gallery a third column holds new -> psi(old).
    """
    matrix = results["matrix"]
    grid = [
        [matrix["old/old"][metric], matrix["old->new"][metric]],
        [matrix["new->old"][metric], matrix["new/new"][metric]],
    ]
    columns = ["old gallery", "new gallery"]
    if "new->psi(old)" in matrix:
        grid[0].append(float("nan"))
        grid[1].append(matrix["new->psi(old)"][metric])
        columns.append("psi(old) gallery")
    values = np.array(grid)
    fig, ax = _subplots(figsize=(2.2 + 1.3 * len(columns), 4))
    top = max(1e-6, np.nanmax(values), matrix["paragon"][metric])
    image = ax.imshow(np.ma.masked_invalid(values), vmin=0, vmax=top, cmap="viridis")
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            color = "k" if value > 0.6 * top else "w"
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", color=color)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks([0, 1], ["old queries", "new queries"])
    ax.set_title(f"{results.get('method', '')}: {metric} (paragon {matrix['paragon'][metric]:.3f})")
    fig.colorbar(image)
    _save(fig, path)


def comparison_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per method: mAP@R of every cell, new->old R@1, update gain, flips."""
    head = [
        "method",
        "old/old",
        "new/new",
        "new->old",
        "new->psi(old)",
        "paragon",
        "new->old R@1",
        "update gain",
        "negative flips",
        "compatible",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, r in runs.items():
        m = r["matrix"]
        cells = [
            method,
            *(f"{m[k]['mAP@R']:.3f}" for k in ("old/old", "new/new", "new->old")),
            f"{m['new->psi(old)']['mAP@R']:.3f}" if "new->psi(old)" in m else "-",
            f"{m['paragon']['mAP@R']:.3f}",
            f"{m['new->old']['R@1']:.3f}",
            number(r["update_gain"]),
            f"{r['negative_flip_rate']:.3f}",
            "yes" if r["compatible"] else "no",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    gains = [("update gain", r["update_gain"]) for r in runs.values()]
    return "\n".join(lines + undefined_notes(gains))


def plot_comparison(path: str, runs: Mapping[str, Mapping[str, Any]], title: str) -> None:
    """Saves grouped bars of new->old and new/new mAP@R per method, with old/old and paragon."""
    methods = list(runs)
    fig, ax = _subplots(figsize=(max(6, 1.3 * len(methods)), 4))
    xs = range(len(methods))
    bars = (
        (-0.27, "new->old", "new -> old"),
        (0.0, "new->psi(old)", "new -> psi(old)"),
        (0.27, "new/new", "new / new"),
    )
    for offset, key, label in bars:
        ax.bar(
            [x + offset for x in xs],
            [runs[m]["matrix"].get(key, {}).get("mAP@R", float("nan")) for m in methods],
            0.27,
            label=label,
        )
    first = runs[methods[0]]["matrix"]
    ax.axhline(first["old/old"]["mAP@R"], color="k", linestyle="--", label="old / old")
    ax.axhline(first["paragon"]["mAP@R"], color="gray", linestyle=":", label="paragon")
    ax.set_xticks(list(xs), methods)
    ax.set(ylabel="mAP@R", ylim=(0, 1), title=f"compatible upgrades, {title}")
    ax.legend(fontsize=8)
    _save(fig, path)


SEQUENCE_COLUMNS = {
    "new/new": "new / new",
    "new->phi1": "new -> phi1 gallery",
    "new->stored": "new -> stored gallery",
}


def sequence_table(results: Mapping[str, Any], metric: str = "mAP@R") -> str:
    """One row per method and step of a sequence: the stored gallery and each search."""
    head = ["method", "step", "stored gallery", *SEQUENCE_COLUMNS.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, rows in results["methods"].items():
        for row in rows:
            cells = [method, str(row["step"]), row["gallery"]]
            cells += [f"{row[key][metric]:.3f}" for key in SEQUENCE_COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sequence(path: str, results: Mapping[str, Any], metric: str = "mAP@R") -> None:
    """Saves one panel per search (new/new, new->phi1, new->stored): a line per method."""
    fig, axes = _subplots(1, 3, figsize=(13, 4), sharey=True)
    for ax, (key, title) in zip(axes, SEQUENCE_COLUMNS.items(), strict=True):
        for method, rows in results["methods"].items():
            ax.plot(
                [r["step"] for r in rows], [r[key][metric] for r in rows], marker="o", label=method
            )
        ax.set(title=title, xlabel="step", xticks=range(1, results["steps"] + 1))
    axes[0].set(ylabel=metric, ylim=(0, 1))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"sequential upgrades: phi1 -> ... -> phi{results['steps']}")
    _save(fig, path)


VERSION_CELLS = {
    "old/old": "old / old",
    "new/new": "new / new",
    "new->old": "new -> old (compatibility)",
    "old->new": "old -> new",
    "new->psi(old)": "new -> psi(old codes) (upgraded gallery)",
    "paragon": "independent new / itself",
    "new+old->old": "old + new queries -> old (version-aware, fused)",
}
CURVE_NAMES = {
    "random": "compatible, random order",
    "worst_first": "compatible, worst first",
    "psi": "psi(old codes), then random",
    "independent": "independent new model",
    "keep_old": "keep old until f = 1",
    "version_aware": "version-aware (compatible re-encode), random",
    "version_aware_worst_first": "version-aware (compatible re-encode), worst first",
    "version_aware_independent": "version-aware (independent re-encode), random",
    "version_aware_independent_worst_first": "version-aware (independent re-encode), worst first",
}


def versions_report(results: Mapping[str, Any]) -> str:
    """The compatible-codes run as markdown: the matrix (binary beside float) and backfill."""
    compat, backfill = results["compatibility"], results["backfill"]
    ks = list(next(iter(compat["binary"].values())))
    rows = [
        [
            label,
            *(
                f"{compat[kind][cell][k]:.3f}" if cell in compat[kind] else "-"
                for kind in ("binary", "float")
                for k in ks
            ),
        ]
        for cell, label in VERSION_CELLS.items()
        if cell in compat["binary"]
    ]
    head = ["queries -> gallery", *(f"{kind} {k}" for kind in ("binary", "float") for k in ks)]
    lines, gains = [table(head, rows), ""], []
    for kind in ("binary", "float"):
        criteria = compat["criteria"][kind]
        for cross, c in (("new->old", criteria), ("new->psi(old)", criteria["psi"])):
            gains.append(("update gain", c["update_gain"]))
            lines.append(
                f"{kind} {cross}: update gain {number(c['update_gain'])}; negative-flip rate "
                f"{c['negative_flip_rate']:.3f}; above old/old: {c['compatible']}"
            )
    lines += undefined_notes(gains)
    fractions = backfill["fractions"]
    curve_rows = [
        [CURVE_NAMES.get(name, name), *(f"{v:.3f}" for v in values), f"{backfill['auc'][name]:.3f}"]
        for name, values in backfill["curves"].items()
    ]
    lines += ["", table(["backfilled f", *(f"{f:g}" for f in fractions), "AUC"], curve_rows)]
    if "best" in backfill:
        best = backfill["best"]
        lines += ["", f"best policy by AUC: {CURVE_NAMES.get(best, best)} ({best})"]
    return "\n".join(lines)


def plot_backfill(path: str, backfill: Mapping[str, Any]) -> None:
    """Saves a PNG: Recall@k against the fraction of the gallery backfilled, per strategy."""
    fig, ax = _subplots(figsize=(7, 4.5))
    fractions = backfill["fractions"]
    for name, values in backfill["curves"].items():
        style = "--" if name in ("keep_old", "independent") else "-"
        if name.startswith("version_aware"):
            style = ":" if name.endswith("worst_first") else "-."
        label = f"{CURVE_NAMES.get(name, name)} (AUC {backfill['auc'][name]:.3f})"
        ax.plot(fractions, values, style, marker="o", markersize=3, label=label)
    psi = backfill["curves"].get("psi")
    if psi:
        ax.plot([0], [psi[0]], "k*", markersize=12, label="new -> psi(old codes), no re-encoding")
    ax.set(
        xlabel="fraction of the gallery re-encoded by the new model",
        ylabel=f"Recall@{backfill['k']}",
    )
    ax.set_title("backfilling a binary index")
    ax.legend(fontsize=8)
    _save(fig, path)
