"""Shared steps of the pair tests: build a case's float64 point and check it."""

from __future__ import annotations

from typing import Any

import numpy as np

from bevialm.gradcheck import DEFAULT, GradCheckReport, away_from_init, kink_distance, vjp_check
from bevialm.registry import Bound, Case, PairSpec
from bevialm.types import Array, Params


def point(spec: PairSpec, case: Case) -> tuple[Bound, Params, Array]:
    """The bound pair, generic float64 params and an input for ``case``, away from kinks.

    Points whose internal kinks (a ReLU inside a block) fall within the margin
    are redrawn from the next seed instead of loosening the tolerance.
    """
    bound = spec.bind(case)
    for attempt in range(20):
        rng = np.random.default_rng([case.seed, attempt])
        params = away_from_init(spec.init(case.cfg, rng), rng)
        x = spec.make_input(case, rng)
        _, cache = bound.forward(params, x)
        if kink_distance(cache) >= DEFAULT.kink_margin:
            return bound, params, x
    raise AssertionError(f"no point away from kinks found for {spec.name} {case}")  # pragma: no cover


def check(spec: PairSpec, case: Case, **kwargs: Any) -> GradCheckReport:
    bound, params, x = point(spec, case)
    rng = np.random.default_rng([case.seed, 99])
    return vjp_check(bound.forward, bound.backward, params, x, rng=rng, label=f"{spec.name} {case}", **kwargs)
