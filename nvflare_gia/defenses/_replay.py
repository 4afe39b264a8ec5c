"""Private helpers of the data-aware defenses: a shadow copy of the global model and exact replays of
the client's local round (:func:`nvflare_gia.training.train_local`, the loop the client runs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from nvflare_gia.attack import layers_beyond_stride
from nvflare_gia.defenses._update import COUNTER_SUFFIX, to_tensor
from nvflare_gia.defenses.base import DefenseContext
from nvflare_gia.errors import DataError
from nvflare_gia.models import build_model_from_state
from nvflare_gia.training import train_local

__all__ = [
    "build_shadow",
    "replay_update",
    "context_tensors",
    "check_step_counts",
    "last_module_of",
    "stem_end_module",
    "early_output",
    "LatentShift",
    "shifted",
]


def build_shadow(global_state: Mapping[str, Any], context: DefenseContext, owner: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A network named by ``context`` holding the global weights, and a separate copy of those weights.

    Raises:
        DataError: if the global state does not fit the network (the message names the keys).
    """
    model = build_model_from_state(context.model, global_state, num_classes=context.num_classes, in_channels=context.in_channels, owner=owner)
    return model, {k: v.detach().clone() for k, v in model.state_dict().items()}


def context_tensors(context: DefenseContext, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The context's images (float32) and labels (int64) as tensors, checked.

    Raises:
        DataError: for non-finite images or labels outside ``[0, num_classes)``.
    """
    images = torch.from_numpy(np.array(context.images, dtype=np.float32, copy=True))
    labels = torch.from_numpy(np.array(context.labels, dtype=np.int64, copy=True).reshape(-1))
    if not bool(torch.isfinite(images).all()):
        raise DataError(f"{owner}: the client's images must be finite, got NaN/Inf values.")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= int(context.num_classes)):
        raise DataError(f"{owner}: labels must be in [0, {context.num_classes}), got range [{int(labels.min())}, {int(labels.max())}].")
    return images, labels


def replay_update(
    global_tensors: Mapping[str, torch.Tensor],
    context: DefenseContext,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    wrap: Any = None,
) -> dict[str, torch.Tensor]:
    """Run the client's round again (``train_local`` from the global weights) and return ``new - old``.

    Same network, batch size, optimizer, shuffling seed and round as the client, so with the
    client's own images the result equals the client's update (on the same device type).

    Args:
        global_tensors: the global state as tensors (from :func:`build_shadow`).
        context: model name, batch size, training configuration and round.
        images: the images to train on (perturbed or not).
        labels: their labels.
        wrap: optional callable ``model -> module`` that wraps the network for training (used to
            perturb a latent representation); the wrapper must add no parameters.

    Returns:
        ``{key: delta}`` for every state-dict entry (detached CPU tensors in the state's dtypes).
    """
    model = build_model_from_state(context.model, global_tensors, num_classes=context.num_classes, in_channels=context.in_channels)
    net = model if wrap is None else wrap(model)
    train_local(net, images, labels, int(context.batch_size), context.training, round_index=int(context.round_index or 0))
    return {k: v.detach() - global_tensors[k] for k, v in model.state_dict().items()}


def check_step_counts(update: Mapping[str, Any], replay: Mapping[str, torch.Tensor], owner: str) -> None:
    """The replay must take as many steps as the client: compare every step counter.

    Raises:
        DataError: if a ``num_batches_tracked`` entry differs; then the reported batch size,
            epochs or data do not match what the client trained on.
    """
    for key, value in update.items():
        if not key.endswith(COUNTER_SUFFIX) or key not in replay:
            continue
        client = to_tensor(value, dtype=torch.float64).reshape(-1)
        replayed = replay[key].to(torch.float64).reshape(-1)
        if client.shape != replayed.shape or not bool(torch.all(client.round() == replayed.round())):
            raise DataError(
                f"{owner}: update[{key!r}] says the client took {client.tolist()} local steps but replaying the round "
                f"with the reported configuration takes {replayed.tolist()}; the training meta or the site data does "
                "not match the client's."
            )


def last_module_of(model: nn.Module, kinds: tuple[type, ...]) -> str:
    """Name of the last module of one of ``kinds`` in registration order.

    Raises:
        DataError: if the network has none.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, kinds)]
    if not names:
        raise DataError(f"the network has no {[k.__name__ for k in kinds]} layer.")
    return names[-1]


def stem_end_module(model: nn.Module, images: torch.Tensor, owner: str) -> str:
    """Name of the module that ends the network's stem: its first pooling layer (``features.3`` for
    ``SmallCNN``) or, in a network without one, the first block whose output is spatially smaller
    than the image (:func:`nvflare_gia.attack.layers_beyond_stride` with stride 1). Blocks are looked
    for among the root's children in order, descending into ``nn.Sequential`` and ``nn.ModuleList``
    containers only (a ``ModuleList`` is taken to run its members in order, as the loops that build
    networks from one do), so the split is a point every later layer depends on (a residual unit,
    not one of its branches).

    Args:
        model: the network (not modified).
        images: the client's images ``(N, C, H, H)``, for the probe's shape.
        owner: the caller's name, for the error message.

    Returns:
        The module name.

    Raises:
        DataError: if no block downsamples; the message lists the modules ``split_layer`` may name.
    """
    kinds = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
    for name, module in model.named_modules():
        if isinstance(module, kinds):
            return name
    downsampled = layers_beyond_stride(model, int(images.shape[1]), int(images.shape[-1]), 1)
    modules = dict(model.named_modules())
    # a ModuleList is never called itself, so no hook sees its output: it holds a downsampling
    # block when one of its members does
    downsampled |= {
        name for name, module in modules.items()
        if isinstance(module, nn.ModuleList) and any(member.startswith(f"{name}.") for member in downsampled)
    }
    parent = ""
    while True:
        prefix = f"{parent}." if parent else ""
        block = next((prefix + child for child, _ in modules[parent].named_children() if prefix + child in downsampled), None)
        if block is None:
            raise DataError(
                f"{owner}: the network has no pooling or downsampling layer to end its stem; give split_layer, one of "
                f"{[name for name in modules if name]}."
            )
        if not isinstance(modules[block], (nn.Sequential, nn.ModuleList)):
            return block
        parent = block


class _Stop(Exception):
    """Raised by a forward hook to stop the forward pass once the split layer has run."""


def early_output(model: nn.Module, split: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The output of module ``split`` for ``images`` (the rest of the network is not run).

    Raises:
        DataError: if ``split`` is not reached or does not output a tensor.
    """
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        captured.append(output)
        raise _Stop

    handle = split.register_forward_hook(hook)
    try:
        with contextlib.suppress(_Stop):
            model(images)
    finally:
        handle.remove()
    if not captured or not isinstance(captured[0], torch.Tensor):
        raise DataError("the split layer was not reached or does not output a tensor.")
    return captured[0]


@contextlib.contextmanager
def shifted(split: nn.Module, delta: torch.Tensor | None) -> Iterator[None]:
    """Within the block, module ``split`` outputs ``output + delta``."""
    handle = split.register_forward_hook(lambda module, inputs, output: output + delta if delta is not None else output)
    try:
        yield
    finally:
        handle.remove()


class LatentShift(nn.Module):
    """Train-time wrapper: adds image ``i``'s latent shift ``deltas[i]`` to the output of module ``split``.

    The image index travels as an extra last input channel (a constant plane), so
    :func:`nvflare_gia.training.train_local` can shuffle and batch as usual; the wrapper drops
    the channel before calling the network. It registers the network as its only submodule and
    holds ``deltas`` as a plain tensor, so ``parameters()`` are exactly the network's.
    """

    def __init__(self, model: nn.Module, split: nn.Module, deltas: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self._deltas = deltas.detach()
        self._current: torch.Tensor | None = None
        split.register_forward_hook(self._hook)

    @staticmethod
    def with_index_channel(images: torch.Tensor) -> torch.Tensor:
        """``images`` with a last channel holding each image's index."""
        index = torch.arange(images.shape[0], dtype=images.dtype).view(-1, 1, 1, 1).expand(-1, 1, *images.shape[2:])
        return torch.cat([images, index], dim=1)

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return output if self._current is None else output + self._current

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        index = images[:, -1, 0, 0].round().long()
        self._current = self._deltas[index]
        try:
            return self.model(images[:, :-1])
        finally:
            self._current = None
