"""Private helpers of the noise defenses: additive noise per entry and the percentile calibration."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from nvflare_gia.defenses._update import UpdateValue, copy_value, is_bn_running_stat, is_perturbable, restore_like, to_numpy
from nvflare_gia.defenses.base import DefenseContext
from nvflare_gia.errors import DataError

__all__ = ["NOISE_CHUNK", "add_noise", "abs_percentile", "noised_keys", "context_round"]


def noised_keys(update: Mapping[str, UpdateValue], perturb_bn_stats: bool, owner: str) -> list[str]:
    """Floating-point keys that get noise (BatchNorm running statistics only if ``perturb_bn_stats``).

    Raises:
        DataError: if no entry would get noise (the defense would send the update unprotected).
    """
    keys = [k for k, v in update.items() if is_perturbable(k, v) and (perturb_bn_stats or not is_bn_running_stat(k))]
    if not keys:
        raise DataError(
            f"{owner}: update must hold at least one floating-point entry to perturb, got keys {list(update)[:5]} "
            f"(perturb_bn_stats={perturb_bn_stats})."
        )
    return keys


def _noise_dtype(value: UpdateValue) -> torch.dtype:
    dtype = value.dtype if isinstance(value, torch.Tensor) else np.asarray(value).dtype
    return torch.float64 if dtype in (torch.float64, np.float64) else torch.float32


#: Noise is drawn in chunks of this many entries, each from its own generator seeded by
#: (call seed, chunk index), so the result does not depend on how many threads drew it.
NOISE_CHUNK = 1 << 20


def _chunk_seed(seed: int, index: int) -> int:
    low, high = (int(v) for v in np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32))
    return ((high << 32) | low) & ((1 << 63) - 1)


def add_noise(
    update: Mapping[str, UpdateValue],
    keys: Collection[str],
    fill: Callable[[torch.Tensor, torch.Generator], None],
    seed: int,
) -> tuple[dict[str, UpdateValue], float]:
    """Add noise to the entries ``keys`` of ``update``; copy every other entry unchanged.

    Each perturbed entry gets a fresh CPU buffer (float64 for float64 entries, float32
    otherwise), filled chunk by chunk (:data:`NOISE_CHUNK` entries) by ``fill(chunk, generator)``
    with a generator seeded from ``(seed, chunk index)``; the entry is then added to the chunk in
    place, so a float32 entry costs one noise pass and one addition, and the input is never
    written. Chunks run on up to ``torch.get_num_threads()`` threads (NumPy and torch release the
    GIL); the result is the same for any thread count.

    Args:
        update: the update.
        keys: keys to perturb (floating-point entries).
        fill: fills a 1-D CPU tensor with noise in place from the given generator.
        seed: seed of this call.

    Returns:
        ``(defended update, squared L2 norm of the noise drawn)``.
    """
    targets = set(keys)
    out: dict[str, UpdateValue] = {}
    pending: list[tuple[str, UpdateValue, torch.Tensor]] = []
    jobs: list[tuple[torch.Tensor, Any, int, int, int]] = []
    for key, value in update.items():
        if key not in targets:
            out[key] = copy_value(value)
            continue
        numel = int(value.numel()) if isinstance(value, torch.Tensor) else int(np.size(value))
        buffer = torch.empty(numel, dtype=_noise_dtype(value))
        if isinstance(value, torch.Tensor):
            source: Any = value.detach().reshape(-1).to(device="cpu", dtype=buffer.dtype)
        else:
            array = np.asarray(value).reshape(-1)
            source = array if array.dtype == buffer.numpy().dtype else array.astype(buffer.numpy().dtype)
        for start in range(0, numel, NOISE_CHUNK):
            jobs.append((buffer, source, start, min(numel, start + NOISE_CHUNK), len(jobs)))
        pending.append((key, value, buffer))

    def run(job: tuple[torch.Tensor, Any, int, int, int]) -> float:
        buffer, source, start, stop, index = job
        chunk = buffer[start:stop]
        fill(chunk, torch.Generator().manual_seed(_chunk_seed(seed, index)))
        noise = chunk.numpy()
        with np.errstate(over="ignore", under="ignore"):
            squared = float(np.dot(noise, noise))
        if not 1e-30 < squared < 1e30:  # a float32 sum of squares under/overflows outside this range
            wide = noise.astype(np.float64)
            squared = float(np.dot(wide, wide))
        if isinstance(source, torch.Tensor):
            chunk.add_(source[start:stop])
        else:
            np.add(noise, source[start:stop], out=noise)
        return squared

    workers = min(len(jobs), max(1, torch.get_num_threads()))
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            squares = list(pool.map(run, jobs))
    else:
        squares = [run(job) for job in jobs]
    for key, value, buffer in pending:
        out[key] = restore_like(buffer, value)
    return out, float(sum(squares))


def abs_percentile(
    values: Sequence[UpdateValue], percentile: float, max_samples: int | None, rng: np.random.Generator, owner: str
) -> tuple[float, bool]:
    """The ``percentile``-th percentile of the non-zero absolute values of all entries of ``values``.

    Exact (``np.percentile``, linear interpolation, a partition rather than a full sort) when the
    entries hold at most ``max_samples`` numbers or ``max_samples`` is None. Otherwise it is
    estimated on ``max_samples`` entries drawn uniformly with replacement, spread over the arrays
    in proportion to their sizes; for the 95th percentile and 250 000 samples the quantile's
    standard error is about 0.04 percentile points (a fraction of a percent of the value for
    update distributions with exponential-like tails).

    Returns:
        ``(value, exact)``.

    Raises:
        DataError: if no entry is non-zero (nothing to calibrate the noise on).
    """
    arrays = [to_numpy(v).reshape(-1) for v in values]
    total = sum(a.size for a in arrays)
    exact = max_samples is None or total <= max_samples
    if exact:
        pool = np.abs(np.concatenate(arrays)) if len(arrays) > 1 else np.abs(arrays[0])
    else:
        picks = []
        for a in arrays:
            count = int(round(max_samples * a.size / total))
            if count:
                picks.append(np.abs(a[rng.integers(0, a.size, count)]))
        pool = np.concatenate(picks) if picks else np.zeros(0)
    nonzero = pool[pool > 0]
    if nonzero.size == 0:
        raise DataError(
            f"{owner}: the update must hold at least one non-zero floating-point value to calibrate the noise, "
            f"got {total} entries that are all zero{'' if exact else ' in the calibration sample'}."
        )
    return float(np.percentile(nonzero, percentile)), exact


def context_round(context: Any, owner: str) -> int | None:
    """The round index of a ``DefenseContext`` (None for no context)."""
    if context is None:
        return None
    if not isinstance(context, DefenseContext):
        raise TypeError(f"{owner}: context must be a DefenseContext or None, got {type(context).__name__}.")
    return context.round_index
