"""The quantizer benchmark's report (`bebrjax.benchmarks.quantizers`): tables and the plot."""

from __future__ import annotations

from bebrjax import report

# Plot marker of each method family.
MARKERS = {
    "float": "*",
    "bebrjax symmetric": "o",
    "bebrjax asymmetric": "s",
    "faiss RaBitQ": "^",
    "faiss RaBitQ + rotation": "v",
    "faiss RaBitQFastScan": "D",
    "faiss sign Hamming": "x",
    "faiss int8 SQ": "P",
}


def recall_table(rows: list[dict]) -> str:
    """The recall rows as a markdown table."""
    head = ["method", "stored bits/dim", "query precision", "bytes/vector", "R@1", "R@10"]
    body = [
        [
            r["method"],
            f"{r['stored_bits']:g}",
            r["query"],
            f"{r['bytes']:g}",
            f"{r['R@1']:.3f}",
            f"{r['R@10']:.3f}",
        ]
        for r in rows
    ]
    return report.table(head, body)


def speed_table(rows: list[dict]) -> str:
    """The speed rows as a markdown table, q/s also relative to faiss's exact float search."""
    base = next((r["qps"] for r in rows if r["family"] == "float"), None)
    head = ["method", "query precision", "bytes/vector", "q/s", "ms / query", "q/s / float"]
    body = [
        [
            r["method"],
            r["query"],
            f"{r['bytes']:g}",
            f"{r['qps']:,.0f}",
            f"{1000 / r['qps']:.2f}",
            f"{r['qps'] / base:.2f}" if base else "-",
        ]
        for r in rows
    ]
    return report.table(head, body)


def plot(path: str, rows: list[dict], title: str) -> None:
    """Recall@10 against bytes per vector (log x), one marker per method family."""
    fig, ax = report._subplots(figsize=(10, 6))
    for family, marker in MARKERS.items():
        mine = [r for r in rows if r["family"] == family]
        if not mine:
            continue
        ax.scatter(
            [r["bytes"] for r in mine],
            [r["R@10"] for r in mine],
            marker=marker,
            s=60 if marker == "*" else 30,
            label=family,
            alpha=0.8,
        )
        if family.startswith("bebrjax"):
            for r in mine:
                ax.annotate(
                    r.get("label", r["query"]),
                    (r["bytes"], r["R@10"]),
                    textcoords="offset points",
                    xytext=(4, 2),
                    fontsize=6,
                )
    ax.set(xscale="log", xlabel="bytes per vector (log)", ylabel="Recall@10", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    report._save(fig, path)


def headlines(out: dict) -> list[str]:
    """The machine, the kernels and the speed target, one line each."""
    lines = [
        f"cpu {out['cpu']}; jax backend {out['backend']}; faiss {out['faiss_version']} "
        f"({out['threads']} threads)"
    ]
    speed = out.get("speed_setup")
    if speed:
        lines.append(
            f"speed: n {speed['n']:,} random unit vectors, d {speed['d']}, "
            f"{speed['queries']} queries, k {speed['k']}, best of {speed['repeats']}; "
            f"bebrjax kernels: u=0 {speed['kernels']['u0']}, u=1 {speed['kernels']['u1']}"
        )
    if out.get("ratio") is not None:
        lines.append(
            f"bebrjax u=0 + 4-bit queries / faiss RaBitQFastScan 1-bit: {out['ratio']:.2f}x "
            f"(target >= {out['target']}: {'met' if out['met'] else 'MISSED'})"
        )
    lines += out.get("notes", [])
    if out.get("plot"):
        lines.append(f"plot: {out['plot']}")
    lines.append(f"peak RSS {out['peak_rss_mib']:,.0f} MiB")
    return lines
