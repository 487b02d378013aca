"""Task-agnostic embedding-to-embedding distillation of in-batch similarities.

The float embeddings' own cosine similarities teach the codes'. For every row
i of a batch, the teacher distribution is softmax_j(cos(x_i, x_j) / tau_t)
over the other rows j != i, the student's is softmax_j(cos(z_i, z_j) / tau_s),
and the loss is KL(teacher || student), averaged over rows. It needs no pairs
and no labels, so it works on embeddings that come alone; on paired data the
batch holds both members of every pair, so query-doc and query-query
neighbourhoods are both taught.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bebrjax.losses.pair_contrastive import MASKED, cosine_logits


def similarity_distillation_loss(
    student: jax.Array,
    teacher: jax.Array,
    *,
    teacher_temperature: float = 0.05,
    student_temperature: float = 0.05,
) -> jax.Array:
    """KL divergence between the teacher's and the student's in-batch neighbours.

    Args:
      student: [n, m] codes (or any vectors) being trained.
      teacher: [n, d] float embeddings of the same rows; no gradient flows to them.
      teacher_temperature: tau_t; smaller focuses the teacher on near neighbours.
      student_temperature: tau_s of the student's logits.

    Returns:
      The scalar mean over rows of KL(teacher_i || student_i).
    """
    teacher = jax.lax.stop_gradient(teacher)
    self_mask = jnp.eye(student.shape[0], dtype=bool)
    t = jnp.where(self_mask, MASKED, cosine_logits(teacher, teacher, teacher_temperature))
    s = jnp.where(self_mask, MASKED, cosine_logits(student, student, student_temperature))
    log_p = jax.nn.log_softmax(t, axis=1)
    log_q = jax.nn.log_softmax(s, axis=1)
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=1)
    return jnp.mean(kl)
