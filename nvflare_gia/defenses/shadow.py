"""Shadow-model defense: saliency-guided, sample-specific noise in the update (after Jiang, Ma, Yang 2025).

"Shadow Defense against Gradient Inversion Attack in Federated Learning" (Jiang, Ma and Yang,
2025) lets a shadow copy of the global model find, for each local image, the regions the model is
most sensitive to, and perturbs what those regions contribute to the shared update, leaving the
rest of the update as it is. The paper leaves the mechanics open; this module chooses:

1. **Saliency.** A shadow copy of the global model (BatchNorm in eval mode) explains each local
   image for its true label: ``saliency="gradcam"`` uses MONAI's ``monai.visualize.GradCAM`` on
   the last convolution (``target_layer``), computed per class so every image is explained for
   its own label; ``"input_gradient"`` uses ``|∂ loss / ∂ image|`` summed over channels. An image
   whose Grad-CAM map is flat (all ReLU'd to zero) falls back to its input gradient.
2. **Mask and noise.** The top ``mask_fraction`` of each image's pixels form its mask; noise
   ``η ~ N(0, noise_std²)`` is drawn per image and pixel and kept only inside the mask.
3. **What the regions contribute.** The client's round is replayed exactly
   (:func:`nvflare_gia.training.train_local`: same batches, shuffling seed, optimizer and round)
   on the noised images ``x + mask·η``; the direction ``d = ΔW(x + mask·η) − ΔW`` is what the
   noise in the sensitive regions changes in the update, BatchNorm running statistics included
   (they are recomputed from the perturbed images by the replay). The received update ``ΔW``
   serves as the clean reference, so the defense costs one saliency pass plus one local round —
   not two — and assumes the client trained with ``train_local`` and reported its hyperparameters
   in ``meta["gia_training"]`` (the step counters are checked). Put this defense first in a
   chain: noise added by an earlier defense would leak into ``d``.
4. **Budget.** The sent update is ``ΔW + s·d`` with ``s = budget·‖ΔW‖ / ‖d‖`` over the
   parameters, so the injected part has norm ``budget × ‖ΔW‖`` on the parameters; the same ``s``
   scales the BatchNorm-statistics part, so parameters and statistics stay consistent with one
   perturbed input (to first order, the update of ``x + s·mask·η``). Integer buffers are untouched.

The attacker, matching ``ΔW + s·d``, is pulled toward images whose sensitive regions carry the
sample-specific noise.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nvflare_gia.defenses._checks import check_int, check_number, check_seed, look_up_option
from nvflare_gia.defenses._noise import context_round
from nvflare_gia.defenses._replay import build_shadow, check_step_counts, context_tensors, last_module_of, replay_update
from nvflare_gia.defenses._update import copy_value, is_perturbable, restore_like, squared_norm_float64, to_tensor, validate_update
from nvflare_gia.defenses.base import Defense, DefenseContext, DefenseOutcome
from nvflare_gia.errors import ConfigError, DataError
from nvflare_gia.threads import torch_threads

__all__ = ["SaliencyMethod", "ShadowModelConfig", "ShadowModelDefense", "compute_saliency", "saliency_mask"]

logger = logging.getLogger(__name__)

_CHUNK = 64  # images per saliency pass


class SaliencyMethod(str, enum.Enum):
    """How the shadow model finds each image's sensitive pixels.

    ``gradcam``: MONAI Grad-CAM on the last convolution, for the image's true label.
    ``input_gradient``: magnitude of the loss gradient with respect to the pixels.
    """

    GRADCAM = "gradcam"
    INPUT_GRADIENT = "input_gradient"


@dataclasses.dataclass(frozen=True)
class ShadowModelConfig:
    """Configuration of :class:`ShadowModelDefense`.

    Args:
        budget: norm of the injected perturbation relative to the update's norm over the
            parameters (> 0); larger = more privacy, less utility. With ``d`` roughly orthogonal
            to the update, the cosine between sent and clean updates is roughly ``1/sqrt(1+budget²)``
            (0.67 measured at budget 1 on the benchmark CNN).
        mask_fraction: share of each image's pixels (the most salient) that get noise, in (0, 1].
        saliency: ``gradcam`` or ``input_gradient`` (see :class:`SaliencyMethod`).
        noise_std: standard deviation of the pixel noise inside the mask (> 0; images are in
            [0, 1]); only sets where the update is linearised, since the result is rescaled to
            ``budget``.
        target_layer: module name for Grad-CAM; None = the network's last ``Conv`` layer
            (``features.8`` for ``SmallCNN``).
        seed: seed of the noise (>= 0); None (the default) draws fresh OS entropy every call. A
            seed in the job configuration is known to the server: fix it only for tests.
        num_threads: CPU threads torch may use during a call (restored afterwards); None leaves
            the process setting. The defense runs many small operations, which slow down badly
            when OpenMP threads compete with other processes for the cores; 1 is then fastest.

    Raises:
        TypeError: for an argument of the wrong type.
        ConfigError: for a value out of range or an unknown saliency method.

    Example:
        >>> ShadowModelConfig(saliency="input_gradient").mask_fraction
        0.1
    """

    budget: float = 1.0
    mask_fraction: float = 0.1
    saliency: str = SaliencyMethod.GRADCAM.value
    noise_std: float = 0.1
    target_layer: str | None = None
    seed: int | None = None
    num_threads: int | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "budget", check_number(owner, "budget", self.budget, low=0.0, low_open=True))
        object.__setattr__(self, "mask_fraction", check_number(owner, "mask_fraction", self.mask_fraction, low=0.0, high=1.0, low_open=True))
        object.__setattr__(self, "saliency", look_up_option(owner, "saliency", self.saliency, SaliencyMethod))
        object.__setattr__(self, "noise_std", check_number(owner, "noise_std", self.noise_std, low=0.0, low_open=True))
        if self.target_layer is not None and (not isinstance(self.target_layer, str) or not self.target_layer.strip()):
            raise ConfigError(f"{owner}: target_layer must be a module name or None, got {self.target_layer!r}.")
        object.__setattr__(self, "seed", check_seed(owner, self.seed))
        object.__setattr__(self, "num_threads", check_int(owner, "num_threads", self.num_threads, minimum=1, allow_none=True))


def _input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        maps = []
        for start in range(0, images.shape[0], _CHUNK):
            x = images[start : start + _CHUNK].clone().requires_grad_(True)
            loss = F.cross_entropy(model(x), labels[start : start + _CHUNK], reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            maps.append(grad.abs().sum(dim=1, keepdim=True))
        return torch.cat(maps).detach()
    finally:
        model.train(was_training)


def _gradcam(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layer: str) -> torch.Tensor:
    from monai.visualize import GradCAM

    names = {name for name, _ in model.named_modules()}
    if layer not in names:
        raise ConfigError(f"ShadowModelDefense: target_layer must name a module of the network, got {layer!r}.")
    # Identity post-processing: MONAI's default normaliser maps (min, max) to (1, 0), flipping the ranking.
    cam = GradCAM(nn_module=model, target_layers=layer, postprocessing=lambda maps: maps)
    out = torch.zeros(images.shape[0], 1, *images.shape[2:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for cls in torch.unique(labels).tolist():
            index = torch.nonzero(labels == cls).reshape(-1)
            for start in range(0, index.numel(), _CHUNK):
                chunk = index[start : start + _CHUNK]
                maps = cam(images[chunk], class_idx=int(cls))
                out[chunk] = maps.detach().float().reshape(chunk.numel(), 1, *images.shape[2:])
    model.zero_grad(set_to_none=True)
    return out


def compute_saliency(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, method: str, target_layer: str | None = None) -> tuple[torch.Tensor, int]:
    """Per-pixel saliency ``(N, 1, H, W)`` (>= 0) of each image for its label under ``model``.

    Args:
        model: the shadow network (BatchNorm is put in eval mode for the pass and restored).
        images: ``(N, C, H, W)``.
        labels: ``(N,)`` integer labels.
        method: ``gradcam`` or ``input_gradient``.
        target_layer: Grad-CAM layer; None = the last convolution.

    Returns:
        ``(saliency, fallbacks)``: the maps and how many flat Grad-CAM maps were replaced by the
        input gradient.
    """
    key = look_up_option("compute_saliency", "method", method, SaliencyMethod)
    if key == SaliencyMethod.INPUT_GRADIENT.value:
        return _input_gradient(model, images, labels), 0
    layer = target_layer or last_module_of(model, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    maps = _gradcam(model, images, labels, layer)
    flat = maps.reshape(maps.shape[0], -1)
    degenerate = (flat.max(dim=1).values - flat.min(dim=1).values) <= 0
    if bool(degenerate.any()) or not bool(torch.isfinite(maps).all()):
        bad = torch.nonzero(degenerate | ~torch.isfinite(flat).all(dim=1)).reshape(-1)
        maps[bad] = _input_gradient(model, images[bad], labels[bad])
        logger.debug("Grad-CAM maps of %d image(s) were flat; used their input gradients", int(bad.numel()))
        return maps, int(bad.numel())
    return maps, 0


def _work_dtype(value: Any) -> torch.dtype:
    """float64 for float64 entries, float32 for the others (float16/bfloat16 are widened)."""
    return torch.float64 if value.dtype in (torch.float64, np.float64) else torch.float32


def saliency_mask(saliency: torch.Tensor, fraction: float) -> torch.Tensor:
    """Binary mask ``(N, 1, H, W)`` of the ``ceil(fraction·H·W)`` most salient pixels of each image."""
    n = saliency.shape[0]
    flat = saliency.reshape(n, -1)
    k = max(1, min(flat.shape[1], math.ceil(float(fraction) * flat.shape[1])))
    index = flat.topk(k, dim=1).indices
    mask = torch.zeros_like(flat).scatter_(1, index, 1.0)
    return mask.reshape(saliency.shape)


class ShadowModelDefense(Defense):
    """Saliency-guided, sample-specific update perturbation (after Jiang, Ma and Yang, 2025).

    See the module docstring for the algorithm and its choices. Needs the global model
    (``global_state``) and a :class:`DefenseContext` with the client's images, labels, batch size,
    training configuration and network name. Cost per call: one saliency pass (forward and
    backward over the local images) plus one replay of the local round.

    Args:
        config: the configuration; None uses the :class:`ShadowModelConfig` defaults.

    Raises:
        TypeError: if ``config`` is not a ``ShadowModelConfig``.

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
        >>> out = ShadowModelDefense(ShadowModelConfig(seed=0)).apply(update, global_state=start, context=context)
        >>> sorted(out.update) == sorted(update)
        True
    """

    requires_global_state = True
    requires_data = True

    def __init__(self, config: ShadowModelConfig | None = None) -> None:
        config = ShadowModelConfig() if config is None else config
        if not isinstance(config, ShadowModelConfig):
            raise TypeError(f"ShadowModelDefense: config must be a ShadowModelConfig, got {type(config).__name__}.")
        super().__init__(config.seed)
        self.config = config

    def apply(
        self, update: Mapping[str, Any], *, global_state: Mapping[str, Any] | None = None, context: DefenseContext | None = None
    ) -> DefenseOutcome:
        """Return ``ΔW + s·d`` (see the module docstring); the input is not modified.

        Args:
            update: the client's update ``{key: delta}`` (NumPy arrays or torch tensors).
            global_state: the global model the client trained from (required).
            context: the client's data and training configuration (required).

        Returns:
            The :class:`DefenseOutcome`; ``params`` holds the scale ``s``, the update's norm and
            the number of Grad-CAM fallbacks.

        Raises:
            TypeError: for wrong argument types.
            DataError: if the global model or the data is missing, the update does not fit the
                global model, the replay's step count differs from the client's, or the noise
                leaves the update unchanged.
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

        saliency, fallbacks = compute_saliency(model, images, labels, cfg.saliency, cfg.target_layer)
        mask = saliency_mask(saliency, cfg.mask_fraction)
        generator = self._torch_generator(seed)
        noise = torch.randn(images.shape, generator=generator) * cfg.noise_std * mask
        replay = replay_update(global_tensors, context, images + noise, labels)
        check_step_counts(update, replay, owner)

        keys = [k for k, v in update.items() if is_perturbable(k, v)]
        param_names = {name for name, _ in model.named_parameters()}
        clean = {k: to_tensor(update[k], dtype=_work_dtype(update[k])) for k in keys}
        direction = {k: replay[k].to(clean[k].dtype) - clean[k] for k in keys}
        update_norm = math.sqrt(sum(squared_norm_float64(clean[k]) for k in keys if k in param_names))
        direction_norm = math.sqrt(sum(squared_norm_float64(direction[k]) for k in keys if k in param_names))
        if not (update_norm > 0 and direction_norm > 0 and math.isfinite(direction_norm)):
            raise DataError(
                f"{owner}: cannot scale the perturbation: update norm {update_norm!r}, perturbation norm {direction_norm!r} "
                "over the parameters (both must be finite and > 0)."
            )
        scale = cfg.budget * update_norm / direction_norm
        out: dict[str, Any] = {}
        squared = 0.0
        for key, value in update.items():
            if key in direction:
                injected = scale * direction[key]
                squared += squared_norm_float64(injected)
                out[key] = restore_like(clean[key] + injected, value)
            else:
                out[key] = copy_value(value)
        params = {
            "budget": cfg.budget,
            "mask_fraction": cfg.mask_fraction,
            "saliency": cfg.saliency,
            "noise_std": cfg.noise_std,
            "target_layer": cfg.target_layer,
            "scale": scale,
            "update_norm": update_norm,
            "gradcam_fallbacks": fallbacks,
            "num_images": int(images.shape[0]),
        }
        return DefenseOutcome(update=out, noise_norm=math.sqrt(squared), params=params, seconds=time.perf_counter() - started)
