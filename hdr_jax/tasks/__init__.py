"""Training tasks: what the one trainer (``hdr_jax.train``) runs for each model family."""

from __future__ import annotations

import importlib

TASKS = {
    "regression": "hdr_jax.tasks.regression:RegressionTask",
    "gan": "hdr_jax.tasks.gan:GanTask",
    "diffusion": "hdr_jax.tasks.diffusion:DiffusionTask",
    "ldae": "hdr_jax.tasks.ldae:LdaeTask",
}


def get_task(config):
  if config.task not in TASKS:
    raise ValueError(f"config.task: unknown task {config.task!r}; choose one of {sorted(TASKS)}")
  module, attr = TASKS[config.task].split(":")
  return getattr(importlib.import_module(module), attr)(config)
