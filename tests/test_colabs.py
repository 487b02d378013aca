"""The notebooks run as stored, and are stored without outputs.

They run one after the other in one fresh interpreter on one CPU device, as
on a Colab CPU runtime (this session's 8 forced devices made the
quickstart's training 2.3x slower on 2 cores), each in a namespace of its
own, from the repository root.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(ROOT, "colabs")) if f.endswith(".ipynb"))

_RUN = """
import json, os, sys, traceback
outcome = {}
for name in sys.argv[2:]:
    with open(os.path.join("colabs", name)) as f:
        cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
    namespace = {}
    try:
        for cell in cells:
            source = compile("".join(cell["source"]), f"{name}:{cell['id']}", "exec")
            exec(source, namespace)
        outcome[name] = "ok"
    except BaseException:
        outcome[name] = traceback.format_exc()
with open(sys.argv[1], "w") as f:
    json.dump(outcome, f)
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """{notebook: "ok" or its traceback}, every notebook run once."""
    tmp = tmp_path_factory.mktemp("colabs")
    out = tmp / "outcomes.json"
    env = {**os.environ, "XLA_FLAGS": "", "TMPDIR": str(tmp)}
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(out), *NOTEBOOKS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_has_no_outputs(name, outcomes):
    with open(os.path.join(ROOT, "colabs", name)) as f:
        notebook = json.load(f)
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert outcomes[name] == "ok", outcomes[name]
