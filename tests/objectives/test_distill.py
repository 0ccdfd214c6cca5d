"""distillation_kl equals the KL formula in numpy, and its gradient is the soft-target one."""
import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.objectives import distillation_kl


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_kl_equals_numpy_at_a_temperature_and_skips_uncounted_tokens():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(2, 2, 3, 7)) * 3
  weights = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
  for temperature in (1.0, 2.5):
    p, log_q = _log_softmax(teacher / temperature), _log_softmax(student / temperature)
    expected = ((np.exp(p) * (p - log_q)).sum(-1) * weights).sum()
    got = distillation_kl(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(weights),
                          temperature)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  assert float(distillation_kl(jnp.asarray(teacher), jnp.asarray(teacher),
                               jnp.asarray(weights))) < 1e-5


def test_gradient_is_the_soft_target_error_and_does_not_reach_the_teacher():
  rng = np.random.default_rng(1)
  student, teacher = (jnp.asarray(x) for x in rng.normal(size=(2, 1, 4, 5)))
  weights = jnp.asarray([[1.0, 1.0, 0.0, 1.0]])
  temperature = 2.0
  d_student, d_teacher = jax.grad(distillation_kl, argnums=(0, 1))(student, teacher, weights,
                                                                    temperature)
  soft = lambda x: np.exp(_log_softmax(np.asarray(x) / temperature))  # noqa: E731
  expected = (soft(student) - soft(teacher)) / temperature * np.asarray(weights)[..., None]
  np.testing.assert_allclose(d_student, expected, atol=1e-6)
  np.testing.assert_array_equal(d_teacher, np.zeros_like(d_teacher))
