r"""Sequential upgrades phi1 -> phi2 -> phi3: BCT, DMU and BiCT side by side.

    python -m bebrjax.main --workdir DIR --config configs/upgrade/sequential.py
    python -m bebrjax.main --workdir DIR --config configs/upgrade/sequential.py:data=digits

Each step brings more classes (sequence.ratios) and a larger model
(sequence.backbone_args, sequence.embedding_dims). BCT leaves the stored
gallery as phi1 encoded it; DMU and BiCT upgrade it with psi at every step.
Arguments after ':': see `bebrjax.trainers.sequential.config_from_arg`.
"""

from bebrjax.trainers.sequential import config_from_arg


def get_config(arg=None):
    """The config."""
    return config_from_arg(arg)
