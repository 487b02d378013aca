"""Results as a markdown table and a picture."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHOD_NAMES = {
    "float": "float (raw embeddings, cosine)",
    "binary": "binary (recurrent codes)",
    "hash": "hash (random projection, same bits)",
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


def plot_run(
    path: str, metrics: Sequence[Mapping[str, Any]], retrieval: Mapping[str, Mapping[str, Any]]
) -> None:
    """Saves a PNG: the training loss curve beside Recall@k of each method."""
    fig, (ax_loss, ax_rec) = plt.subplots(1, 2, figsize=(11, 4))
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
