"""The IVF benchmark's report (`bebrjax.benchmarks.ivf`): tables, headlines and the plot."""

from __future__ import annotations

from bebrjax import report


def table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    head = ["family", "method", "setting", "R@10 exh", "R@10 true", "R@100 true"]
    head += ["q/s k=10", "q/s k=100", "build s", "bytes/doc"]
    formats = {"recall10_exhaustive": ".3f", "recall10_true": ".3f", "recall100_true": ".3f"}
    formats.update(qps10=",.0f", qps100=",.0f", build_s=".1f", bytes_per_doc="")
    body = [
        [r["family"], r["method"], "-" if r["knob"] == "-" else f"{r['knob']}={r['setting']}"]
        + ["-" if r[key] is None else format(r[key], f) for key, f in formats.items()]
        for r in rows
    ]
    return report.table(head, body)


def split_table(split: list[dict]) -> str:
    """`time_split`'s rows as a markdown table."""
    head = ["u = 0 at R@10 >= 0.95", "nprobe", "probe ms", "scan + rank ms", "whole ms"]
    body = [
        [r["method"], str(r["nprobe"])]
        + [f"{x:.1f}" for x in (r["probe_ms"], r["whole_ms"] - r["probe_ms"], r["whole_ms"])]
        for r in split
    ]
    return report.table(head, body) + "\n(milliseconds per 1000 queries, k = 10)"


def plot(path: str, rows: list[dict]) -> None:
    """Recall@10 (of exhaustive; of the true pair) against q/s at k = 10, one line per method."""
    fig, axes = report._subplots(1, 2, figsize=(13, 5))
    styles = {"u0": "o-", "u1": "s--", "float": "^:"}
    for family, method in dict.fromkeys((r["family"], r["method"]) for r in rows):
        mine = [r for r in rows if (r["family"], r["method"]) == (family, method)]
        for ax, key in zip(axes, ("recall10_exhaustive", "recall10_true"), strict=True):
            x, y = [r[key] for r in mine], [r["qps10"] for r in mine]
            ax.plot(x, y, styles[family], label=f"{family}: {method}")
    for ax, what in zip(axes, ("its family's exhaustive top 10", "the true pair"), strict=True):
        ax.set(yscale="log", xlabel=f"Recall@10 of {what}", ylabel="queries/s (k = 10)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    report._save(fig, path)


def headlines(out: dict) -> list[str]:
    """Per method, its smallest setting reaching Recall@10 of exhaustive >= 0.95; the ratios."""
    lines = [
        f"{out['cpu']}, {out['backend']}, faiss {out['faiss_version']} ({out['threads']} threads);"
        f" n = {out['n']:,}, {out['queries']} queries, d = m = {out['dim']}, nlist {out['nlist']}"
    ]
    for key, setting in out["settings_at_0.95"].items():
        lines.append(f"  {key}: " + ("never reaches" if setting is None else f"setting {setting}"))
    for key in ("ivf_speedup_at_0.95", "ivf_vs_faiss_ivf_at_0.95", "u1_ivf_speedup_at_0.95"):
        value = out[key]
        lines.append(f"{key}: " + ("n/a (0.95 not reached)" if value is None else f"{value:.2f}x"))
    lines.append(f"plot: {out['plot']}; peak RSS {out['peak_rss_mib']:,.0f} MiB")
    return lines
