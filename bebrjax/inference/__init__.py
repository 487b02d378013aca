"""What a run trained, loaded back: `load(workdir)` gives plain numpy-in, numpy-out objects.

    from bebrjax.inference import load

    model = load("/tmp/bebr_demo")      # a binarizer run
    planes = model.encode(x)            # int8 [N, u+1, m] bit planes of +-1
    vectors = model.vectors(x)          # float32 [N, m], the recurrent codes b

    upgrade = load("/tmp/upgrade_bict")  # an upgrade run
    gallery = upgrade.old(x_gallery)    # phi_old embeddings
    queries = upgrade.new(x_queries)    # phi_new embeddings
    upgraded = upgrade.upgrade(gallery) # psi(stored old embeddings) (dmu, bict)

Which trainers load (`LOADERS`, looked up by config.json's `trainer`):
  * `binarizer`: one part, "binarizer".
  * `upgrade`: parts "old", "new" and, for dmu and bict, "psi".
  * `upgrade_compare`: a `Runs` of every method's `upgrade` run by name;
  * `sequential`: a `Runs` of every upgrade of the sequence,
    "<method>/step<t>", whose old part is the previous step's new model;
  * `compatible`: `Versions`: the binarizer runs "old", "new" and
    "independent" and "psi" (stored old codes -> new codes, no raw data).
A trainer without a loader is a `LoadError` naming it.

A run is loadable once it has finished (its results.json is written); the
latest checkpoint of each stage is restored. `step=` loads an earlier kept
checkpoint instead, finished or not. Checkpoints restore onto the devices
present now, whatever mesh wrote them (`checkpoint.restore_any`).

Input handling is the training data's: a binarizer was trained on
L2-normalized float32 embeddings (the loaders normalize every row), so its
encoder casts to float32 and divides each row by its norm first, inside
the compiled function (the exported bundle carries the same step). Upgrade
models take the labelled data's `x` as it is stored (float32 features, or
uint8 images that the backbone scales), and psi the stored old embeddings.
The normalization is the same operation as the loaders' numpy division; run
inside XLA it can differ from numpy's in the last bit of a float, which
flipped one code in 200,000 rows in a measurement (docs/serving.md).

What is made with a finished run, each a function of plain arguments (for
a notebook) behind a `bebrjax` command (`bebrjax.commands`), lives in its
own module of this package, imported by name:
  * `corpus.encode_corpus`: a corpus into a `BinaryIndex`, or a backfill step;
  * `query.search_index`, `query.search_versions`: queries encoded and searched;
  * `export.export_bundle`: a serving bundle (`bebrjax.serving` serves it);
  * `heldout.held_out`: a binarizer run's held-out pairs;
  * `gallery.upgrade_gallery`: stored old codes to the new version by psi;
  * `describe.describe`: what a workdir, index, bundle or scoring plan holds.
"""

from bebrjax.errors import LoadError
from bebrjax.inference.loaders import LOADERS, load
from bebrjax.trainers.parts import (
    Binarizer,
    Encoder,
    Loaded,
    Runs,
    Upgrade,
    Versions,
    l2_normalize_rows,
)
from bebrjax.trainers.runs import read_config

__all__ = [
    "LOADERS",
    "Binarizer",
    "Encoder",
    "LoadError",
    "Loaded",
    "Runs",
    "Upgrade",
    "Versions",
    "l2_normalize_rows",
    "load",
    "read_config",
]
