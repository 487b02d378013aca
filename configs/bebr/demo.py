r"""BEBR on the embedded synthetic pairs: the quick demo.

    python -m bebrjax.main --config configs/bebr/demo.py --workdir /tmp/bebr_demo

Arguments after ':' (e.g. `configs/bebr/demo.py:bits=3,steps=500`):
  bits: stored bits per dimension, u + 1 (default 2, i.e. u = 1).
  query_bits: query precision served (default 4: the binarizer's pre-sign
    output at 4 bits per dimension; 0: queries as codes).
  m: code width (default 0 = the embedding width, 128).
  steps: training steps (default 0 = `train.epochs` epochs).
  devices: devices of the mesh (default 0 = all).

It prints a table of Recall@1/5/10 for the raw float embeddings, the binary
codes (queries at 4 bits, and as codes) and a same-bits random hash, then
every stored budget; the binary codes, trained on the pairs, pass the raw
float Recall@10 at 14x compression (0.754 against 0.663).
"""

from bebrjax.config import parse_arg
from bebrjax.trainers.binarizer import default_config


def get_config(arg=None):
    """The demo config."""
    arg = parse_arg(arg, bits=2, query_bits=4, m=0, steps=0, devices=0)
    c = default_config(bits=arg.bits, code_dim=arg.m, steps=arg.steps, devices=arg.devices)
    c.query_bits = arg.query_bits
    c.data = dict(
        name="synthetic",
        num_pairs=20000,
        dim=128,
        latent_dim=16,
        num_clusters=100,
        spread=0.6,
        noise=1.2,
        seed=0,
    )
    return c
