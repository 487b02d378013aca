"""psi for binary codes: a stored old code -> a new-version code, fitted by ridge.

A gallery of old-version codes can move to the new version without its raw
data or its float embeddings: psi maps each stored code, decoded to its
recurrent vector b_old = sum_i 2^-i s_i, to a prediction of the new
binarizer's vector b_new of the same item, and quantizes it back into
recurrent bit planes the way the recurrent binarizer builds them (each plane
the sign of what the planes before it leave, 0 -> +1):

    b = W b_old + c;   s_0 = sign(b);   s_i = sign(b - sum_{j<i} 2^-j s_j)

which picks, coordinate by coordinate, the nearest level of the code's
alphabet ({+-1.5, +-0.5} for u = 1).

W and c are fitted in closed form on the training pairs' docs, where both
the old code and the new code exist (ridge regression onto the new codes).
The choice is measured, not assumed (FOLDOC, u = 1, new -> psi(old codes)
R@10): regressing onto the new *codes* and quantizing reached 0.332, against
0.310 for regressing onto the new *embeddings* and encoding them with the
new binarizer (itself level with new -> old codes, 0.310), and a psi trained
contrastively put its outputs away from what the binarizer was trained on.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def decode_planes(planes: jax.Array) -> jax.Array:
    """int8 bit planes [N, u+1, m] -> the recurrent vectors b [N, m], float32 (exact)."""
    weights = 2.0 ** -jnp.arange(planes.shape[1], dtype=jnp.float32)
    return jnp.einsum("npm,p->nm", planes.astype(jnp.float32), weights)


def quantize(b: jax.Array, loops: int) -> jax.Array:
    """Recurrent bit planes int8 [N, loops+1, m] of vectors b [N, m]: s_i = sign(residual)."""
    planes, residual = [], b
    for i in range(loops + 1):
        sign = jnp.where(residual >= 0, 1.0, -1.0).astype(b.dtype)
        planes.append(sign)
        residual = residual - 2.0**-i * sign
    return jnp.stack(planes, axis=1).astype(jnp.int8)


class CodeAdapter(nn.Module):
    """psi: old bit planes [N, u_old+1, m_old] -> new bit planes [N, loops+1, code_dim]."""

    code_dim: int
    loops: int

    @nn.compact
    def __call__(self, planes: jax.Array) -> jax.Array:
        """Decodes the planes, applies the affine map and quantizes the result."""
        return quantize(nn.Dense(self.code_dim, name="linear")(decode_planes(planes)), self.loops)


_CHUNK = 8192  # rows per accumulated block of fit_ridge


def _moments(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Means of x [n, m] and y [n, d], then the centred X^T X and X^T Y, block by block.

    Each block of rows is converted to float64 on its own; only the means and
    the m x m, m x d sums are held, so any row container (float16 codes, rows
    read from disk) is read twice and never copied whole.
    """
    blocks = range(0, len(x), _CHUNK)

    def block(a, start):
        return np.asarray(a[start : start + _CHUNK], np.float64)

    x_mean = sum(block(x, s).sum(0) for s in blocks) / len(x)
    y_mean = sum(block(y, s).sum(0) for s in blocks) / len(x)
    scatter, cross = np.zeros((x.shape[1],) * 2), np.zeros((x.shape[1], y.shape[1]))
    for start in blocks:
        xc = block(x, start) - x_mean
        scatter += xc.T @ xc
        cross += xc.T @ (block(y, start) - y_mean)
    return x_mean, y_mean, scatter, cross


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> dict[str, np.ndarray]:
    """The affine least-squares map x -> y with a ridge penalty, in float64.

    The penalty is `alpha` times the mean variance of the centred inputs
    (so `alpha` does not depend on the number of rows or the code's scale):
    minimize ||(x - mean x) W - (y - mean y)||^2 + alpha * tr(C)/m * ||W||^2,
    C the centred inputs' scatter matrix; the bias puts the means on each other.
    The sums are accumulated in float64 over blocks of rows: the memory used
    beyond the inputs is a block's and the m x m, m x d sums, whatever n.

    Args:
      x: [n, m] inputs (decoded old codes), of any float dtype.
      y: [n, d] targets (decoded new codes).
      alpha: the relative ridge penalty, >= 0.

    Returns:
      {"kernel": [m, d], "bias": [d]} float32, the params of `nn.Dense`.
    """
    x_mean, y_mean, scatter, cross = _moments(x, y)
    penalty = alpha * np.trace(scatter) / len(scatter)
    kernel = np.linalg.solve(scatter + penalty * np.eye(len(scatter)), cross)
    bias = y_mean - x_mean @ kernel
    return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
