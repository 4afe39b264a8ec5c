"""``nvflare-gia bench overhead``: what each defense costs per round.

Noise defenses (Gaussian, Laplacian) are timed on updates with the layout of real networks: the
full MONAI ResNet-18 state (about 11M parameters) and its first layers up to about 1M, beside one
NumPy addition over the same arrays (the floor of any additive defense). Data-aware defenses (shadow,
latent) cost what their local replays cost, so they are timed on a small site (8 images at batch 4)
for ``SmallCNN`` and ResNet-18, beside one local training epoch of the same site.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nvflare_gia.bench.defense_bench import build_defense
from nvflare_gia.data import DataSpec, load_site_data
from nvflare_gia.defenses import DefenseContext
from nvflare_gia.models import build_model
from nvflare_gia.training import TrainingConfig, train_local, training_meta

__all__ = ["run_overhead_benchmark"]

logger = logging.getLogger(__name__)


def _best_of(function: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def _update_layouts(seed: int) -> dict[int, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """``{parameters: (global_state, update)}`` for ~1M and ~11M parameters (ResNet-18 layout)."""
    state = {k: v.numpy() for k, v in build_model("resnet18", init_seed=seed).state_dict().items()}
    rng = np.random.default_rng(seed)
    layouts = {}
    for budget in (1_000_000, None):
        chosen, total = {}, 0
        for key, value in state.items():
            if budget is not None and total >= budget:
                break
            chosen[key] = value
            total += value.size if np.issubdtype(value.dtype, np.floating) else 0
        update = {
            k: (rng.standard_normal(v.shape).astype(v.dtype) * 1e-3 if np.issubdtype(v.dtype, np.floating) else np.ones_like(v))
            for k, v in chosen.items()
        }
        layouts[total] = (chosen, update)
    return layouts


def run_overhead_benchmark(*, json_path: str, repeats: int = 5, seed: int = 0, data: str | None = None) -> dict[str, Any]:
    """Time every defense and write ``json_path`` (``{"overhead": [...]}``).

    Each row: ``filter``, ``parameters``, ``seconds`` (best of ``repeats``), ``numpy_add_seconds``
    (one ``a + b`` per entry over the same arrays), and for data-aware defenses ``model``,
    ``local_epoch_seconds``.
    """
    rows = []
    for parameters, (global_state, update) in _update_layouts(seed).items():
        add_seconds = _best_of(lambda: {k: update[k] + global_state[k] for k in update}, repeats)
        for name in ("gaussian", "laplacian"):
            defense = build_defense(name, {}, seed)
            seconds = _best_of(lambda: defense.apply(update, global_state=global_state, context=DefenseContext(round_index=0)), repeats)
            rows.append({"filter": name, "parameters": parameters, "seconds": seconds, "numpy_add_seconds": add_seconds, "ratio": seconds / add_seconds})
            logger.info("%-9s %11d params: %.4f s = %.1f x one NumPy addition (%.4f s)", name, parameters, seconds, seconds / add_seconds, add_seconds)
    spec = DataSpec(source=data or "synthetic", seed=seed)
    site = load_site_data(spec, "site-2")
    training = TrainingConfig(seed=seed)
    for model_name in ("small_cnn", "resnet18"):
        model = build_model(model_name, site.num_classes, init_seed=seed)
        global_state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
        trained = copy.deepcopy(model)
        epoch_seconds = _best_of(lambda: train_local(copy.deepcopy(model), site.train_images, site.train_labels, site.batch_size, training), repeats)
        steps = train_local(trained, site.train_images, site.train_labels, site.batch_size, training)
        update = {k: v.numpy() - global_state[k] for k, v in trained.state_dict().items()}
        meta = {"NUM_STEPS_CURRENT_ROUND": steps, "gia_training": training_meta(training, model_name, site.train_images, site.num_classes, site.batch_size)}
        context = DefenseContext.from_training_meta(meta, images=site.train_images, labels=site.train_labels, round_index=0)
        parameters = int(sum(v.size for v in global_state.values() if np.issubdtype(v.dtype, np.floating)))
        for name in ("shadow", "latent"):
            defense = build_defense(name, {}, seed)
            seconds = _best_of(lambda: defense.apply(update, global_state=global_state, context=context), max(1, repeats // 2))
            rows.append(
                {"filter": name, "model": model_name, "parameters": parameters, "seconds": seconds, "numpy_add_seconds": None,
                 "local_epoch_seconds": epoch_seconds, "ratio": seconds / epoch_seconds}
            )
            logger.info("%-9s %-10s (%d images): %.3f s = %.1f x one local epoch (%.3f s)", name, model_name, len(site.train_labels), seconds, seconds / epoch_seconds, epoch_seconds)
    result = {"overhead": rows, "protocol": {"repeats": repeats, "seed": seed, "torch_threads": torch.get_num_threads()}}
    out = Path(json_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result
