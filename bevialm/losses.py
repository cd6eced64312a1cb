"""Cross-entropy of next-token logits against integer targets (playbook 3.5).

``loss = mean over tokens of -log softmax(logits)[target]``; its gradient with
respect to the logits is ``(softmax(logits) - onehot(target)) / N``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bevialm.types import Array, IntArray
from bevialm.validate import require_floating


@dataclass(frozen=True)
class CrossEntropyCache:
    """Softmax probabilities as ``(N, V)`` rows, the flat targets and the logits' shape."""

    probs: Array
    targets: IntArray
    shape: tuple[int, ...]


def _check(logits: Array, targets: IntArray) -> None:
    require_floating("cross_entropy", "logits", logits)
    if not isinstance(targets, np.ndarray) or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError("cross_entropy: targets must be an integer array")
    if logits.ndim < 1 or targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"cross_entropy: logits have shape {logits.shape}, so targets must have shape "
            f"{logits.shape[:-1]}, got {targets.shape}"
        )
    if targets.size == 0:
        raise ValueError("cross_entropy: no tokens (targets is empty)")
    vocab = logits.shape[-1]
    if targets.min() < 0 or targets.max() >= vocab:
        raise ValueError(
            f"cross_entropy: targets must lie in [0, {vocab}), got {targets.min()}..{targets.max()}"
        )


def cross_entropy(logits: Array, targets: IntArray) -> tuple[Array, CrossEntropyCache]:
    """Mean negative log-likelihood of ``targets`` (shape ``(...)``) under ``logits`` (``(..., V)``).

    Returns a 0-d array in the logits' dtype. The log-probabilities come from
    the log-sum-exp form, so a confident wrong prediction gives a large finite
    loss rather than ``log(0)``.
    """
    _check(logits, targets)
    z = logits.reshape(-1, logits.shape[-1])  # (N, V): one row of logits per token
    n = targets.size
    shifted = z - z.max(axis=1, keepdims=True)  # log softmax(z) = shifted - log(sum(exp(shifted)))
    e = np.exp(shifted)  # one exp serves the loss and the softmax
    norm = e.sum(axis=1, keepdims=True)
    picked = shifted[np.arange(n), targets.reshape(-1)]  # each token's shifted target logit
    loss = np.mean(np.log(norm[:, 0]) - picked).astype(logits.dtype)
    probs = e / norm
    return np.asarray(loss), CrossEntropyCache(probs, targets.reshape(-1), logits.shape)


def cross_entropy_backward(cache: CrossEntropyCache, dloss: Array | float = 1.0) -> Array:
    """``dlogits = dloss * (probs - onehot(targets)) / N``, in the logits' shape."""
    if np.ndim(dloss) != 0:
        raise ValueError(f"cross_entropy: dloss must be a scalar (shape ()), got shape {np.shape(dloss)}")
    probs, targets = cache.probs, cache.targets
    n = targets.size
    onehot = np.zeros_like(probs)
    onehot[np.arange(n), targets] = 1
    dlogits: Array = (probs - onehot) * (np.asarray(dloss, dtype=probs.dtype) / probs.dtype.type(n))
    return dlogits.reshape(cache.shape)
