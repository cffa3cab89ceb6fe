"""Relaxations: architecture parameters -> per-edge op weights, found by name.

A relaxation is a function `(alphas, *, key, step) -> weights` with `alphas` of shape
(num_edges, num_ops) and `weights` of the same shape. `key` (a PRNG key) and `step` (an int
array) are there for stochastic and scheduled relaxations; deterministic ones ignore them.
Adding one is a small file with `@register('name')` plus an import line below.
"""
from dnas.registry import Registry

RELAXATIONS = Registry('relaxation')
register = RELAXATIONS.register
get = RELAXATIONS.get
names = RELAXATIONS.names

from dnas.relaxations import softmax  # noqa: E402,F401  (registers itself)
