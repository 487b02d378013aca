r"""BEBR under the authors' own recipe, to set beside the defaults.

    bebrjax train --workdir DIR --config configs/bebr/reference.py:\
path=foldoc_minilm.npz,query_key=query_new,doc_key=doc_new

(foldoc_minilm.npz: the FOLDOC pairs, built by launch/make_foldoc.sh; docs/foldoc.md.)

The recipe of the paper's public code (its configs bebr.yaml and hash.yaml),
where it differs from ours (configs/bebr/npz.py):
  * blocks: no skip path (random xavier-normal blocks), one
    Linear-BN-ReLU layer 2048 wide before each block's last Linear;
  * loss: the pair loss alone (no similarity distillation); pairs of one
    item (`groups`) are no negatives of each other, as the authors mask the
    other captions of an image;
  * optimizer: SGD at lr 0.08 (Nesterov 0.9, weight decay 1e-3 on weight
    matrices, clip 5, x0.1 after epoch 6 of 10), batches of 2048 pairs;
  * the trained hash baseline: a sign MLP of three Linear-BN-ReLU layers
    1536 wide to m(u+1) bits in one plane, trained with the same loss and
    optimizer;
  * queries served as codes (symmetric SDC), as in the paper.
The rest is as there: 20% of the pairs held out, Recall@1/5/10 beside the
same-bits random hash.

Without `path`, synthetic pairs in items of 5 (one query, five docs, as an
MS-COCO image has five captions) exercise the item masks and multi-positive
Recall@k.

Arguments after ':' (as in configs/bebr/npz.py):
  path: the embeddings file (.npz or a directory of <key>.npy); its optional
    `groups` array names the item of each pair.
  bits: bits per dimension, u + 1 (default 2).
  m: code width (default 0 = d).
  steps: training steps (default 0 = 10 epochs).
  devices: devices of the mesh (default 0 = all).
  query_key, doc_key: array names (defaults 'query', 'doc').

It prints Recall@1/5/10 of the raw float embeddings, the binary codes, the
random-projection hash and the trained hash (the synthetic default: about 4
minutes on 2 CPU cores, most of it the trained hash's 3 x 1536 blocks).
FOLDOC figures beside the defaults': docs/binarizer.md ("Results") and
docs/reference_recipe.md.
"""

import ml_collections

from bebrjax.config import in_range, parse_arg


def get_config(arg=None):
    """The authors' recipe on a user's .npz, or on synthetic pairs in items of 5."""
    arg = parse_arg(arg, path="", bits=2, m=0, steps=0, devices=0, query_key="query", doc_key="doc")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.trainer = "binarizer"
    if arg.path:
        c.data = dict(
            name="npz",
            path=arg.path,
            query_key=arg.query_key,
            doc_key=arg.doc_key,
            labels_key="labels",
            groups_key="groups",
        )
    else:
        c.data = dict(
            name="synthetic",
            num_pairs=20000,
            dim=128,
            latent_dim=16,
            num_clusters=100,
            spread=0.6,
            noise=1.2,
            seed=0,
            siblings=5,
        )
    c.split = dict(eval_fraction=0.2, eval_indices="")
    c.model_name = "binarizer"
    c.model = dict(
        code_dim=arg.m,
        loops=in_range(arg, "bits", 1, 4, "u = bits - 1") - 1,
        hidden=2048,
        depth=1,
        binarize=True,
        skip=False,
        center=False,  # the authors threshold at 0
    )
    c.loss = dict(
        pair_weight=1.0,
        temperature=0.05,
        hard_negatives=5,
        mask_same_label=False,
        mask_same_group=True,
        distill_weight=0.0,
        teacher_temperature=0.05,
        student_temperature=0.05,
        budgets=False,
        asymmetric=False,
    )
    c.query_bits = 0  # queries as codes (symmetric SDC), as in the paper
    c.optim = dict(
        name="sgd",
        lr=0.08,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-3,
        clip_norm=5.0,
        schedule="step",
        decay_at=(0.6,),
        decay_factor=0.1,
        warmup_steps=0,
    )
    c.train = dict(
        batch_size=2048,
        epochs=10.0,
        steps=arg.steps,
        log_every=20,
        checkpoint_every=200,
        keep_checkpoints=2,
    )
    c.mesh = dict(num_devices=arg.devices)
    c.hash_model = dict(hidden=1536, depth=3)
    c.eval = dict(
        ks=(1, 5, 10),
        hash=True,
        trained_hash=True,
        float_baseline=False,
        batch_size=2048,
        kernel="auto",
    )
    return c
