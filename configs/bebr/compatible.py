r"""Compatible binary codes: a new binarizer whose codes search the old one's, and psi.

    bebrjax train --workdir DIR --config configs/bebr/compatible.py:\
path=pairs.npz,old_query_key=query_old,old_doc_key=doc_old,query_key=query_new,doc_key=doc_new

`path` holds the new model's embeddings `query_key`/`doc_key` [N, d_new] of N
pairs and (or `old_path` does) the old model's `old_query_key`/`old_doc_key`
[N, d_old] of the same pairs, row for row. Without `path` the synthetic
pairs seen by two synthetic "models" are used (the quick demo).

Arguments after ':':
  path, old_path: the files (old_path defaults to path).
  query_key, doc_key, old_query_key, old_doc_key: array names.
  bits, old_bits: bits per dimension of the new and old codes (old_bits 0 =
    bits).
  m, old_m: code widths (0 = the embedding width).
  steps: training steps of every stage (0 = each stage's epochs).
  devices: devices of the mesh (0 = all).
  old_workdir: an existing binarizer run on the same old pairs to reuse
    (default: train one in <workdir>/old).

The recipe: 20000 synthetic pairs (or the file's), 20% held out, split alike
for both versions. Stages old and independent are the plain binarizer of
configs/bebr/npz.py (SGD at lr 0.002 for 10 epochs, batches of 512); new is
the same model trained with AdamW at lr 1e-3 (cosine decay, weight decay
1e-4) for 30 epochs on its pair loss, with a heavier similarity
distillation (weight 5), plus compat.weight x the cross-version pair loss
against the frozen old codes (`compat.directions`: new->old and old->new);
psi is a ridge regression from decoded old codes to the new codes,
requantized (`psi.alpha`). Evaluated at Recall@1/5/10: the compatibility
matrices, version-aware search and 11-point backfill curves.
"""

import ml_collections

from bebrjax.config import in_range, parse_arg


def binarizer_recipe(bits: int, m: int, steps: int) -> dict:
    """A stage's plain binarizer recipe: configs/bebr/npz.py's model, loss, optim and train."""
    return dict(
        model=dict(
            code_dim=m, loops=bits - 1, hidden=0, depth=1, binarize=True, skip=True, center=True
        ),
        loss=dict(
            pair_weight=1.0,
            temperature=0.05,
            hard_negatives=5,
            mask_same_label=False,
            mask_same_group=True,
            distill_weight=1.0,
            teacher_temperature=0.05,
            student_temperature=0.05,
            budgets=False,
            asymmetric=False,
        ),
        optim=dict(
            name="sgd",
            lr=0.002,
            momentum=0.9,
            nesterov=True,
            weight_decay=1e-3,
            clip_norm=5.0,
            schedule="step",
            decay_at=(0.6,),
            decay_factor=0.1,
            warmup_steps=0,
        ),
        train=dict(
            batch_size=512,
            epochs=10.0,
            steps=steps,
            log_every=20,
            checkpoint_every=200,
            keep_checkpoints=2,
        ),
    )


def get_config(arg=None):
    """The config of a compatible-codes run."""
    arg = parse_arg(
        arg,
        path="",
        old_path="",
        query_key="query_new",
        doc_key="doc_new",
        old_query_key="query_old",
        old_doc_key="doc_old",
        bits=2,
        old_bits=0,
        m=0,
        old_m=0,
        steps=0,
        devices=0,
        old_workdir="",
    )
    bits = in_range(arg, "bits", 1, 4, "u = bits - 1")
    old_bits = in_range(arg, "old_bits", 0, 4, "0: bits") or bits
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.trainer = "compatible"
    if arg.path:
        new = dict(name="npz", path=arg.path, query_key=arg.query_key, doc_key=arg.doc_key)
        old = dict(new, path=arg.old_path or arg.path, query_key=arg.old_query_key)
        old["doc_key"] = arg.old_doc_key
        c.data = dict(new=dict(new, labels_key="labels"), old=dict(old, labels_key="labels"))
    else:
        # The same latent pairs seen by two synthetic "models" (bebrjax/data/synthetic.py).
        synthetic = dict(
            name="synthetic",
            num_pairs=20000,
            dim=128,
            latent_dim=16,
            num_clusters=100,
            spread=0.6,
            seed=0,
        )
        c.data = dict(
            new=dict(synthetic, noise=1.2, encoder=0), old=dict(synthetic, noise=1.6, encoder=1)
        )
    c.split = dict(eval_fraction=0.2, eval_indices="")
    c.old = binarizer_recipe(old_bits, arg.old_m, arg.steps)
    c.independent = binarizer_recipe(bits, arg.m, arg.steps)
    # Measured on FOLDOC: under the binarizer's SGD recipe the cross-version loss
    # barely moves; AdamW at 1e-3 for 30 epochs aligns the versions.
    plain = binarizer_recipe(bits, arg.m, arg.steps)
    c.new = dict(
        model=plain["model"],
        # A heavier similarity distillation keeps new/new near the float ranking,
        # which the cross-version term pulls away (FOLDOC u=1 new/new: 0.483 at
        # weight 1, 0.515 at 3, 0.519 at 5).
        loss=dict(plain["loss"], distill_weight=5.0),
        # momentum, nesterov, decay_at and decay_factor are unread by adamw and cosine.
        optim=dict(plain["optim"], name="adamw", lr=1e-3, weight_decay=1e-4, schedule="cosine"),
        train=dict(plain["train"], epochs=30.0),
    )
    c.compat = dict(
        weight=1.0,
        directions=("new->old", "old->new"),
        temperature=0.05,
        hard_negatives=5,
        mixed_negatives=True,
    )
    c.psi = dict(alpha=0.01)
    c.backfill = dict(points=11)
    # Version-aware search (`bebrjax.search.plan`): calibrations fitted on a sample of the
    # training pairs; an old document is scored by the old query plus cross_weight x the
    # compatible new query. Measured on FOLDOC u = 1 (docs/compatible_codes.md): "negatives"
    # beat "margin" (AUC 0.444 against 0.417), weights 0.5-1 within 0.002.
    c.version_aware = dict(calibration="negatives", cross_weight=0.5, pairs=4000)
    c.eval = dict(ks=(1, 5, 10), batch_size=2048, kernel="auto")
    c.mesh = dict(num_devices=arg.devices)
    c.old_workdir = arg.old_workdir  # an existing binarizer run on the old pairs, reused
    c.independent_workdir = ""  # the same for the independent new binarizer
    return c
