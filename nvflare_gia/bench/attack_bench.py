"""``nvflare-gia bench attack``: attack strength and cost on the TMI 2023 single-step setting.

Protocol: images ``0..B-1`` of ``train_images`` (scaled to [0, 1]); ``SmallCNN`` (or the network
``model`` names) initialised with ``torch.manual_seed(0)``, untrained, BatchNorm in train mode; the client takes one SGD step (lr
0.01, cross-entropy) on those B images; the attack gets ``seconds`` of wall time and only what the
server sees (global model, update, hyperparameters, a prior image). Every setting runs with the
priors ``flat`` (gray 0.5) and ``val_mean`` (the mean image of the ``val_images`` split, which
holds none of the attacked images; the attack starts from it), and batch 1 also with
``val_retrieval``: the ``val_images`` are the attack's candidates, and the mean of those whose
updates fit the client's best is its prior (a server that holds public images; with several images
the attack does not use candidates, so the run would repeat ``val_mean``). Metrics after Hungarian
matching against the true images; RDLV relative to the SSIM of ``flat`` or ``val_mean``, the prior
the server had before it saw the update.

Torch runs on ``threads`` CPU threads (one by default), the timed training step included. On the
project's 2-core machine one thread is both the fastest and the steadiest: an attack iteration at
batch 1 took 8.5–9.0 ms and a training step 2.4–2.5 ms over four alternating measurements, against
11.7–15.2 ms and 2.4–4.7 ms on two threads (``docs/benchmarks.md``). The other cores run restarts
side by side (``AttackConfig.parallel_restarts``, by default one per CPU core this process may use,
at most the attack's restarts; one on CUDA): there, two cores ran 1.7–2x the iterations of one.
``ms_per_iteration`` is the time an iteration took on its thread: restarts running beside each
other can make it longer (they share the memory bus and Python's lock), never shorter.

Beside the image metrics each run records ``matching_loss`` (the attack's best restart) and
``truth_matching_loss`` (the same loss of the true images, scored after the attack): their gap
tells a weak result caused by the optimisation (the truth explains the update far better than
anything the attack found) from one caused by an update that does not determine the images.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import nvflare_gia
from nvflare_gia.attack import PRIOR_NAMES, AttackConfig, GradientInversionAttack, ThreatModel, prior_from_validation, resolve_device
from nvflare_gia.data import load_npz
from nvflare_gia.errors import ConfigError, DataError
from nvflare_gia.metrics import evaluate_leakage
from nvflare_gia.models import build_model, resolve_model_name
from nvflare_gia.threads import torch_threads
from nvflare_gia.training import TrainingConfig, train_local

__all__ = ["DEFAULT_DATA", "run_attack_benchmark"]

logger = logging.getLogger(__name__)

DEFAULT_DATA = Path(nvflare_gia.__file__).resolve().parents[2] / "shared" / "data" / "nih_cxr1000_64.npz"
RUN_KEYS = (
    "model", "batch_size", "prior", "seconds", "iterations", "ms_per_iteration", "ms_per_train_step",
    "ssim", "psnr", "mse", "rdlv", "prior_ssim", "label_accuracy", "label_count_accuracy", "matching_loss",
    "truth_matching_loss",
)


def _usable_cores() -> int:
    """CPU cores this process may run on (all of the machine's where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _train_step_ms(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, repeats: int = 20) -> float:
    """Milliseconds of one local SGD step (forward, backward, update) on the attacked batch."""
    config = TrainingConfig()
    trial = copy.deepcopy(model)
    train_local(trial, images, labels, len(labels), config)  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        train_local(trial, images, labels, len(labels), config)
    return 1000.0 * (time.perf_counter() - started) / repeats


def _one_run(
    model_name: str,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    seconds: float,
    device: str,
    prior_name: str,
    prior: np.ndarray | None,
    candidates: np.ndarray | None,
    parallel_restarts: int,
) -> dict[str, Any]:
    batch = len(labels)
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=num_classes, in_channels=images.shape[1])
    model.train()
    global_state = copy.deepcopy(model.state_dict())
    x, y = torch.as_tensor(images), torch.as_tensor(labels)
    step_ms = _train_step_ms(model, x, y)
    client = copy.deepcopy(model)
    train_local(client, x, y, batch, TrainingConfig())
    update = {k: v - global_state[k] for k, v in client.state_dict().items()}
    threat = ThreatModel(
        model=model_name, num_classes=num_classes, in_channels=images.shape[1], image_size=images.shape[-1],
        batch_size=batch, num_images=batch,
    )
    config = AttackConfig(
        max_seconds=seconds, device=device, init="noise" if prior is None else "prior", parallel_restarts=parallel_restarts
    )
    attack = GradientInversionAttack(config)
    result = attack.reconstruct(global_state, update, threat, prior=prior, candidates=candidates)
    truth_loss = attack.matching_loss(global_state, update, threat, images, labels)
    report = evaluate_leakage(result.images, images, prior=prior, reconstructed_labels=result.labels, true_labels=labels)
    return {
        "model": model_name,
        "batch_size": batch,
        "prior": prior_name,
        "seconds": float(result.stats["seconds"]),
        "iterations": int(result.stats["iterations"]),
        "ms_per_iteration": float(result.stats["ms_per_iteration"]),
        "ms_per_train_step": step_ms,
        "ssim": report.ssim,
        "psnr": report.psnr,
        "mse": report.mse,
        "rdlv": report.rdlv,
        "prior_ssim": report.prior_ssim,
        "label_accuracy": report.label_accuracy,
        "label_count_accuracy": report.label_count_accuracy,
        "matching_loss": float(result.stats["best_loss"]),
        "truth_matching_loss": truth_loss,
    }


def run_attack_benchmark(
    *, quick: bool, data: str | None, json_path: str, seconds: float = 60.0, device: str = "auto", threads: int = 1,
    model: str | None = None, parallel_restarts: int | None = None,
) -> dict:
    """Run the attack benchmark and write ``json_path`` (``{"runs": [...]}``).

    Args:
        quick: batch sizes 1 and 4 with ``SmallCNN``; the full run adds batch 8 and MONAI's ResNet-18.
            Each setting runs once per prior of :data:`nvflare_gia.attack.PRIOR_NAMES` (``val_retrieval`` at batch 1 only).
        data: a ``.npz`` of the shared format (any square size, any number of classes); None uses
            ``../shared/data/nih_cxr1000_64.npz``.
        json_path: output file.
        seconds: wall-clock budget per attack.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: CPU threads torch uses for the attacks and the timed training steps (>= 1).
        model: a network of one's own to run the protocol on instead (a name of
            :data:`nvflare_gia.models.MODEL_NAMES` or the dotted path of a network factory, see
            :func:`nvflare_gia.models.build_model`): batch sizes 1 and 4, and 8 without ``quick``.
            None runs the networks above.
        parallel_restarts: restarts run side by side (``AttackConfig.parallel_restarts``); None
            runs one per CPU core this process may use, at most the attack's restarts, on CPU, and
            one on CUDA.

    Returns:
        The JSON content.

    Raises:
        ConfigError: if ``threads`` or ``parallel_restarts`` is not an integer >= 1, or ``model`` is
            not a network name.
        DataError: if the data file is missing or has fewer images than the largest batch.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"run_attack_benchmark: threads must be an integer >= 1, got {threads!r}.")
    if parallel_restarts is None:
        on_cpu = resolve_device(device).type == "cpu"
        parallel_restarts = min(_usable_cores(), AttackConfig.restarts) if on_cpu else 1
    elif isinstance(parallel_restarts, bool) or not isinstance(parallel_restarts, int) or parallel_restarts < 1:
        raise ConfigError(f"run_attack_benchmark: parallel_restarts must be an integer >= 1 or None, got {parallel_restarts!r}.")
    if model is not None:
        model = resolve_model_name(model, owner="run_attack_benchmark")
    path = Path(data) if data else DEFAULT_DATA
    if not path.is_file():
        raise DataError(f"run_attack_benchmark: data must be an existing .npz file, got {str(path)!r}.")
    splits = load_npz(path)
    if model is None:
        plan = [("small_cnn", 1), ("small_cnn", 4)] + ([] if quick else [("small_cnn", 8), ("resnet18", 1), ("resnet18", 4)])
    else:
        plan = [(model, batch) for batch in ((1, 4) if quick else (1, 4, 8))]
    largest = max(batch for _, batch in plan)
    if largest > len(splits.train_labels):
        raise DataError(f"run_attack_benchmark: data has {len(splits.train_labels)} training images, fewer than batch {largest}.")
    runs = []
    with torch_threads(threads):
        for (model_name, batch), prior_name in itertools.product(plan, PRIOR_NAMES):
            if prior_name == "val_retrieval" and batch > 1:
                continue
            prior, candidates = prior_from_validation(prior_name, splits.val_images)
            images, labels = splits.train_images[:batch], splits.train_labels[:batch]
            run = _one_run(model_name, images, labels, splits.num_classes, seconds, device, prior_name, prior, candidates, parallel_restarts)
            runs.append(run)
            logger.info(
                "%-10s B=%d %-13s prior: SSIM %.3f (prior %.3f, RDLV %+.3f) PSNR %.2f dB, labels %.2f (as a multiset %.2f), matching loss %.3g (truth %.3g), "
                "%d iterations, %.1f ms/it vs %.1f ms/train step",
                model_name, batch, prior_name, run["ssim"], run["prior_ssim"], run["rdlv"], run["psnr"], run["label_accuracy"],
                run["label_count_accuracy"], run["matching_loss"], run["truth_matching_loss"], run["iterations"], run["ms_per_iteration"], run["ms_per_train_step"],
            )
    protocol = {
        "data": str(path), "seconds": seconds, "device": device, "quick": quick, "threads": threads,
        "parallel_restarts": parallel_restarts,
    }
    result = {"runs": runs, "protocol": protocol}
    out = Path(json_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result
