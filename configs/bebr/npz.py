r"""BEBR on your own paired embeddings.

    python -m bebrjax.main --config configs/bebr/npz.py:path=pairs.npz,bits=2 --workdir DIR

`path` is an .npz file (or a directory of <key>.npy files) holding `query`
[N, d] and `doc` [N, d], row i of one pairing with row i of the other, and
optionally `labels` [N] and `groups` [N] (the item each pair shows, when
items repeat: e.g. 5 captions per image). Other key names:
`--config.data.query_key=...`, `--config.data.doc_key=...`,
`--config.data.labels_key=...`, `--config.data.groups_key=...` (empty:
ignore). 20% of the pairs (of the groups, with groups), drawn with the
seed, are held out for evaluation.

Arguments after ':':
  path: the embeddings file (required).
  bits: stored bits per dimension, u + 1 (default 2).
  query_bits: query precision served (default 4): each query is the
    binarizer's pre-sign output quantized to this many bits per dimension,
    searched exactly against the stored codes; 0 encodes queries as codes.
  m: code width (default 0 = d).
  steps: training steps (default 0 = `train.epochs` epochs).
  devices: devices of the mesh (default 0 = all).
  query_key, doc_key: array names (defaults 'query', 'doc').

The FOLDOC pairs of the README (launch/foldoc.sh runs 1, 2 and 3 bits):
  python -m bebrjax.main --workdir /tmp/bebr_foldoc --config \
    configs/bebr/npz.py:path=../shared/data/foldoc_minilm.npz,query_key=query_new,doc_key=doc_new
"""

from bebrjax.config import parse_arg
from bebrjax.trainers.binarizer import default_config


def get_config(arg=None):
    """The config for a user's .npz of paired embeddings."""
    arg = parse_arg(
        arg,
        path="",
        bits=2,
        query_bits=4,
        m=0,
        steps=0,
        devices=0,
        query_key="query",
        doc_key="doc",
    )
    c = default_config(bits=arg.bits, code_dim=arg.m, steps=arg.steps, devices=arg.devices)
    c.query_bits = arg.query_bits
    c.data = dict(
        name="npz",
        path=arg.path,
        query_key=arg.query_key,
        doc_key=arg.doc_key,
        labels_key="labels",
        groups_key="groups",
    )
    return c
