"""The documentation's code runs: README.md's commands as written, and every ```python block.

README.md's `bebrjax` commands run as a user runs them, the quickstart at
its full size, and the tables it prints must be the ones README.md and
docs/binarizer.md quote. Each file's python blocks (README.md and
docs/*.md) run in order in one namespace (a later block may use an earlier
one's names, as a reader would), in a temporary directory holding the
files they name: `/tmp/bebr_demo` is the quickstart's run, the other runs
a block loads are the session's tiny ones, and `SUBSTITUTE` maps a file's
full-size figures to their sizes. A block that cannot run here is preceded
in the markdown by `<!-- docs-test: skip (reason) -->`; `SKIPPED` lists
them all, so a new one fails until it is listed.

Every `bebrjax ...` line of a ```bash block names a subcommand and only
flags that the subcommand's parser knows.
"""

import contextlib
import glob
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from bebrjax import inference
from bebrjax.commands import COMMANDS
from bebrjax.commands import main as bebrjax_main

DOCS = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(f"{ROOT}/docs/*.md"))]
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
_SKIP = re.compile(r"<!-- docs-test: skip \((.+?)\) -->\s*$")

# (file, first line of the block): why it cannot run here.
SKIPPED: dict[tuple[str, str], str] = {}


def blocks(path: str, language: str) -> list[tuple[int, str, str | None]]:
    """(line, source, skip reason or None) of every ```language block of `path`."""
    with open(os.path.join(ROOT, path)) as f:
        text = f.read()
    found = []
    for match in _FENCE.finditer(text):
        if match.group(1) != language:
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = _SKIP.search(before)
        found.append((text[: match.start()].count("\n") + 1, match.group(2), skip and skip[1]))
    return found


def test_every_skip_is_listed():
    marked = {
        (path, source.splitlines()[0]): reason
        for path in DOCS
        for language in ("python", "bash")
        for _, source, reason in blocks(path, language)
        if reason
    }
    assert marked == SKIPPED


@pytest.fixture(scope="module")
def readme_runs(tmp_path_factory):
    """(directory, results.json of each run): README.md's `bebrjax` commands, run as written.

    Each runs in a fresh process on one CPU device, from a directory laid
    out like the clone (its `configs/`), with `pairs.npz` a small file of
    paired embeddings and `/tmp/bebr_demo` inside the directory: the
    quickstart at its full size (the README's python blocks load it), and
    the npz recipe on those pairs.
    """
    here = tmp_path_factory.mktemp("readme")
    os.symlink(os.path.join(ROOT, "configs"), here / "configs")
    rng = np.random.default_rng(0)
    query = rng.standard_normal((1000, 16)).astype(np.float32)
    np.savez(here / "pairs.npz", query=query, doc=query + 0.5 * rng.standard_normal((1000, 16)))
    lines = [words for _, source, _ in blocks("README.md", "bash") for words in commands(source)]
    assert [words[0] for words in lines] == ["train", "train"]
    results = []
    for words in lines:
        words = [w.replace("/tmp/bebr_demo", str(here / "bebr_demo")) for w in words]
        proc = subprocess.run(
            [sys.executable, "-m", "bebrjax", *words],
            cwd=here,
            capture_output=True,
            text=True,
            env={**os.environ, "XLA_FLAGS": ""},
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        with open(here / words[words.index("--workdir") + 1] / "results.json") as f:
            results.append(json.load(f))
    return here, results


def _search_files(run: str, here: str) -> dict:
    """docs.bebr (the run's held-out docs), their floats and the queries search.md uses."""
    from bebrjax.inference.corpus import encode_corpus
    from bebrjax.inference.heldout import held_out

    pairs = held_out(run)
    np.save(os.path.join(here, "docs.npy"), pairs.doc)
    encode_corpus(run, os.path.join(here, "docs.npy"), os.path.join(here, "docs.bebr"), key=None)
    np.save(os.path.join(here, "docs_float.npy"), pairs.doc)
    m = inference.load(run).code_dim
    rng = np.random.default_rng(0)
    return {
        "query_floats": pairs.query[:8],
        "query_floats_m": rng.standard_normal((8, m)).astype(np.float32),
    }


def _versions_files(compatible: str, here: str) -> dict:
    """gallery.bebr (old codes, half re-encoded as new), plan.json and the B_plan bundle."""
    from bebrjax.inference.export import export_bundle
    from bebrjax.inference.heldout import held_out
    from bebrjax.search import BinaryIndex

    old_run, new_run = inference.load(f"{compatible}/old"), inference.load(f"{compatible}/new")
    old_pairs, new_pairs = held_out(f"{compatible}/old"), held_out(f"{compatible}/new")
    index = BinaryIndex(old_run.code_dim, old_run.loops, version="old")
    index.add(old_run.encode(old_pairs.doc))
    half = np.arange(0, index.ntotal, 2)
    index.replace(half, new_run.encode(new_pairs.doc[half]), "new")
    index.save(os.path.join(here, "gallery.bebr"))
    shutil.copy(f"{compatible}/plans/version_aware.json", os.path.join(here, "plan.json"))
    export_bundle(None, os.path.join(here, "B_plan"), plan="plan.json", index="gallery.bebr")
    return {
        "old_q": old_pairs.query,
        "new_q": new_pairs.query,
        "old_queries": old_pairs.query,
        "new_queries": new_pairs.query,
    }


def _serving_files(run: str, compare: str, here: str) -> dict:
    from bebrjax.inference.export import export_bundle

    names = _search_files(run, here)
    export_bundle(run, os.path.join(here, "bundle"), index="docs.bebr")
    shutil.copytree(os.path.join(here, "bundle"), os.path.join(here, "B"))
    upgrade = inference.load(f"{compare}/bict")
    rng = np.random.default_rng(1)
    x_upgrade = rng.standard_normal((6, *upgrade.old.input_shape)).astype(np.float32)
    return {**names, "x_gallery": x_upgrade, "x_queries": x_upgrade, "queries": None}


# Per file: absolute paths and full-size figures -> what the tiny fixtures hold.
SUBSTITUTE = {
    "docs/search.md": {"nlist=4096": "nlist=8", "nprobe=16": "nprobe=4"},
    "docs/serving.md": {
        'bundle = load_bundle("B")\nbundle.models': 'bundle = load_bundle("B_plan")\nbundle.models'
    },
}


@pytest.mark.slow  # trains a run, and reads the session's compare and compatible runs
@pytest.mark.parametrize("path", [p for p in DOCS if blocks(p, "python")])
def test_python_blocks_run(path, readme_runs, compare_run, compatible_run, tmp_path, monkeypatch):
    demo = str(readme_runs[0] / "bebr_demo")  # the quickstart's run
    here = str(tmp_path)
    monkeypatch.chdir(here)
    paths = {
        "/tmp/bebr_demo": demo,
        "/tmp/upgrade_compare": str(compare_run[0]),
        "/tmp/upgrade_bict": str(compare_run[0] / "bict"),
    }
    namespace = {}
    if path == "docs/search.md":
        namespace.update(_search_files(demo, here))
    if path == "docs/serving.md":
        namespace.update(_serving_files(demo, str(compare_run[0]), here))
        namespace.update(_versions_files(str(compatible_run[0]), here))
    if path == "docs/compatible_codes.md":
        namespace.update(_versions_files(str(compatible_run[0]), here))
    ran = 0
    for line, source, skip in blocks(path, "python"):
        if skip:
            continue
        for old, new in {**paths, **SUBSTITUTE.get(path, {})}.items():
            source = source.replace(old, new)
        if path == "docs/serving.md" and "bundle.search(queries" in source:
            namespace["queries"] = namespace["x"]
        exec(compile(source, f"{path}:{line}", "exec"), namespace)
        ran += 1
    assert ran


def commands(source: str) -> list[list[str]]:
    """The `bebrjax ...` command lines of a bash block, continuations joined, as words."""
    joined = re.sub(r"\\\n\s*", " ", source)
    found = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|()<>"):  # an operator or redirection ends a command
                while words and re.fullmatch(r"\w+=\S*", words[0]):  # VAR=value before it
                    words = words[1:]
                at = words.index("bebrjax") if "bebrjax" in words else -1
                # bebrjax, python -m bebrjax, exec bebrjax, srun [options] python -m bebrjax
                if at == 0 or (at > 0 and words[0] in ("python", "exec", "srun")):
                    found.append(words[at + 1 :])
                words = []
            else:
                words.append(token)
    return found


def _help(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        bebrjax_main([command, "--help"])
    assert done.value.code == 0
    return out.getvalue()


_HELPS: dict[str, str] = {}


def check_command(words: list[str], where: str) -> None:
    """`bebrjax WORDS` names a subcommand, and only flags its parser knows (or --config.*)."""
    if not words or words[0].startswith("-"):
        return  # `bebrjax --help`
    assert words[0] in COMMANDS, where
    if words[0] not in _HELPS:
        _HELPS[words[0]] = _help(words[0])
    for flag in (w.split("=")[0] for w in words[1:] if w.startswith("--")):
        if not flag.startswith("--config."):  # a config override, not a flag
            assert re.search(rf"{re.escape(flag)}\b", _HELPS[words[0]]), where


def test_bash_blocks_name_real_commands_and_flags():
    checked = 0
    for path in DOCS:
        for line, source, skip in blocks(path, "bash"):
            if not skip:
                for words in commands(source):
                    check_command(words, f"{path}:{line}: bebrjax {' '.join(words)}")
                    checked += 1
    assert checked >= 10


def _tables(text: str) -> list[list[list[str]]]:
    """The cells of every markdown table in `text`, in order."""
    found = re.findall(r"^\|.*\|\n\|[-| ]+\|\n(?:\|.*\|\n?)+", text, re.M)
    return [
        [[c.strip() for c in row.strip("|").split("|")] for row in t.splitlines()] for t in found
    ]


def _tables_after(path: str, heading: str) -> list[list[list[str]]]:
    """The tables of `path` after its first `heading`."""
    with open(os.path.join(ROOT, path)) as f:
        return _tables(f.read().split(heading, 1)[1])


def _agree(quoted: list[list[str]], printed: list[list[str]], where: str) -> None:
    """Two tables' cells: words equal, figures within 0.01.

    A training run's figures differ between CPUs: the demo's trained rows
    differ by up to 0.005 between an AVX-512 Xeon and an AVX2 EPYC (XLA
    rounds its sums differently), while its float and hash rows agree.
    """
    assert len(quoted) == len(printed), where
    for a, b in zip(quoted, printed, strict=True):
        for x, y in zip(a, b, strict=True):
            if re.fullmatch(r"\d\.\d{3}", x):
                assert abs(float(x) - float(y)) <= 0.01, (where, a, b)
            else:
                assert x == y, (where, a, b)


@pytest.mark.slow  # the quickstart at its full size (under a minute) and the npz recipe, tiny
def test_readme_commands_run_as_written_and_give_the_quoted_tables(readme_runs):
    """The quickstart prints the tables that README.md and docs/binarizer.md quote."""
    from bebrjax.report import budgets_table, retrieval_table

    _, results = readme_runs
    for retrieval in (run["retrieval"] for run in results):
        assert retrieval["binary"]["R@10"] > retrieval["hash"]["R@10"]
    printed = [
        *_tables(retrieval_table(results[0]["retrieval"])),
        *_tables(budgets_table(results[0]["budgets"])),
    ]
    readme = _tables_after("README.md", "## Binary codes: the recurrent binarizer")[0]
    _agree(readme, printed[0], "README.md")
    demo = _tables_after("docs/binarizer.md", "**Demo**")[:2]
    for quoted, table in zip(demo, printed, strict=True):
        _agree(quoted, table, "docs/binarizer.md")


def test_ci_runs_the_readme_test_command_verbatim():
    """.ci/run installs and tests exactly as the README tells a user to."""
    (line,) = [
        line
        for _, source, _ in blocks("README.md", "bash")
        for line in source.splitlines()
        if "pytest" in line
    ]
    assert "-c constraints.txt" in line
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert line in f.read().splitlines()
