"""Learnable latent perturbation (after Jiang, Firouzi and Chakrabarty, 2025).

The defense perturbs the images' latent representation (the output of an early block of the
network) by a per-image shift ``δ`` learned each round in a short min–max game, then recomputes the
update by local training with the shifted latent and sends that update instead of the clean one.
The paper leaves the game open; this module chooses:

* **Where.** ``z = h(x)``, the output of module ``split_layer`` (default: the first pooling layer,
  the end of the stem: ``features.3`` = conv–BN–ReLU–pool for ``SmallCNN``, ``pool0`` for
  DenseNet-121, ``maxpool`` for ResNet-18; in a network without pooling, the first block that
  downsamples: a strided convolution, or a whole residual unit). ``δ`` is added to that output;
  the layers before it still see the true image.
* **The simulated attacker (inner min).** A gradient-inversion attacker that learned the latent
  ``z + δ`` from the update must find an image with that latent. It is simulated by
  ``attacker_steps`` gradient-descent steps on ``½‖h(x') − (z + δ)‖²`` *started from the true
  images* (the most informed attacker), with step ``1/L`` where ``L`` estimates the largest
  eigenvalue of ``JᵀJ`` (``J = ∂h/∂x``, three power iterations). Its reconstruction error is
  ``‖x'_K − x‖²``; with ``δ = 0`` it is 0.
* **The defender (outer max).** ``δ`` starts from a random direction (the defense's own seeded
  generator: sample-specific, different every round) on the sphere ``‖δ_i‖ = epsilon·‖z_i‖`` and
  takes ``steps`` normalised ascent steps on the attacker's error, differentiating through the
  attacker's steps, each followed by projection onto the ball ``‖δ_i‖ ≤ epsilon·‖z_i‖``.
  Utility constraint: whenever the task loss (cross-entropy with the shifted latent, BatchNorm
  in train mode as in local training) exceeds the clean loss by more than ``task_loss_bound``,
  the step descends the task loss instead; at the end ``δ`` is halved until the bound holds, at
  most 3 times: if even ``δ/8`` breaks the bound the call fails, so a shift shrunk to nothing never
  passes as a defended update (on 64×64 chest X-rays with ``SmallCNN``, untrained or trained for 5
  epochs, 1–8 images, ``epsilon`` 0.3–3 and ``task_loss_bound`` 1e-4–0.1, no call needed a
  halving: the descent steps keep the bound; on PneumoniaMNIST, in round 2 of ``bench defenses``
  seed 5, ``epsilon`` 3 broke it even after 3 halvings, and the calibrated search records such a
  strength as not applied).
* **The update.** The client's round is replayed exactly (:func:`nvflare_gia.training.train_local`,
  same batches, shuffling seed, optimizer and round) with ``δ_i`` added to image ``i``'s latent at
  every step; every entry of the sent update comes from that replay (BatchNorm statistics after
  the split are recomputed on the shifted latents; those before it are unchanged). The received
  update only fixes keys, shapes and step counts, so put this defense first in a chain.

Images are processed in chunks of the client's batch size (in index order) for the game.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nvflare_gia.defenses._checks import check_int, check_number, check_seed
from nvflare_gia.defenses._noise import context_round
from nvflare_gia.defenses._replay import (
    LatentShift,
    build_shadow,
    check_step_counts,
    context_tensors,
    early_output,
    replay_update,
    shifted,
    stem_end_module,
)
from nvflare_gia.defenses._update import copy_value, is_perturbable, restore_like, squared_norm_float64, to_tensor, validate_update
from nvflare_gia.defenses.base import Defense, DefenseContext, DefenseOutcome
from nvflare_gia.errors import ConfigError, DataError
from nvflare_gia.threads import torch_threads

__all__ = ["LatentPerturbationConfig", "LatentPerturbation"]

logger = logging.getLogger(__name__)

_POWER_ITERATIONS = 3
_ASCENT_STEP = 0.5  # defender step, as a fraction of each image's radius epsilon·‖z_i‖
_MAX_HALVINGS = 3  # the sent shift is at least 1/8 of the learned one, or the call fails


@dataclasses.dataclass(frozen=True)
class LatentPerturbationConfig:
    """Configuration of :class:`LatentPerturbation`.

    Args:
        epsilon: bound of each image's latent shift relative to its latent: ``‖δ_i‖ <= epsilon·‖z_i‖``
            (> 0); larger = more privacy, less utility.
        task_loss_bound: allowed increase of the cross-entropy over the clean latent (> 0, nats).
        steps: defender ascent steps per round (>= 1).
        attacker_steps: gradient steps of the simulated latent-inversion attacker (>= 1).
        split_layer: module whose output is perturbed; None = the first pooling layer, or the
            first block that downsamples in a network without pooling.
        seed: seed of the initial directions (>= 0); None (the default) draws fresh OS entropy
            every call. A seed in the job configuration is known to the server: fix it only for tests.
        num_threads: CPU threads torch may use during a call (restored afterwards); None leaves
            the process setting. The game runs many small operations, which slow down badly when
            OpenMP threads compete with other processes for the cores; 1 is then fastest.

    Raises:
        TypeError: for an argument of the wrong type.
        ConfigError: for a value out of range.

    Example:
        >>> LatentPerturbationConfig(epsilon=0.2).steps
        5
    """

    epsilon: float = 0.3
    task_loss_bound: float = 0.1
    steps: int = 5
    attacker_steps: int = 5
    split_layer: str | None = None
    seed: int | None = None
    num_threads: int | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "epsilon", check_number(owner, "epsilon", self.epsilon, low=0.0, low_open=True))
        object.__setattr__(self, "task_loss_bound", check_number(owner, "task_loss_bound", self.task_loss_bound, low=0.0, low_open=True))
        object.__setattr__(self, "steps", check_int(owner, "steps", self.steps, minimum=1))
        object.__setattr__(self, "attacker_steps", check_int(owner, "attacker_steps", self.attacker_steps, minimum=1))
        if self.split_layer is not None and (not isinstance(self.split_layer, str) or not self.split_layer.strip()):
            raise ConfigError(f"{owner}: split_layer must be a module name or None, got {self.split_layer!r}.")
        object.__setattr__(self, "seed", check_seed(owner, self.seed))
        object.__setattr__(self, "num_threads", check_int(owner, "num_threads", self.num_threads, minimum=1, allow_none=True))


def _per_image_norm(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (t.dim() - 1)))


def _project(delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    norm = _per_image_norm(delta)
    return delta * torch.clamp(radius / norm.clamp_min(1e-12), max=1.0)


class _Game:
    """The min–max game on one chunk of images (see the module docstring)."""

    def __init__(self, model: nn.Module, split: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: LatentPerturbationConfig) -> None:
        self.model, self.split, self.images, self.labels, self.config = model, split, images, labels, config
        with torch.no_grad():
            self.latent = early_output(model, split, images).detach()
            self.clean_loss = float(self.task_loss(None))
        self.radius = config.epsilon * _per_image_norm(self.latent)
        self.step = self._attacker_step_size()

    def task_loss(self, delta: torch.Tensor | None) -> torch.Tensor:
        with shifted(self.split, delta):
            return F.cross_entropy(self.model(self.images), self.labels)

    def _attacker_step_size(self) -> float:
        """``1 / λ_max(JᵀJ)`` from a few power iterations (``J = ∂h/∂x`` at the true images)."""
        x = self.images.clone().requires_grad_(True)
        z = early_output(self.model, self.split, x)
        u = torch.zeros_like(z, requires_grad=True)
        (jt_u,) = torch.autograd.grad((z * u).sum(), x, create_graph=True)
        generator = torch.Generator().manual_seed(0)
        v = torch.randn(x.shape, generator=generator)
        eigen = 0.0
        for _ in range(_POWER_ITERATIONS):
            v = v / v.norm().clamp_min(1e-12)
            (jv,) = torch.autograd.grad((jt_u * v).sum(), u, retain_graph=True)
            (jtjv,) = torch.autograd.grad((z * jv).sum(), x, retain_graph=True)
            eigen = float(jtjv.norm())
            v = jtjv.detach()
        if not (eigen > 0 and math.isfinite(eigen)):
            raise DataError(f"LatentPerturbation: the early block's Jacobian is degenerate (largest eigenvalue {eigen!r}).")
        return 1.0 / eigen

    def attacker_error(self, delta: torch.Tensor) -> torch.Tensor:
        """Squared distance to the true images after the simulated attacker's steps (differentiable in ``delta``)."""
        target = self.latent + delta
        x = self.images.clone().requires_grad_(True)
        for _ in range(self.config.attacker_steps):
            residual = early_output(self.model, self.split, x) - target
            (grad,) = torch.autograd.grad(0.5 * residual.pow(2).sum(), x, create_graph=True)
            x = x - self.step * grad
        return (x - self.images).pow(2).sum()

    def play(self, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        delta = torch.randn(self.latent.shape, generator=generator)
        delta = delta * self.radius / _per_image_norm(delta).clamp_min(1e-12)
        for _ in range(cfg.steps):
            delta = delta.detach().requires_grad_(True)
            loss = self.task_loss(delta)
            if float(loss.detach()) - self.clean_loss > cfg.task_loss_bound:
                (grad,) = torch.autograd.grad(loss, delta)
                grad = -grad
            else:
                objective = self.attacker_error(delta)
                (grad,) = torch.autograd.grad(objective, delta)
            unit = grad / _per_image_norm(grad).clamp_min(1e-30)
            delta = _project(delta.detach() + _ASCENT_STEP * self.radius * unit, self.radius)
        delta = delta.detach()
        with torch.no_grad():
            loss = float(self.task_loss(delta))
            halvings = 0
            while loss - self.clean_loss > cfg.task_loss_bound and halvings < _MAX_HALVINGS:
                delta = 0.5 * delta
                loss = float(self.task_loss(delta))
                halvings += 1
        if loss - self.clean_loss > cfg.task_loss_bound:
            raise DataError(
                f"LatentPerturbation: no latent shift of at least 1/{2**_MAX_HALVINGS} of the learned one keeps the task loss "
                f"within task_loss_bound={cfg.task_loss_bound} of the clean loss {self.clean_loss:.6g} (got {loss:.6g} after "
                f"{halvings} halvings); raise task_loss_bound or lower epsilon."
            )
        final_error = float(self.attacker_error(delta).detach())
        stats = {
            "clean_loss": self.clean_loss,
            "loss": loss,
            "attacker_error": final_error,
            "image_norm_sq": float(self.images.pow(2).sum()),
            "relative_shift": float((_per_image_norm(delta) / _per_image_norm(self.latent).clamp_min(1e-12)).mean()),
            "halvings": halvings,
        }
        return delta, stats


class LatentPerturbation(Defense):
    """Send the update of local training on a learned, bounded latent perturbation (after Jiang, Firouzi and Chakrabarty, 2025).

    See the module docstring for the game and its choices. Needs the global model and a
    :class:`DefenseContext` with the client's data and training configuration. Cost per call:
    ``steps`` × (one forward/backward of the network plus ``attacker_steps`` second-order passes
    through the early block) over the local images, plus one replay of the local round.

    Args:
        config: the configuration; None uses the :class:`LatentPerturbationConfig` defaults.

    Raises:
        TypeError: if ``config`` is not a ``LatentPerturbationConfig``.

    Example:
        >>> import copy
        >>> from nvflare_gia.models import SmallCNN
        >>> from nvflare_gia.training import TrainingConfig, train_local
        >>> model = SmallCNN(init_seed=0); start = copy.deepcopy(model.state_dict())
        >>> x, y = torch.rand(2, 1, 16, 16), torch.tensor([0, 1])
        >>> _ = train_local(model, x, y, 2, TrainingConfig())
        >>> update = {k: v - start[k] for k, v in model.state_dict().items()}
        >>> context = DefenseContext(images=x.numpy(), labels=y.numpy(), batch_size=2, training=TrainingConfig(),
        ...                          model="small_cnn", num_classes=2, in_channels=1, round_index=0)
        >>> out = LatentPerturbation(LatentPerturbationConfig(seed=0)).apply(update, global_state=start, context=context)
        >>> out.params["split_layer"]
        'features.3'
    """

    requires_global_state = True
    requires_data = True

    def __init__(self, config: LatentPerturbationConfig | None = None) -> None:
        config = LatentPerturbationConfig() if config is None else config
        if not isinstance(config, LatentPerturbationConfig):
            raise TypeError(f"LatentPerturbation: config must be a LatentPerturbationConfig, got {type(config).__name__}.")
        super().__init__(config.seed)
        self.config = config

    def apply(
        self, update: Mapping[str, Any], *, global_state: Mapping[str, Any] | None = None, context: DefenseContext | None = None
    ) -> DefenseOutcome:
        """Return the update of the client's round replayed with the learned latent shifts.

        Args:
            update: the client's update ``{key: delta}`` (NumPy arrays or torch tensors).
            global_state: the global model the client trained from (required).
            context: the client's data and training configuration (required).

        Returns:
            The :class:`DefenseOutcome`; ``params`` holds the split layer, the mean relative
            shift, the most halvings any chunk's shift needed (0–3), the clean and perturbed task
            losses and the simulated attacker's error.

        Raises:
            TypeError: for wrong argument types.
            DataError: if the global model or the data is missing, the update does not fit the
                global model, the replay's step count differs from the client's, or even 1/8 of
                the learned shift breaks ``task_loss_bound``.
            ConfigError: if ``split_layer`` names no module of the network.
        """
        with torch_threads(self.config.num_threads):
            return self._apply(update, global_state, context)

    def _apply(self, update: Mapping[str, Any], global_state: Mapping[str, Any] | None, context: DefenseContext | None) -> DefenseOutcome:
        started = time.perf_counter()
        owner = self.name
        cfg = self.config
        if global_state is None:
            raise DataError(f"{owner}: global_state must be the global model the client trained from, got None.")
        validate_update(update, global_state, owner=owner)
        round_index = context_round(context, owner)
        if context is None:
            raise DataError(f"{owner}: context must give the client's data and training configuration, got None.")
        context.require_data(owner)
        seed = self._next_seed(round_index)
        model, global_tensors = build_shadow(global_state, context, owner)
        images, labels = context_tensors(context, owner)
        split_name = cfg.split_layer or stem_end_module(model, images, owner)
        modules = dict(model.named_modules())
        if split_name not in modules:
            raise ConfigError(f"{owner}: split_layer must name a module of network {context.model!r}, got {split_name!r}.")

        generator = self._torch_generator(seed)
        chunk = int(context.batch_size)
        deltas, totals = [], {"clean_loss": 0.0, "loss": 0.0, "attacker_error": 0.0, "image_norm_sq": 0.0, "relative_shift": 0.0}
        halvings = 0
        for start in range(0, images.shape[0], chunk):
            game = _Game(model, modules[split_name], images[start : start + chunk], labels[start : start + chunk], cfg)
            delta, stats = game.play(generator)
            halvings = max(halvings, stats.pop("halvings"))
            deltas.append(delta)
            weight = delta.shape[0] / images.shape[0]
            for key in totals:
                totals[key] += stats[key] * (1.0 if key in ("attacker_error", "image_norm_sq") else weight)
        all_deltas = torch.cat(deltas)
        logger.debug(
            "latent game: mean relative shift %.3g, task loss %.4g -> %.4g, simulated attacker error %.4g",
            totals["relative_shift"], totals["clean_loss"], totals["loss"], totals["attacker_error"],
        )

        def wrap(net: nn.Module) -> nn.Module:
            return LatentShift(net, dict(net.named_modules())[split_name], all_deltas)

        replay = replay_update(global_tensors, context, LatentShift.with_index_channel(images), labels, wrap=wrap)
        check_step_counts(update, replay, owner)
        out: dict[str, Any] = {}
        squared = 0.0
        for key, value in update.items():
            if is_perturbable(key, value):
                clean = to_tensor(value, dtype=torch.float64)
                squared += squared_norm_float64(replay[key] - clean)  # float64 by type promotion
                out[key] = restore_like(replay[key], value)
            else:
                out[key] = copy_value(value)
        params = {
            "epsilon": cfg.epsilon,
            "task_loss_bound": cfg.task_loss_bound,
            "steps": cfg.steps,
            "attacker_steps": cfg.attacker_steps,
            "split_layer": split_name,
            "relative_shift": totals["relative_shift"],
            "halvings": halvings,
            "clean_loss": totals["clean_loss"],
            "perturbed_loss": totals["loss"],
            "attacker_relative_error": math.sqrt(totals["attacker_error"] / max(totals["image_norm_sq"], 1e-30)),
            "num_images": int(images.shape[0]),
        }
        return DefenseOutcome(update=out, noise_norm=math.sqrt(squared), params=params, seconds=time.perf_counter() - started)
