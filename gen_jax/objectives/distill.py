"""Knowledge distillation (Hinton, Vinyals and Dean, 2015): a student matches a teacher's
next-token distribution, softened by a temperature."""
import jax
import jax.numpy as jnp


def distillation_kl(student_logits: jax.Array, teacher_logits: jax.Array, weights: jax.Array,
                    temperature: float = 1.0) -> jax.Array:
  """Summed KL(teacher || student) over counted tokens, both softmaxed at `temperature`.

  KL(p_T || q_S) = sum_v p_T(v) (log p_T(v) - log q_S(v)): the forward KL, whose gradient for
  the student is that of cross-entropy against the teacher's soft targets. Callers scale it by
  temperature^2 so that its gradients keep their size as the temperature changes.

  Args:
    student_logits, teacher_logits: [b, t, v] float (the same vocabulary).
    weights: [b, t] float, 0 for tokens that do not count.
  Returns:
    a float32 scalar in nats, summed over counted tokens (divide by weights.sum() for the mean).
  """
  student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  teacher = jax.nn.log_softmax(
      jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature, axis=-1)
  per_token = (jnp.exp(teacher) * (teacher - student)).sum(axis=-1)  # [b, t]
  return (per_token * weights).sum()
