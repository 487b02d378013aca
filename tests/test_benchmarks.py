"""The benchmarks' own logic, at no size: timing and reports (the runs themselves are manual)."""

import numpy as np

from bebrjax.benchmarks import ivf_report, search


def test_best_times_keeps_each_functions_fastest_run(monkeypatch):
    clock = iter(np.arange(0.0, 100.0, 1.0))
    monkeypatch.setattr(search.time, "sleep", lambda _: None)
    monkeypatch.setattr(search.time, "perf_counter", lambda: next(clock))
    durations = {"a": iter([5, 2, 7]), "b": iter([3, 4, 1])}

    def timed(name):
        def fn():
            for _ in range(next(durations[name]) - 1):
                next(clock)  # the function's run takes that many ticks

        return fn

    assert search.best_times({"a": timed("a"), "b": timed("b")}, repeats=3) == {"a": 2, "b": 1}


def test_ivf_table_formats_every_row():
    row = {
        "family": "bebrjax",
        "method": "ivf",
        "knob": "nprobe",
        "setting": 8,
        "recall10_exhaustive": 0.95123,
        "recall10_true": 0.5,
        "recall100_true": None,
        "qps10": 12345.6,
        "qps100": 99.4,
        "build_s": 1.26,
        "bytes_per_doc": 36,
    }
    lines = ivf_report.table([row, {**row, "knob": "-"}]).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| family | method | setting | R@10 exh")
    assert lines[2] == "| bebrjax | ivf | nprobe=8 | 0.951 | 0.500 | - | 12,346 | 99 | 1.3 | 36 |"
    assert lines[3].startswith("| bebrjax | ivf | - | 0.951")
