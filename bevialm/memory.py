"""How much memory a run will need, and how much the machine has: checked before anything is allocated.

A NumPy ``MemoryError`` arrives deep inside a step, after minutes of work, as a
traceback; on Linux the kernel may instead kill the process without a word. So the
trainer and the sampler first *estimate* what they will hold at their peak, from the
sizes alone (closed-form products of Python integers: ``--layers 1000000000`` is
refused in microseconds, never looped over), compare it with what the machine can give,
and refuse in one line that shows both numbers.

**Training** holds, at the peak of a step:

- the parameter state, ``P`` scalars times 8: the parameters, their gradients, the
  clipped gradients, AdamW's two moments, and the new parameters and moments the
  pure update returns before the old ones are dropped;
- one step's activations: per block, the caches its backward keeps (the layer norms'
  normalised inputs, the attention's inputs, queries, keys, values and its ``(B, H, T, T)``
  weights, the MLP's hidden layer and its activation's cache, the residual sums), plus the
  logits, probabilities and their gradient ``(B, T, V)``, plus one block's backward temporaries;
- the token ids of the text (8 bytes per character);
- the buffers of the samples printed during training (:func:`sampling_bytes`);
- per shard worker process, its interpreter with NumPy and three copies of the parameters (the
  shared copy it reads, its gradient sums, its shard's gradients before they are summed).

Evaluation is a forward pass of the same batch without the backward: it fits where a
training step fits. **Sampling** holds the model, every sample's tokens and text, the
key/value cache of every block, and one window's forward pass.

The constants below are per-element counts read from the caches (``bevialm/layers``),
rounded up; ``tests/test_memory.py`` measures real peaks with ``tracemalloc`` and checks
that the estimate covers them without being wildly above.

**What the machine has** is the smallest of: ``MemAvailable`` in ``/proc/meminfo``
(free memory plus what the kernel can reclaim), the address-space limit ``RLIMIT_AS``
(``ulimit -v``) minus what the process already maps, and a container's cgroup memory
limit minus its usage. Where none can be read (not Linux), nothing is refused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bevialm.model import ModelConfig

GIB = 1 << 30
_UNLIMITED = 1 << 60  # cgroups write "max" or a number near 2**63 for "no limit"

# Per-element counts (see the module docstring), in units of one parameter-dtype scalar.
_PARAM_STATE = 8  # params, grads, clipped grads, m, v, new params, new m, new v
_PER_BLOCK_DIM = 10  # (B, T, dim) arrays per block: layer-norm, attention and MLP inputs, q/k/v, residuals
_PER_BLOCK_HIDDEN = 3  # (B, T, mlp_hidden): the activation's cache and output, its gradient in flight
_PER_BLOCK_SCORES = 2  # (B, H, T, T): the attention weights kept, their gradient in flight
_PER_VOCAB = 4  # (B, T, V): logits, probabilities, their gradient, a temporary
_WORKER_STATE = 3  # per shard worker: its copy of the parameters, its gradient sums, its shard's gradients
_WORKER_BYTES = 64 << 20  # a shard worker's interpreter and NumPy: 34 MiB peak for a tiny model (NumPy 2.4.6), measured; tests/test_memory.py holds it above a real worker's peak
_TOKEN_BYTES = 8  # int64 token ids
_TEXT_BYTES = 24  # per generated character: its id, its code point and its share of the text


class MemoryLimitError(ValueError):
    """A run or a sampling job that would not fit in memory (one line, both numbers)."""


@dataclass(frozen=True)
class Available:
    """What the machine can give, and which limit said so."""

    bytes: int
    source: str


def gib(n: float) -> str:
    """``n`` bytes as a short human figure (``1.5 GiB``, ``12 MiB``)."""
    if n >= GIB:
        return f"{n / GIB:,.1f} GiB"
    return f"{max(n, 0) / (1 << 20):,.0f} MiB"


def param_count(cfg: ModelConfig) -> int:
    """The number of scalar parameters (as :func:`bevialm.model.count_params`), from the layers'
    own ``param_shapes()``: one block's times ``n_layers``, never a loop over the layers."""
    block = sum(math.prod(shape) for shape in cfg.block.param_shapes().values())
    rest = (cfg.tok_emb, cfg.pos_emb, cfg.ln_f, cfg.lm_head)
    return cfg.n_layers * block + sum(math.prod(shape) for layer in rest for shape in layer.param_shapes().values())


def step_activation_bytes(cfg: ModelConfig, batch: int, itemsize: int, *, layers: int | None = None) -> int:
    """The activations one training step holds at its peak (forward caches plus backward temporaries);
    ``layers`` (default the model's) counts the blocks whose caches are kept."""
    ctx, dim, hidden, vocab = cfg.ctx, cfg.dim, cfg.mlp_hidden, cfg.vocab_size
    layers = cfg.n_layers if layers is None else layers
    tokens = batch * ctx
    block = _PER_BLOCK_DIM * tokens * dim + _PER_BLOCK_HIDDEN * tokens * hidden + _PER_BLOCK_SCORES * batch * cfg.n_heads * ctx * ctx
    # layers blocks of caches, one more block of backward temporaries, the head and the embeddings
    return ((layers + 1) * block + _PER_VOCAB * tokens * vocab + 4 * tokens * dim) * itemsize


def sampling_bytes(cfg: ModelConfig, num_samples: int, length: int, itemsize: int) -> int:
    """The buffers of ``num_samples`` samples of ``length`` characters each (prompt included)."""
    if length <= 0:
        return 0
    kv_cache = 2 * 2 * cfg.n_layers * num_samples * cfg.ctx * cfg.dim * itemsize  # keys and values, old and extended
    window = step_activation_bytes(cfg, num_samples, itemsize, layers=1)
    return num_samples * length * _TEXT_BYTES + kv_cache + window


def training_bytes(
    cfg: ModelConfig, *, batch: int, itemsize: int, data_tokens: int, sample_len: int, workers: int = 0
) -> tuple[int, str]:
    """The estimate for a training run and a one-line breakdown of it. ``workers`` is the number
    of shard worker processes (:mod:`bevialm.shard_worker`): the shards' activations are the
    step's either way, but each worker adds its interpreter and three copies of the parameters."""
    params = param_count(cfg)
    state = _PARAM_STATE * params * itemsize
    step = step_activation_bytes(cfg, batch, itemsize)
    other = data_tokens * _TOKEN_BYTES + sampling_bytes(cfg, 1, sample_len + 1, itemsize)
    extra = workers * (_WORKER_BYTES + _WORKER_STATE * params * itemsize)
    breakdown = f"parameters and AdamW state {gib(state)}, one step's activations {gib(step)}, data and samples {gib(other)}"
    if workers:
        breakdown += f", {workers} shard worker(s) {gib(extra)}"
    return state + step + other + extra, breakdown


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _meminfo_available(proc: str) -> int | None:
    text = _read(os.path.join(proc, "meminfo"))
    for line in (text or "").splitlines():
        if line.startswith("MemAvailable:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1]) * 1024  # kB
    return None


def _mapped_bytes(proc: str) -> int:
    """The process's virtual size (``VmSize``), what ``RLIMIT_AS`` counts; 0 if unknown."""
    text = _read(os.path.join(proc, "self", "status"))
    for line in (text or "").splitlines():
        if line.startswith("VmSize:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1]) * 1024
    return 0


def _cgroup_room(cgroup: str) -> int | None:
    """A container's memory limit minus its usage (cgroup v2, else v1), or None without a limit."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        (os.path.join("memory", "memory.limit_in_bytes"), os.path.join("memory", "memory.usage_in_bytes")),
    ):
        limit, usage = _read(os.path.join(cgroup, limit_file)), _read(os.path.join(cgroup, usage_file))
        if limit is None or usage is None:
            continue
        limit, usage = limit.strip(), usage.strip()
        if not (limit.isdigit() and usage.isdigit()) or int(limit) >= _UNLIMITED:
            return None
        return int(limit) - int(usage)
    return None


def _address_space_limit() -> int | None:
    try:
        import resource  # POSIX only
    except ImportError:  # pragma: no cover - Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def available(proc: str = "/proc", cgroup: str = "/sys/fs/cgroup") -> Available | None:
    """The memory this process can still allocate, and its source; None where nothing can be read."""
    found: list[Available] = []
    meminfo = _meminfo_available(proc)
    if meminfo is not None:
        found.append(Available(meminfo, "MemAvailable"))
    soft = _address_space_limit()
    if soft is not None:
        found.append(Available(soft - _mapped_bytes(proc), "the address-space limit, ulimit -v"))
    room = _cgroup_room(cgroup)
    if room is not None:
        found.append(Available(room, "the container's memory limit"))
    return min(found, key=lambda a: a.bytes) if found else None


def require(need: int, what: str, breakdown: str, advice: str) -> None:
    """Raise :class:`MemoryLimitError` when ``need`` bytes exceed what the machine has.

    The message: ``{what} needs about N GiB of memory ({breakdown}); this machine has M GiB
    available ({source}); {advice}``.
    """
    have = available()
    if have is None or need <= have.bytes:
        return
    raise MemoryLimitError(
        f"{what} needs about {gib(need)} of memory ({breakdown}); this machine has {gib(have.bytes)} available "
        f"({have.source}); {advice}"
    )
