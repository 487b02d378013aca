r"""BEBR on the embedded synthetic pairs: the quick demo.

    bebrjax train --config configs/bebr/demo.py --workdir /tmp/bebr_demo

Arguments after ':' (e.g. `configs/bebr/demo.py:bits=3,steps=500`):
  bits: stored bits per dimension, u + 1 (default 2, i.e. u = 1).
  query_bits: query precision served (default 4: the binarizer's pre-sign
    output at 4 bits per dimension; 0: queries as codes).
  m: code width (default 0 = the embedding width, 128).
  steps: training steps (default 0 = `train.epochs` epochs).
  devices: devices of the mesh (default 0 = all).

The recipe: 20000 synthetic pairs of 128-d embeddings, 20% held out; the
recurrent binarizer, its blocks one Linear-BN-ReLU layer beside a linear
skip path, each bit thresholded at its coordinate's mean; the pair loss
(temperature 0.05, the 5 hardest in-batch negatives) plus similarity
distillation; SGD at lr 0.002 (Nesterov 0.9, weight decay 1e-3 on weight
matrices, clip 5, x0.1 at 60%), batches of 512 pairs for 10 epochs;
Recall@1/5/10 beside a same-bits random hash.

It prints a table of Recall@1/5/10 for the raw float embeddings, the binary
codes (queries at 4 bits, and as codes) and a same-bits random hash, then
every stored budget; the binary codes, trained on the pairs, pass the raw
float Recall@10 at 14x compression (0.760 against 0.663).
"""

import ml_collections

from bebrjax.config import in_range, parse_arg


def get_config(arg=None):
    """The demo config."""
    arg = parse_arg(arg, bits=2, query_bits=4, m=0, steps=0, devices=0)
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.trainer = "binarizer"
    # 20000 pairs from 100 clusters of a 16-d latent space, seen in 128-d
    # (bebrjax/data/synthetic.py).
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
    c.split = dict(eval_fraction=0.2, eval_indices="")
    c.model_name = "binarizer"
    # code_dim 0: the embedding width. center: each bit thresholded at its coordinate's
    # mean (`models.binarizer.Center`). hidden 0: max(d, m).
    c.model = dict(
        code_dim=arg.m,
        loops=in_range(arg, "bits", 1, 4, "u = bits - 1") - 1,
        hidden=0,
        depth=1,
        binarize=True,
        skip=True,
        center=True,
    )
    c.loss = dict(
        pair_weight=1.0,
        temperature=0.05,
        hard_negatives=5,
        mask_same_label=False,
        mask_same_group=True,
        distill_weight=1.0,
        teacher_temperature=0.05,
        student_temperature=0.05,
        # Also score every stored budget u_d < u (one run serves each), or the asymmetric query
        # (`binarizer_step.served_pairs`); both off, by measurement (docs/quantizers.md).
        budgets=False,
        asymmetric=False,
    )
    # Queries served as block W's pre-sign output at B bits per dimension (0: as codes);
    # 4 by measurement (FOLDOC bits=1: R@10 0.549, 0.522 as codes; docs/quantizers.md).
    c.query_bits = arg.query_bits
    # The reference optimizer (SGD, Nesterov 0.9, weight decay 1e-3 off biases and
    # norms, clip 5, x0.1 at 60%) at a smaller lr: the skip path starts from a good
    # code, which the reference lr of 0.08 (tuned for random init) wrecks in the
    # first steps. With model.skip=False, use lr=0.08 as in the reference.
    c.optim = dict(
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
    )
    # steps 0: `epochs` epochs.
    c.train = dict(
        batch_size=512,
        epochs=10.0,
        steps=arg.steps,
        log_every=20,
        checkpoint_every=200,
        keep_checkpoints=2,
    )
    c.mesh = dict(num_devices=arg.devices)
    # The trained hash (eval.trained_hash): a sign MLP to m(u+1) bits in one plane,
    # these blocks (hidden 0: max(d, bits)), the rest of the recipe as above.
    c.hash_model = dict(hidden=0, depth=1)
    # kernel: SDC/Hamming scoring, "auto" (popcount on CPU, int8 matmul on GPU/TPU),
    # "popcount" or "matmul"; all give identical results.
    c.eval = dict(
        ks=(1, 5, 10),
        hash=True,
        trained_hash=False,
        float_baseline=False,
        batch_size=2048,
        kernel="auto",
    )
    return c
