r"""The recipe every upgrade config shares: data, split, models, losses, optimizer, evals.

A method's config file (bct.py, dmu.py, ...) is this recipe with its
`method`; the comparison, the sweep and the sequence start from it too.
Loaded beside them with `bebrjax.config.config_module(__file__, "common")`.

The recipe: 100 synthetic classes of 60 items (64 features); 20% of every
class held out as the gallery and queries, the rest split by `split.kind`
with 30% for the old model; old an MLP 128 wide to 32-d embeddings, new
one 512 x 512 wide to 64-d, both with cosine classifiers at s = 16;
compat.weight 1 x the method's compatibility loss (`compat`, `dmu`,
`forward` for psi); AdamW at lr 2e-3 with cosine decay, weight decay 1e-4,
clip 5, batches of 256 for 30 epochs per stage; mAP@R, Recall@1/5/10 and
TAR at FAR 1e-2 and 1e-3.

Arguments after ':' of every upgrade config (e.g. `split=open_class,steps=300`):
  split: extended_data, extended_class (default), open_data or open_class.
  data: classes (the synthetic default), digits (scikit-learn's 8x8 images,
    with small ResNets) or labelled (your .npz of `x` [N, d] or uint8
    [N, H, W, C] and int `y` [N]).
  path: the .npz file, with data=labelled.
  backbone: "mlp" or "resnet" (for images); default: the data set's own.
  steps: training steps of every stage (default 0 = `train.epochs` epochs).
  devices: devices of the mesh (default 0 = all).
"""

import ml_collections

from bebrjax.config import parse_arg
from bebrjax.errors import ConfigError

ARGS = dict(split="extended_class", data="classes", path="", backbone="", steps=0, devices=0)


def recipe(method: str, split: str, steps: int, devices: int) -> ml_collections.ConfigDict:
    """The upgrade recipe on the synthetic many-class data.

    Where the papers leave room the choices are ours: adamw, lr 2e-3,
    cosine decay, weight decay 1e-4, clip 5, batch 256, 30 epochs per
    stage, cosine classifiers with s = 16.

    Args:
      method: the compatibility method (`bebrjax.trainers.upgrade.methods.METHODS`).
      split: the split's kind.
      steps: training steps of every stage; 0 means `train.epochs` epochs.
      devices: devices of the mesh; 0 means all.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.trainer = "upgrade"
    c.method = method
    # 100 synthetic classes, 60 items each, 64 features (bebrjax/data/classes.py).
    c.data = dict(
        name="classes",
        num_classes=100,
        per_class=60,
        dim=64,
        latent_dim=12,
        spread=0.35,
        freq=1.5,
        noise=0.3,
        seed=0,
    )
    # The universal split: 20% of every class held out, then old (30%) and new.
    c.split = dict(kind=split, old_ratio=0.3, eval_fraction=0.2)
    # Old: a small MLP, 32-d; new: a larger one, 64-d (fitted to 32 where they meet).
    model = dict(backbone="mlp", classifier="cosine", scale=16.0, margin=0.0, embedding_bn=True)
    c.old = dict(model=dict(model, backbone_args=dict(widths=(128,)), embedding_dim=32))
    c.new = dict(model=dict(model, backbone_args=dict(widths=(512, 512)), embedding_dim=64))
    # The compatibility term: compat.weight x the method's loss (bct/unibct influence,
    # contrastive/ract at temperature, UniBCT's prototype refinement every refresh_every).
    c.compat = dict(
        weight=1.0,
        temperature=0.01,
        hard_negatives=0,
        unibct_lambda=0.9,
        unibct_temperature=0.05,
        refresh_every=50,
    )
    # DMU: backward terms weighted by the old feature's discriminativeness; psi trained jointly.
    c.dmu = dict(measure="margin", loss="influence", forward_weight=1.0, forward_emphasis=0.5)
    # psi (DMU, BiCT): residual MLP blocks; forward loss = new-classifier influence + l2 x L2.
    c.forward = dict(hidden=0, depth=1, blocks=1, l2=1.0)
    # AdamW at lr 2e-3, cosine decay to 0, weight decay 1e-4 off biases and norms, clip 5
    # (momentum, nesterov, decay_at and decay_factor are unread by adamw and cosine).
    c.optim = dict(
        name="adamw",
        lr=2e-3,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
        clip_norm=5.0,
        schedule="cosine",
        decay_at=(0.6,),
        decay_factor=0.1,
        warmup_steps=0,
    )
    # Every stage (old, paragon, new): 30 epochs of 256 items (steps 0), or `steps` steps.
    c.train = dict(
        batch_size=256,
        epochs=30.0,
        steps=steps,
        log_every=20,
        checkpoint_every=200,
        keep_checkpoints=2,
    )
    c.mesh = dict(num_devices=devices)
    c.eval = dict(ks=(1, 5, 10), fars=(1e-2, 1e-3), batch_size=1024)
    # Directories of an old model or a paragon to reuse (default: <workdir>/old, /paragon).
    c.old_workdir = ""
    c.paragon_workdir = ""
    return c


def use_resnets(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Small CIFAR-style ResNets for image data: old (1, 1) x 8 wide, new (2, 2) x 16."""
    config.old.model.backbone = "resnet"
    config.old.model.backbone_args = ml_collections.ConfigDict(dict(stage_sizes=(1, 1), width=8))
    config.new.model.backbone = "resnet"
    config.new.model.backbone_args = ml_collections.ConfigDict(dict(stage_sizes=(2, 2), width=16))
    config.train.batch_size = 128
    return config


def use_data(
    config: ml_collections.ConfigDict, name: str, path: str = ""
) -> ml_collections.ConfigDict:
    """Switches the data set: "classes", "digits" (with small ResNets) or "labelled" (`path`)."""
    if name == "classes":
        return config
    if name == "labelled":
        config.data = dict(name="labelled", path=path, x_key="x", y_key="y")
        return config
    if name != "digits":
        raise ConfigError(
            f"config argument 'data' = {name!r}: expected 'classes', 'digits' or 'labelled'"
        )
    config.data = dict(name="digits")
    return use_resnets(config)


def config_for(method: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The recipe of `method` for a config file's `:arg` text (see the module docstring)."""
    parsed = parse_arg(arg, **ARGS)
    config = recipe(method, parsed.split, parsed.steps, parsed.devices)
    config = use_data(config, parsed.data, parsed.path)
    if parsed.backbone == "resnet":
        use_resnets(config)
    elif parsed.backbone not in ("", "mlp"):
        raise ConfigError(
            f"config argument 'backbone' = {parsed.backbone!r}: expected 'mlp' or 'resnet'"
        )
    return config
