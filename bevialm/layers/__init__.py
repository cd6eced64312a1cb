"""The layer pairs, one module each.

Every module defines a frozen config dataclass, ``init(cfg, rng, dtype)``,
``forward(params, x, cfg) -> (y, cache)`` and ``backward(params, cache, dy) ->
(dx, grads)``. Forward takes the config as its third argument; backward finds
everything it needs in the cache. Both are pure: they never modify their
arguments and keep no state.
"""
