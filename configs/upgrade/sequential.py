r"""Sequential upgrades phi1 -> phi2 -> phi3: BCT, DMU and BiCT side by side.

    bebrjax train --workdir DIR --config configs/upgrade/sequential.py
    bebrjax train --workdir DIR --config configs/upgrade/sequential.py:data=digits

Each step brings more classes (sequence.ratios: 30%, 60%, then all) and a
larger model of one family (sequence.backbone_args, sequence.embedding_dims:
MLPs to 32-, 48- and 64-d embeddings; small ResNets with data=digits). BCT
leaves the stored gallery as phi1 encoded it; DMU and BiCT upgrade it with
psi at every step. The rest of the recipe (data, split, losses, optimizer,
schedule, evals) is configs/upgrade/common.py's. Arguments after ':'
(e.g. `data=digits,steps=300`): data (classes, digits or labelled), path,
steps, devices.
"""

from bebrjax.config import config_module, parse_arg

common = config_module(__file__, "common")

MLP_STEPS = ({"widths": (128,)}, {"widths": (256, 256)}, {"widths": (512, 512)})
RESNET_STEPS = (
    {"stage_sizes": (1, 1), "width": 8},
    {"stage_sizes": (1, 1), "width": 16},
    {"stage_sizes": (2, 2), "width": 16},
)


def get_config(arg=None):
    """Three steps on the synthetic default: 30%, 60%, 100% of the classes, growing MLPs."""
    arg = parse_arg(arg, data="classes", path="", steps=0, devices=0)
    c = common.recipe("bct", "extended_class", arg.steps, arg.devices)
    c = common.use_data(c, arg.data, arg.path)
    with c.unlocked():
        for key in ("method", "old", "new", "old_workdir", "paragon_workdir"):
            del c[key]
    c.trainer = "sequential"
    c.methods = ("bct", "dmu", "bict")
    # One model family; step t has its own sizes (sequence.*), old = step t - 1.
    c.model = dict(backbone="mlp", classifier="cosine", scale=16.0, margin=0.0, embedding_bn=True)
    c.sequence = dict(ratios=(0.3, 0.6, 1.0), backbone_args=MLP_STEPS, embedding_dims=(32, 48, 64))
    if arg.data == "digits":
        c.model.backbone = "resnet"
        c.sequence.backbone_args = RESNET_STEPS
    return c
