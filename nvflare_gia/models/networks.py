"""Networks for the benchmark and for real jobs: ``SmallCNN`` and MONAI networks by name."""

from __future__ import annotations

import contextlib
import difflib
import importlib
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from nvflare_gia.errors import ConfigError, DataError

__all__ = ["SmallCNN", "MODEL_NAMES", "build_model", "build_model_from_state", "resolve_model_name"]


class SmallCNN(nn.Module):
    """The benchmark CNN: three conv-BN-ReLU blocks, global average pooling and a linear head.

    The exact shape is the one other gradient-inversion toolkits were measured on, so numbers are
    comparable: ``Conv(1,16)-BN-ReLU-MaxPool → Conv(16,32)-BN-ReLU-MaxPool → Conv(32,64)-BN-ReLU →
    AdaptiveAvgPool(1) → Flatten → Linear(64, num_classes)``, 3×3 kernels, padding 1, no conv bias.

    Args:
        num_classes: number of output classes (>= 2).
        in_channels: number of image channels (1 for X-rays).
        init_seed: if given, the weights are initialised from this seed (without touching the
            global RNG), so a FLARE persistor builds the same initial global model every run.

    Raises:
        ConfigError: if ``num_classes`` < 2 or ``in_channels`` < 1.

    Example:
        >>> model = SmallCNN(num_classes=2)
        >>> model(torch.zeros(4, 1, 64, 64)).shape
        torch.Size([4, 2])
    """

    def __init__(self, num_classes: int = 2, in_channels: int = 1, init_seed: int | None = None) -> None:
        super().__init__()
        if int(num_classes) < 2:
            raise ConfigError(f"SmallCNN: num_classes must be >= 2, got {num_classes!r}.")
        if int(in_channels) < 1:
            raise ConfigError(f"SmallCNN: in_channels must be >= 1, got {in_channels!r}.")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.init_seed = init_seed
        with _seeded(init_seed):
            self._build_layers(num_classes, in_channels)

    def _build_layers(self, num_classes: int, in_channels: int) -> None:
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return class logits of shape ``(batch, num_classes)`` for images ``(batch, C, H, W)``."""
        return self.classifier(self.flatten(self.pool(self.features(images))))


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Run the block under ``torch.manual_seed(seed)`` and restore the global RNG afterwards."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _densenet121(num_classes: int, in_channels: int) -> nn.Module:
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, pretrained=False)


def _resnet18(num_classes: int, in_channels: int) -> nn.Module:
    from monai.networks.nets import resnet18

    return resnet18(spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes, pretrained=False)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "densenet121": _densenet121,
    "resnet18": _resnet18,
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def resolve_model_name(name: Any, *, owner: str, arg: str = "model", trusted: Collection[str] | None = None) -> str:
    """Check a network name: one of ``MODEL_NAMES`` (returned lower-case), or the dotted path of a
    factory ``f(num_classes=..., in_channels=...) -> nn.Module`` that imports here (returned as
    given), e.g. a module in a FLARE job's ``app/custom`` folder.

    Args:
        name: the name to check.
        owner: the class or function that starts the error message.
        arg: the argument that held ``name``, named in the error message.
        trusted: the only paths that may be imported (``name`` came from someone else, e.g. a
            client's meta); any other path is refused without being imported. None trusts any path.

    Returns:
        The name in the form :func:`build_model` takes.

    Raises:
        ConfigError: for a name that is neither registered nor the path of an importable callable
            (the message lists the names and suggests the closest), a path not in ``trusted``, or
            ``trusted`` that is not a collection of strings.
    """
    if isinstance(name, str) and name.lower() in _BUILDERS:
        return name.lower()
    if trusted is not None:
        if isinstance(trusted, str) or not all(isinstance(path, str) for path in trusted):
            raise ConfigError(f"{owner}: networks must be a list of dotted network paths, got {trusted!r}.")
        if name not in trusted:
            raise ConfigError(
                f"{owner}: {arg} must be one of {list(MODEL_NAMES)} or of the trusted networks {list(trusted)}, got {name!r}; "
                f"a job's own network must be named in the reader's networks (the widget's networks argument)."
            )
    if isinstance(name, str) and "." in name.strip("."):
        _import_factory(name, owner=owner, arg=arg)
        return name
    close = difflib.get_close_matches(str(name).lower(), MODEL_NAMES, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"{owner}: {arg} must be one of {list(MODEL_NAMES)} or the dotted path of a network factory "
        f"f(num_classes=..., in_channels=...), got {name!r}.{hint}"
    )


def _import_factory(path: str, *, owner: str, arg: str) -> Callable[..., nn.Module]:
    """The callable at dotted ``path`` (``package.module.attribute``).

    Raises:
        ConfigError: if the module does not import, lacks the attribute, or the attribute is not callable.
    """
    module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may fail in any way at import (ImportError, SyntaxError, ...)
        raise ConfigError(
            f"{owner}: {arg} {path!r}: module {module_name!r} does not import ({exc}); a network of the job's own "
            f"goes in its app/custom folder, which FLARE puts on the path of the server and the clients."
        ) from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ConfigError(f"{owner}: {arg} {path!r}: module {module_name!r} has no callable {attribute!r}.")
    return factory


def build_model(name: str = "small_cnn", num_classes: int = 2, in_channels: int = 1, init_seed: int | None = None) -> nn.Module:
    """Build a network with BatchNorm by name.

    Args:
        name: one of ``MODEL_NAMES``: ``small_cnn`` (the benchmark CNN), ``densenet121`` and
            ``resnet18`` (MONAI, 2-D, BatchNorm, randomly initialised); or the dotted path of a
            factory called as ``f(num_classes=num_classes, in_channels=in_channels)`` (a class such
            as ``nvflare_gia.models.SmallCNN`` qualifies), for auditing a job's own network.
        num_classes: number of output classes.
        in_channels: image channels (1 for X-rays).
        init_seed: seed of the weight initialisation; None uses the global RNG.

    Returns:
        The network, in train mode.

    Raises:
        ConfigError: for an unknown name or a path that does not import (see
            :func:`resolve_model_name`), or a factory that rejects those keyword arguments or
            returns no ``nn.Module``.
    """
    key = resolve_model_name(name, owner="build_model", arg="name")
    factory = _BUILDERS[key] if key in _BUILDERS else _import_factory(key, owner="build_model", arg="name")
    with _seeded(init_seed):
        try:
            model = factory(num_classes=int(num_classes), in_channels=int(in_channels))
        except TypeError as exc:
            raise ConfigError(f"build_model: {name!r} must take the keyword arguments num_classes and in_channels ({exc}).") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"build_model: {name!r} returned a {type(model).__name__}, not a torch.nn.Module.")
    return model.train()


def build_model_from_state(
    name: str, state: Mapping[str, Any], num_classes: int = 2, in_channels: int = 1, *, owner: str = "build_model_from_state"
) -> nn.Module:
    """Build network ``name`` holding ``state``, without the random initialisation ``state`` replaces.

    The network is built on PyTorch's ``meta`` device (shapes and dtypes only), given CPU memory,
    and loaded with ``state``: a memory copy instead of the initialisation (about 65 ms for
    ResNet-18 on a 2-core CPU; the data-aware defenses build two networks per call).

    Args:
        name: one of ``MODEL_NAMES``.
        state: ``{key: value}`` (tensors or NumPy arrays) with exactly the network's state-dict
            keys and shapes; values are cast to the network's dtypes.
        num_classes: number of output classes.
        in_channels: image channels.
        owner: name that starts error messages (the caller's).

    Returns:
        The network on the CPU, in train mode, holding a copy of ``state``.

    Raises:
        ConfigError: for an unknown name.
        DataError: if ``state`` misses or adds keys (the message names them) or a shape differs.
    """
    with torch.device("meta"):
        model = build_model(name, num_classes, in_channels)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise DataError(f"{owner}: the global model does not fit network {name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    tensors = {k: _as_tensor(v) for k, v in state.items()}
    for key, reference in expected.items():
        if tuple(tensors[key].shape) != tuple(reference.shape):
            raise DataError(f"{owner}: global_state[{key!r}] has shape {tuple(tensors[key].shape)}; network {name!r} expects {tuple(reference.shape)}.")
    model = model.to_empty(device="cpu")
    model.load_state_dict(tensors)
    return model.train()


def _as_tensor(value: Any) -> torch.Tensor:
    """``value`` as a tensor, sharing NumPy memory where torch allows it (a read-only array is copied)."""
    if isinstance(value, torch.Tensor):
        return value
    array = np.asarray(value)
    return torch.from_numpy(array if array.flags.writeable else array.copy())
