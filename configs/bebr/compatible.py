r"""Compatible binary codes: a new binarizer whose codes search the old one's, and psi.

    python -m bebrjax.main --workdir DIR --config configs/bebr/compatible.py:\
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

The recipe: old and independent are the plain binarizer; new is the same
model trained with AdamW for 30 epochs on its pair loss plus
compat.weight x the cross-version pair loss against the frozen old codes
(`compat.directions`: new->old and old->new); psi is a ridge regression
from decoded old codes to the new codes, requantized (`psi.alpha`).
"""

from bebrjax.config import parse_arg
from bebrjax.trainers.compatible import default_config


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
    c = default_config(
        bits=arg.bits,
        old_bits=arg.old_bits,
        code_dim=arg.m,
        old_code_dim=arg.old_m,
        steps=arg.steps,
    )
    c.mesh.num_devices = arg.devices
    c.old_workdir = arg.old_workdir
    if arg.path:
        new = dict(name="npz", path=arg.path, query_key=arg.query_key, doc_key=arg.doc_key)
        old = dict(new, path=arg.old_path or arg.path, query_key=arg.old_query_key)
        old["doc_key"] = arg.old_doc_key
        c.data = dict(new=dict(new, labels_key="labels"), old=dict(old, labels_key="labels"))
    else:
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
    return c
