"""Audit one client update: run the attack, score it, and write private outputs (no nvflare import).

Shared by the server-side FLARE widget and the benchmarks, so every leakage number in the project
comes from the same code path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nvflare_gia.attack import TRAINING_META_KEY, AttackResult, GradientInversionAttack, ThreatModel
from nvflare_gia.data import SiteData
from nvflare_gia.metrics import LeakageReport, evaluate_leakage
from nvflare_gia.training import epoch_orders

__all__ = ["STOPPED_SHORT_FACTOR", "stopped_short", "AuditTarget", "audit_update", "score_reconstruction", "append_record", "save_reconstruction", "make_private_dir", "image_grid"]

logger = logging.getLogger(__name__)

_DIR_MODE = 0o700
_FILE_MODE = 0o600


@dataclasses.dataclass(frozen=True)
class AuditTarget:
    """One client update as the server received it.

    Attributes:
        client: the client's name.
        round: the FL round.
        global_state: the global model the client trained from (name → array).
        update: the client's ``WEIGHT_DIFF`` (name → array), BatchNorm buffers included.
        meta: the update's DXO meta (``NUM_STEPS_CURRENT_ROUND``, ``gia_training``, ``gia_defense``).
    """

    client: str
    round: int
    global_state: Mapping[str, Any]
    update: Mapping[str, Any]
    meta: Mapping[str, Any]


def make_private_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` owner-only (0700), and every missing parent too: reconstructions are patient data."""
    folder = Path(path)
    missing = []
    cursor = folder
    while not cursor.exists():
        missing.append(cursor)
        cursor = cursor.parent
    for directory in reversed(missing):
        directory.mkdir(mode=_DIR_MODE, exist_ok=True)
        os.chmod(directory, _DIR_MODE)
    os.chmod(folder, _DIR_MODE)
    return folder


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
    with os.fdopen(descriptor, "wb") as f:
        f.write(data)
    os.chmod(path, _FILE_MODE)


def append_record(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one JSON line to ``path`` atomically: one ``write`` of a whole line, flushed and fsynced.

    A server killed mid-run leaves a file whose complete lines all parse.
    """
    line = (json.dumps(_json_safe(record), sort_keys=True) + "\n").encode("utf-8")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, _FILE_MODE)
    try:
        os.write(descriptor, line)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def image_grid(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Tile rows of images ``(N, C, H, W)`` in [0, 1] into one uint8 gray image (one row each)."""
    columns = max(len(r) for r in rows)
    height, width = rows[0].shape[-2:]
    grid = np.ones((len(rows) * (height + pad) + pad, columns * (width + pad) + pad), dtype=np.float32)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            top, left = pad + i * (height + pad), pad + j * (width + pad)
            grid[top : top + height, left : left + width] = np.clip(np.asarray(image, dtype=np.float32).mean(axis=0), 0, 1)
    return (grid * 255).round().astype(np.uint8)


def save_reconstruction(
    folder: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray,
    truth: np.ndarray | None = None,
    truth_labels: np.ndarray | None = None,
) -> dict[str, str]:
    """Write ``reconstruction.npz`` and ``grid.png`` (truth above reconstruction when known), owner-only.

    Returns:
        ``{"npz": path, "png": path}``.
    """
    from PIL import Image

    out = make_private_dir(folder)
    arrays = {"reconstruction": np.asarray(images, dtype=np.float32), "labels": np.asarray(labels)}
    if truth is not None:
        arrays["truth"] = np.asarray(truth, dtype=np.float32)
        arrays["truth_labels"] = np.asarray(truth_labels if truth_labels is not None else [])
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    _write_private(out / "reconstruction.npz", buffer.getvalue())
    rows = [arrays["truth"], arrays["reconstruction"]] if truth is not None else [arrays["reconstruction"]]
    png = io.BytesIO()
    Image.fromarray(image_grid(rows)).save(png, format="PNG")
    _write_private(out / "grid.png", png.getvalue())
    return {"npz": str(out / "reconstruction.npz"), "png": str(out / "grid.png")}


def score_reconstruction(
    result: AttackResult,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    prior: np.ndarray | None = None,
    classifier: torch.nn.Module | None = None,
) -> LeakageReport:
    """Score an attack's reconstruction against the client's training images (the attacked batch).

    Args:
        result: the attack's output.
        images: the client's training images ``(N, C, H, W)`` in [0, 1].
        labels: their labels ``(N,)``.
        prior: the image the attack was given (None = flat gray), for RDLV.
        classifier: a reference classifier for ``gia/attacker_accuracy``.

    Returns:
        The :class:`~nvflare_gia.metrics.LeakageReport`, with the attack's no-ground-truth residuals.
    """
    return evaluate_leakage(
        result.images,
        images,
        prior=prior,
        reconstructed_labels=result.labels,
        true_labels=labels,
        site_images=images,
        ground_truth_indices=np.arange(len(images)),
        update_residual=float(result.stats["update_residual"]),
        bn_residual=float(result.stats["bn_residual"]),
        classifier=classifier,
    )


#: RDLV <= 0 counts only as a lower bound when the true images fit the update at least this many
#: times better than the reconstruction (audit mode): the optimisation stopped short of a fit the
#: update admits, so a stronger attack could get closer to the images.
STOPPED_SHORT_FACTOR = 2.0


def stopped_short(matching_loss: float | None, truth_matching_loss: float | None) -> bool:
    """Whether the true images fit the update at least :data:`STOPPED_SHORT_FACTOR` times better
    than the reconstruction (False when either loss is unknown).

    Args:
        matching_loss: the attack's matching loss of its reconstruction.
        truth_matching_loss: the same loss of the true images, in the client's batches.

    Returns:
        True when the leakage measured is only a lower bound.
    """
    if matching_loss is None or truth_matching_loss is None:
        return False
    return STOPPED_SHORT_FACTOR * truth_matching_loss <= matching_loss


def _client_order(target: AuditTarget, threat: ThreatModel) -> np.ndarray:
    """The order of the client's first epoch, drawn as :func:`nvflare_gia.training.train_local` does
    from the reported shuffling seed (which the threat model leaves out: the attack never uses it)
    and the round; the data's own order when no valid seed was reported."""
    reported = target.meta.get(TRAINING_META_KEY)
    seed = reported.get("seed") if isinstance(reported, Mapping) else None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        return np.arange(threat.num_images)
    training = dataclasses.replace(threat.training, seed=int(seed))
    return epoch_orders(threat.num_images, training, int(target.round))[0].numpy()


def audit_update(
    target: AuditTarget,
    attack: GradientInversionAttack,
    *,
    threat_defaults: Mapping[str, Any] | None = None,
    networks: Collection[str] = (),
    truth: SiteData | None = None,
    prior: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
    output_dir: str | os.PathLike | None = None,
    classifier: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Attack one update and score it.

    Args:
        target: the update, its meta and the global model it came from.
        attack: the configured attack.
        threat_defaults: what the job config says when the meta is silent (``ThreatModel.from_meta``).
        networks: dotted paths of the job's own networks the meta may name (``ThreatModel.from_meta``).
        truth: the client's own data (audit mode only): the reconstruction is matched and scored
            against its training images. Without it only ground-truth-free metrics are reported.
        prior: an image not from the client (None = flat gray 0.5), used by the attack and by RDLV.
        candidates: public images not from the client (e.g. a validation split) the attack may
            draw its prior from (see ``GradientInversionAttack.reconstruct``); RDLV stays
            relative to ``prior``.
        output_dir: where to write ``reconstruction.npz`` and ``grid.png``; None writes nothing.
        classifier: a reference classifier; with ``truth`` its accuracy on the reconstructions is
            reported as ``gia/attacker_accuracy`` (Jiang et al. 2025).

    Returns:
        A flat record: ``client``, ``round``, ``gia/status`` (``"ok"``), the ``gia/<metric>`` values,
        ``gia_defense`` from the meta, and the output paths. With ``truth`` holding the attacked
        images (as many as the update's), ``gia/truth_matching_loss`` is the attack's matching loss
        of the true images beside ``gia/matching_loss`` of its reconstruction: about 0 for an
        undefended update of one local epoch (the truth explains it; the true images are put in
        the batches :func:`nvflare_gia.training.train_local` drew from the reported seed and the
        round, so a client that shuffles otherwise, or trains several epochs, adds to it), so a
        large gap means the optimisation stopped short and the leakage reported is a lower bound;
        a defended update the truth no longer explains better than the reconstruction has lost its
        link to the images.
    """
    started = time.monotonic()
    threat = ThreatModel.from_meta(target.meta, threat_defaults, networks=networks)
    result = attack.reconstruct(target.global_state, target.update, threat, prior=prior, candidates=candidates)
    record: dict[str, Any] = {"client": target.client, "round": int(target.round), "gia/status": "ok"}
    record.update(result.to_dict())
    truth_images = truth_labels = None
    if truth is not None:
        truth_images, truth_labels = truth.train_images, truth.train_labels
        report = score_reconstruction(result, truth_images, truth_labels, prior=prior, classifier=classifier)
        record.update(report.to_dict())
        if tuple(np.shape(truth_images)) == (threat.num_images, threat.in_channels, threat.image_size, threat.image_size):
            client_order = _client_order(target, threat)
            record["gia/truth_matching_loss"] = attack.matching_loss(
                target.global_state, target.update, threat, truth_images[client_order], truth_labels[client_order]
            )
        order = [gt for _, gt in report.matching]
        truth_images, truth_labels = truth_images[order], truth_labels[order]
        reconstruction_order = [rec for rec, _ in report.matching]
        images, labels = result.images[reconstruction_order], result.labels[reconstruction_order]
    else:
        images, labels = result.images, result.labels
    if output_dir is not None:
        record["files"] = save_reconstruction(output_dir, images, labels, truth_images, truth_labels)
    record["num_images"] = int(threat.num_images)
    record["batch_size"] = int(threat.batch_size)
    record["gia_defense"] = target.meta.get("gia_defense")
    record["gia/seconds"] = time.monotonic() - started
    return record
