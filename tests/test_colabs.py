"""The notebooks run as stored, and are stored without outputs."""

import json
import os

import pytest
from conftest import ROOT

NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(ROOT, "colabs")) if f.endswith(".ipynb"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_has_no_outputs(name, tmp_path, monkeypatch):
    with open(os.path.join(ROOT, "colabs", name)) as f:
        notebook = json.load(f)
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    namespace = {}
    for cell in code:
        exec(compile("".join(cell["source"]), f"{name}:{cell['id']}", "exec"), namespace)
