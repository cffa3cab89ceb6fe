"""The search state: everything a search step reads and writes, as one pytree.

A checkpoint is exactly this pytree (the module structure, `graphdef`, is rebuilt from the
config and is not saved).
"""
from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class SearchState:
  step: jax.Array          # int32 scalar: number of completed search steps
  weights: Any             # nnx.State of nnx.Param (network weights)
  alphas: Any              # nnx.State of ArchParam (architecture parameters)
  batch_stats: Any         # nnx.State of nnx.BatchStat (BN running averages)
  weight_opt_state: Any    # optax state of the weight optimizer
  alpha_opt_state: Any     # optax state of the architecture optimizer
  rng: jax.Array           # PRNG key for stochastic relaxations / regularizers
