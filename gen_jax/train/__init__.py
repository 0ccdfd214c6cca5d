"""The generic trainer: state, step, loop, checkpoints and metrics, shared by every family."""
from gen_jax.train.checkpoint import Checkpointer
from gen_jax.train.loop import (NonFiniteError, StateLayout, abstract_train_state, evaluate,
                                train_and_evaluate, validate)
from gen_jax.train.metrics import read_metrics
from gen_jax.train.state import TrainState, make_optimizer, rng_for
from gen_jax.train.step import make_eval_step, make_train_step
from gen_jax.train.task import ParamSpec, Task

__all__ = [
    "Checkpointer",
    "NonFiniteError",
    "ParamSpec",
    "StateLayout",
    "Task",
    "TrainState",
    "abstract_train_state",
    "evaluate",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "read_metrics",
    "rng_for",
    "train_and_evaluate",
    "validate",
]
