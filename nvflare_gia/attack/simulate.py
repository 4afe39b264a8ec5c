"""Differentiable replay of a client's local training round (:func:`nvflare_gia.training.train_local`).

The attack optimises dummy images so that this replay reproduces the client's update. The replay
runs the network with :func:`torch.func.functional_call` on explicit parameter and buffer tensors,
BatchNorm in train mode and random layers such as dropout at their expectation
(:func:`set_replay_mode`) or with the client's masks where the update shows them
(:func:`read_dropout_masks`), mean cross-entropy, and re-implements the optimizer step of
``torch.optim.SGD`` (momentum, weight decay, no dampening, no Nesterov) and ``torch.optim.Adam``
(betas 0.9/0.999, eps 1e-8, L2 weight decay) as plain tensor maths, so that with
``create_graph=True`` the whole round is differentiable in the images (and soft labels).

The dummy images are split into mini-batches in index order (``[0:B]``, ``[B:2B]``, ..., the last
one smaller), the same split every epoch: the dummies are free variables, so the client's shuffling
only permutes which dummy plays which image. Their labels are not free: their order fixes which
classes each step sees, so the attack spreads them over the steps
(:func:`nvflare_gia.attack.labels.spread_over_batches`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from nvflare_gia.attack.bn_stats import BNStatistics, ema_step_weights
from nvflare_gia.attack.threat_model import ThreatModel, bn_momenta
from nvflare_gia.errors import DataError
from nvflare_gia.training import OptimizerName

__all__ = [
    "LocalTrainingSimulator",
    "SimulationResult",
    "layers_beyond_stride",
    "read_dropout_masks",
    "set_replay_mode",
    "simulate_local_training",
]

logger = logging.getLogger(__name__)

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


@dataclasses.dataclass
class SimulationResult:
    """Outcome of one simulated round.

    Attributes:
        update: ``{state_dict key: new - old}`` for every buffer and every matched parameter (all
            of them unless the simulator was given ``matched_params``). Parameter entries are
            differentiable in the images when ``create_graph=True``; buffer entries
            (BatchNorm running statistics, ``num_batches_tracked``) are exact values, detached.
        bn_statistics: per BatchNorm layer, the batch mean and UNBIASED batch variance of its
            input, averaged over the steps with the weights of
            :func:`nvflare_gia.attack.bn_stats.ema_step_weights` (the quantity
            :func:`nvflare_gia.attack.bn_stats.recover_bn_statistics` recovers); differentiable.
        losses: the training loss of each step (detached floats).
    """

    update: dict[str, torch.Tensor]
    bn_statistics: dict[str, BNStatistics]
    losses: list[float]


def set_replay_mode(model: nn.Module) -> nn.Module:
    """Put ``model`` in the mode the replay runs it in, in place: normalisation layers with batch
    statistics (BatchNorm, InstanceNorm) in train mode, as in the client's training; every other
    module in eval mode, so that random layers (dropout, MONAI's drop-connect, RReLU) give their
    expectation. The client's random draws are unknown to the server (except where the update shows
    them: :func:`read_dropout_masks`); a fixed replay keeps the matching loss a deterministic
    function of the images (docs/benchmarks.md: with dropout 0.2 before the classifier the random
    replay left the truth a matching loss of 0.14-0.25 that changed from call to call, the
    expectation 0.12, the mask read off a one-image update 0).

    Args:
        model: the network.

    Returns:
        ``model``.
    """
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            module.train()
    return model


def read_dropout_masks(
    model: nn.Module, global_state: Mapping[str, torch.Tensor], update: Mapping[str, torch.Tensor], threat: ThreatModel
) -> dict[str, torch.Tensor]:
    """The client's dropout masks, where the update shows them: for a round of one image and one
    step, an ``nn.Dropout`` whose output is the input of an ``nn.Linear`` zeroes exactly the columns
    of that layer's weight gradient it dropped, so the update's column equals what the optimizer
    does with a zero gradient (nothing for SGD without weight decay).

    Args:
        model: the network with the global weights (a copy runs one probe forward in eval mode).
        global_state: the global parameters (tensors).
        update: the client's update (tensors).
        threat: the client's training configuration.

    Returns:
        ``{dropout module name: (1, features) tensor}``, the mask over ``1 - p``, to multiply that
        module's input by in the replay; empty for other rounds or networks.
    """
    modules = dict(model.named_modules())
    if threat.num_images != 1 or threat.num_steps != 1 or not any(type(m) is nn.Dropout for m in modules.values()):
        return {}
    probe = copy.deepcopy(model).eval()
    outputs: list[tuple[torch.Tensor, str]] = []  # each dropout's output (eval mode: its input), kept alive
    feeds: dict[str, str] = {}  # dropout name -> the linear layer it feeds

    def record_dropout(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            outputs.append((output, name))
        return hook

    def record_linear(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            feeds.update({source: name for tensor, source in outputs if inputs[0] is tensor})
        return hook

    handles = []
    for name, module in probe.named_modules():
        if type(module) is nn.Dropout:
            handles.append(module.register_forward_hook(record_dropout(name)))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(record_linear(name)))
    try:
        with torch.no_grad():
            probe(torch.zeros(1, threat.in_channels, threat.image_size, threat.image_size))
    finally:
        for handle in handles:
            handle.remove()
    cfg = threat.training
    masks = {}
    for dropout, linear in feeds.items():
        key = f"{linear}.weight"
        if key not in update or key not in global_state:
            continue
        weight = global_state[key].to(torch.float64)
        decay = float(cfg.weight_decay) * weight  # the gradient a dropped feature's column still gets
        if cfg.optimizer == OptimizerName.ADAM.value:
            unchanged = -float(cfg.lr) * decay / (decay.abs() + _ADAM_EPS)
        else:
            unchanged = -float(cfg.lr) * decay
        gap = (update[key].to(torch.float64) - unchanged).abs().amax(dim=0)
        kept = gap > 1e-5 * float(gap.max()) if float(gap.max()) > 0 else torch.zeros_like(gap, dtype=torch.bool)
        p = float(modules[dropout].p)
        masks[dropout] = (kept.to(torch.float32) / (1.0 - p)).reshape(1, -1) if p < 1.0 else torch.zeros(1, gap.numel())
    return masks


def layers_beyond_stride(model: nn.Module, in_channels: int, image_size: int, max_stride: int) -> set[str]:
    """Names of the modules whose output is downsampled from the input by more than ``max_stride``
    per side (``height * width * max_stride**2 < image_size**2``).

    One forward pass of a copy of ``model`` in eval mode on a square input, so ``model`` and its
    buffers are not touched. Modules whose output has no spatial dimensions (linear layers) are
    never in the set; a module called more than once is in it when any call's output is.

    Args:
        model: the network.
        in_channels: input channels.
        image_size: input height and width.
        max_stride: the largest downsampling factor per side that is not "beyond" (>= 1).

    Returns:
        The module names (as in ``named_modules``).
    """
    probe = copy.deepcopy(model).eval()
    beyond: set[str] = set()

    def record(name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.dim() >= 3 and math.prod(output.shape[2:]) * max_stride**2 < image_size**2:
                beyond.add(name)
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in probe.named_modules() if n]
    try:
        with torch.no_grad():
            device = next(probe.parameters(), torch.empty(0)).device
            probe(torch.zeros(1, in_channels, image_size, image_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return beyond


class LocalTrainingSimulator:
    """Replays ``train_local`` from fixed global weights on dummy images, differentiably.

    The simulator deep-copies ``model`` (whose weights are the global model) once; every call
    starts again from those weights and buffers, so it can be called once per attack iteration.

    Args:
        model: the network holding the global model's weights and buffers (not modified).
        threat: optimizer, learning rate, momentum, weight decay, batch split and BatchNorm momentum.
        device: where to run; ``None`` keeps the model's device.
        matched_params: the parameter names whose update :meth:`run` returns (``None``: all). The
            last step differentiates the loss only in these, which saves the others' weight
            gradients and their backward passes.
        dropout_masks: ``{dropout module name: scale}`` (:func:`read_dropout_masks`): those
            modules multiply their input by the client's mask over ``1 - p`` instead of giving
            their expectation.

    Raises:
        DataError: if the model has no parameters, or ``matched_params`` is empty or names a
            parameter the model does not have.

    Example:
        >>> from nvflare_gia.models import SmallCNN
        >>> sim = LocalTrainingSimulator(SmallCNN(), ThreatModel(image_size=16))
        >>> result = sim.run(torch.rand(1, 1, 16, 16), torch.tensor([1]), create_graph=False)
        >>> sorted(result.update)[:2]
        ['classifier.bias', 'classifier.weight']
    """

    def __init__(
        self,
        model: nn.Module,
        threat: ThreatModel,
        device: torch.device | str | None = None,
        matched_params: Sequence[str] | None = None,
        dropout_masks: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.threat = threat
        self.model = copy.deepcopy(model)
        if device is not None:
            self.model.to(device)
        set_replay_mode(self.model)
        named_params = [(n, p) for n, p in self.model.named_parameters()]
        if not named_params:
            raise DataError("LocalTrainingSimulator: the model has no parameters to simulate.")
        self.device = named_params[0][1].device
        self.param_names = [n for n, _ in named_params]
        if matched_params is None:
            matched_params = self.param_names
        unknown = sorted(set(matched_params) - set(self.param_names))
        if unknown or not matched_params:
            raise DataError(
                f"LocalTrainingSimulator: matched_params must be a non-empty subset of the model's parameter names, "
                f"got {len(matched_params)} names, unknown: {unknown}."
            )
        chosen = set(matched_params)
        self.matched_names = [n for n in self.param_names if n in chosen]
        self._matched_index = [i for i, n in enumerate(self.param_names) if n in chosen]
        self._params0 = [p.detach().clone().requires_grad_(True) for _, p in named_params]
        self._buffers0 = {n: b.detach().clone() for n, b in self.model.named_buffers()}
        self.momenta = bn_momenta(self.model, threat.bn_momentum)
        self.bn_layers = list(self.momenta)
        self._bn_weights = self._step_weights()
        self._records: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in self.bn_layers}
        self._recording = False
        modules = dict(self.model.named_modules())
        for name in self.bn_layers:
            if threat.bn_momentum is not None:
                modules[name].momentum = threat.bn_momentum
            modules[name].forward = self._make_forward(name, modules[name])
        for name, scale in (dropout_masks or {}).items():
            if name not in modules:
                raise DataError(f"LocalTrainingSimulator: dropout_masks names {name!r}, which is no module of the model.")
            modules[name].forward = functools.partial(torch.mul, other=scale.to(self.device, torch.float32))

    def _step_weights(self) -> dict[str, list[float]]:
        steps = self.threat.num_steps
        weights: dict[str, list[float]] = {}
        for name, m in self.momenta.items():
            weights[name] = [1.0 / steps] * steps if m is None else [float(w) for w in ema_step_weights(m, steps)]
        return weights

    def _make_forward(self, name: str, module: nn.Module):
        """Train-mode BatchNorm that records the batch statistics it normalises with.

        Same maths as ``F.batch_norm(training=True)``: normalise with the biased batch variance,
        update the running buffers (detached) with the unbiased one and the layer's momentum (or
        the cumulative average). Computing the statistics once serves both the normalisation and
        the statistics matching, which is cheaper than a separate ``var_mean`` on the input. The
        variance is the mean square of the centred input, which the normalisation needs anyway:
        with the double backward the attack takes through it, this is about 30 % faster on CPU
        than ``torch.var_mean`` (``docs/benchmarks.md``).
        """
        original = module.forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            if not (self._recording and module.training):
                return original(x)
            dims = [0] + list(range(2, x.dim()))
            count = x.numel() // x.shape[1]
            shape = [1, -1] + [1] * (x.dim() - 2)
            mean = x.mean(dim=dims)
            centered = x - mean.reshape(shape)
            var = centered.square().mean(dim=dims)
            scale = torch.rsqrt(var + module.eps)
            if module.weight is not None:
                scale = scale * module.weight
            out = centered * scale.reshape(shape)
            if module.bias is not None:
                out = out + module.bias.reshape(shape)
            unbiased = var * (count / max(count - 1, 1))
            self._records[name].append((mean, unbiased))
            with torch.no_grad():
                module.num_batches_tracked.add_(1)
                factor = module.momentum if module.momentum is not None else 1.0 / float(module.num_batches_tracked)
                module.running_mean.mul_(1.0 - factor).add_(mean.detach(), alpha=factor)
                module.running_var.mul_(1.0 - factor).add_(unbiased.detach(), alpha=factor)
            return out

        return forward

    @property
    def global_params(self) -> list[torch.Tensor]:
        """The global parameters (leaf tensors, in ``named_parameters`` order)."""
        return self._params0

    def run(self, images: torch.Tensor, labels: torch.Tensor, *, create_graph: bool = True) -> SimulationResult:
        """Simulate the round on ``images`` with ``labels``.

        Args:
            images: dummy images ``(num_images, C, H, W)``.
            labels: integer labels ``(num_images,)`` or class probabilities ``(num_images, num_classes)``.
            create_graph: keep the graph so the result is differentiable in ``images``/``labels``.

        Returns:
            The :class:`SimulationResult`.

        Raises:
            DataError: if the number of images disagrees with the threat model.
        """
        threat = self.threat
        if images.shape[0] != threat.num_images or labels.shape[0] != threat.num_images:
            raise DataError(
                f"LocalTrainingSimulator: expected {threat.num_images} images and labels, "
                f"got {images.shape[0]} images and {labels.shape[0]} labels."
            )
        cfg = threat.training
        lr, wd, mu = float(cfg.lr), float(cfg.weight_decay), float(cfg.momentum)
        adam = cfg.optimizer == OptimizerName.ADAM.value
        params = list(self._params0)
        deltas: list[torch.Tensor | None] = [None] * len(params)
        state1: list[torch.Tensor | None] = [None] * len(params)
        state2: list[torch.Tensor | None] = [None] * len(params)
        buffers = {n: b.clone() for n, b in self._buffers0.items()}
        for records in self._records.values():
            records.clear()
        losses: list[float] = []
        batch_sizes = threat.batch_sizes
        last_step = len(batch_sizes) - 1
        self._recording = True
        try:
            start = 0
            for step, size in enumerate(batch_sizes):
                if start >= threat.num_images:
                    start = 0
                x, y = images[start : start + size], labels[start : start + size]
                start += size
                tensors = dict(zip(self.param_names, params))
                tensors.update(buffers)
                logits = functional_call(self.model, tensors, (x,))
                loss = F.cross_entropy(logits, y)
                losses.append(float(loss.detach()))
                if step == last_step:  # only the matched parameters' update is returned
                    matched = torch.autograd.grad(loss, [params[i] for i in self._matched_index], create_graph=create_graph, allow_unused=True)
                    grads = [None] * len(params)
                    for i, g in zip(self._matched_index, matched):
                        grads[i] = g
                else:
                    grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
                new_params = []
                for i, (p, g) in enumerate(zip(params, grads)):
                    if g is None:  # unused parameter: torch optimizers skip it
                        new_params.append(p)
                        continue
                    if wd:
                        g = g + wd * p
                    if adam:
                        t = step + 1
                        b1, b2 = _ADAM_BETAS
                        state1[i] = (1 - b1) * g if state1[i] is None else b1 * state1[i] + (1 - b1) * g
                        state2[i] = (1 - b2) * g * g if state2[i] is None else b2 * state2[i] + (1 - b2) * g * g
                        denom = torch.sqrt(state2[i].clamp_min(1e-30)) / math.sqrt(1 - b2**t) + _ADAM_EPS
                        d = -(lr / (1 - b1**t)) * state1[i] / denom
                    else:
                        if mu:
                            state1[i] = g if state1[i] is None else mu * state1[i] + g
                            g = state1[i]
                        d = -lr * g
                    deltas[i] = d if deltas[i] is None else deltas[i] + d
                    if step == last_step:  # the parameters after the round are not needed, only the update
                        continue
                    new_p = self._params0[i] + deltas[i]
                    new_params.append(new_p if create_graph else new_p.detach().requires_grad_(True))
                params = new_params
        finally:
            self._recording = False
        update: dict[str, torch.Tensor] = {}
        for i in self._matched_index:
            delta = deltas[i] if deltas[i] is not None else torch.zeros_like(self._params0[i])
            update[self.param_names[i]] = delta if create_graph else delta.detach()
        for name, b in buffers.items():
            update[name] = b - self._buffers0[name]
        bn_statistics = {}
        for name in self.bn_layers:
            records = self._records[name]
            weights = self._bn_weights[name]
            mean = sum(w * r[0] for w, r in zip(weights, records))
            var = sum(w * r[1] for w, r in zip(weights, records))
            bn_statistics[name] = BNStatistics(mean=mean, var=var)
            records.clear()
        return SimulationResult(update=update, bn_statistics=bn_statistics, losses=losses)


def simulate_local_training(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel, *, create_graph: bool = True
) -> SimulationResult:
    """Functional twin of :class:`LocalTrainingSimulator`: one simulated round from ``model``'s weights.

    Args:
        model: the network holding the global weights (not modified).
        images: images ``(num_images, C, H, W)``.
        labels: integer labels ``(num_images,)`` or class probabilities ``(num_images, num_classes)``.
        threat: the client's training configuration.
        create_graph: keep the graph for differentiation in ``images``.

    Returns:
        The :class:`SimulationResult`.

    Raises:
        DataError: if the number of images disagrees with the threat model.
    """
    return LocalTrainingSimulator(model, threat).run(images, labels, create_graph=create_graph)
