"""A trained part as one portable function: `jax.export` with its variables baked in.

The function is the part's `forward` (input handling included) with the
trained variables as constants, serialized with a symbolic batch dimension,
so whoever runs it needs jax and numpy only and any batch size works. The
constants pass through `lax.optimization_barrier`, which keeps XLA from
folding them (e.g. the BatchNorm scale into its rsqrt) at compile time: the
function runs the very arithmetic the loaded part runs, and its outputs are
bit-identical. `bebrjax.inference.export` writes these functions into bundles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from bebrjax.errors import ConfigError, LoadError
from bebrjax.models.binarizer import query_planes
from bebrjax.trainers.parts import Binarizer, Encoder

PLATFORMS = ("cpu", "cuda", "tpu")
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def serialize(encoder: Encoder, platforms: Sequence[str] = PLATFORMS) -> tuple[bytes, list[str]]:
    """`encoder` as a `jax.export` blob with a symbolic batch dimension.

    Returns:
      (the serialized bytes, the platforms it was lowered for).

    Raises:
      ConfigError: on a platform name jax does not know.
      LoadError: when it cannot be lowered for any of `platforms`.
    """
    unknown = sorted(set(platforms) - set(KNOWN_PLATFORMS))
    if unknown or not platforms:
        raise ConfigError(
            f"platforms {', '.join(unknown) or '(none)'}: expected some of "
            f"{', '.join(KNOWN_PLATFORMS)}"
        )
    constants = jax.tree.map(np.asarray, encoder.variables)  # off the mesh: one device

    def function(x):
        return encoder.forward(jax.lax.optimization_barrier(constants), x)

    (batch,) = jax.export.symbolic_shape("N")
    spec = jax.ShapeDtypeStruct((batch, *encoder.input_shape), encoder.input_dtype)
    exported, error = _export(function, spec, tuple(platforms))
    if exported is None:  # keep the platforms that lower, one by one
        lowered = tuple(p for p in platforms if _export(function, spec, (p,))[0] is not None)
        if not lowered:
            raise LoadError(
                f"the encoder cannot be lowered for any of {', '.join(platforms)}: "
                f"{str(error).splitlines()[0]}"
            )
        exported, _ = _export(function, spec, lowered)
    return bytes(exported.serialize()), list(exported.platforms)


def _export(function, spec, platforms: tuple[str, ...]):
    """(the `jax.export.Exported`, None), or (None, the error that stopped the lowering)."""
    try:
        return jax.export.export(jax.jit(function), platforms=platforms)(spec), None
    except Exception as e:  # noqa: BLE001 - whatever stops a lowering leaves those platforms out
        return None, e


def query_encoder(model: Binarizer, bits: int) -> Encoder:
    """The binarizer's asymmetric query function: float rows -> `bits` query planes."""
    logits = model.parts["logits"]
    forward = logits.forward
    return dataclasses.replace(
        logits,
        name="query",
        kind="binarizer",
        forward=lambda v, x: query_planes(forward(v, x), bits),
    )
