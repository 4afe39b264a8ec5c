"""``DataSpec``: the single source of truth for which data each FLARE site trains on.

The client training script, the server-side attack widget (audit mode) and data-aware defenses
all build the same ``DataSpec`` (usually from JSON) and call ``load_site_data`` /
``load_test_data``, so they agree on every site's images without exchanging them.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from nvflare_gia.data._checks import check_int
from nvflare_gia.data.datasets import DatasetSplits, load_decathlon_datalist, load_image_folder, load_npz
from nvflare_gia.data.partition import SiteSpec, even_sites, partition_indices, tmi2023_sites
from nvflare_gia.data.synthetic import synthetic_splits
from nvflare_gia.errors import ConfigError, DataError

try:
    from enum import StrEnum
except ImportError:  # Python 3.10

    class StrEnum(str, Enum):  # type: ignore[no-redef]
        """Minimal ``enum.StrEnum`` for Python 3.10: members are their lowercase string values."""

        def __str__(self) -> str:
            return str(self.value)


__all__ = [
    "PartitionScheme",
    "DataSpec",
    "SiteData",
    "load_splits",
    "load_site_data",
    "load_test_data",
]

logger = logging.getLogger(__name__)

_SYNTHETIC_SOURCE = "synthetic"
_SYNTHETIC_IMAGE_SIZE = 64
_SYNTHETIC_MIN_IMAGE_SIZE = 16
_SYNTHETIC_SEED = 0  # the synthetic images are fixed; DataSpec.seed only drives partitioning
_CACHE_SIZE = 8


class PartitionScheme(StrEnum):
    """How the training split is divided between sites.

    ``tmi2023``: one high-risk site (1 image, batch 1), small sites (8 images, batch 4), one large
    site with the rest (batch 8), after Hatamizadeh et al., IEEE TMI 2023 (see ``tmi2023_sites``).
    ``even``: equal shares, every site with ``DataSpec.batch_size`` (see ``even_sites``).
    """

    TMI2023 = "tmi2023"
    EVEN = "even"


def _look_up_scheme(value: object) -> PartitionScheme:
    """Return the ``PartitionScheme`` named ``value``, or raise ``ConfigError`` listing the choices."""
    choices = [scheme.value for scheme in PartitionScheme]
    if isinstance(value, str) and value in choices:
        return PartitionScheme(value)
    close = difflib.get_close_matches(str(value).lower(), choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"DataSpec: scheme must be one of {choices!r}, got {value!r}.{hint}")


@dataclass(frozen=True)
class DataSpec:
    """Which dataset, which partition: everything needed to rebuild any site's training data.

    ``seed`` drives the partitions only; the images of a source are fixed (synthetic images use
    seed 0). Paths are kept as given and resolved against the working directory when loading, so
    a spec built on the server can name a path that only exists on the clients.

    Args:
        source: ``"synthetic"``, a ``.npz`` file (``load_npz``), an image folder
            (``load_image_folder``) or a MONAI decathlon datalist ``.json``
            (``load_decathlon_datalist``).
        scheme: partition scheme, ``"tmi2023"`` or ``"even"`` (see ``PartitionScheme``).
        site_names: FLARE site names in partition order (at least 2 for ``tmi2023``); a list is
            converted to a tuple.
        batch_size: batch size of every site under ``"even"`` (>= 1); ``tmi2023`` fixes its own.
        image_size: images are resized to this square size; ``None`` keeps the native size of a
            ``.npz`` source and uses 64 for the other sources (>= 16 for synthetic images).
        seed: seed of the site partitions (>= 0).
        max_train_images: keep only the first ``max_train_images`` training images before
            partitioning (quick runs); ``None`` keeps all.

    Raises:
        TypeError: if a field has the wrong type.
        ConfigError: if a field is out of range, the scheme is unknown, or site names are empty or repeat.

    Example:
        >>> spec = DataSpec(scheme="even", site_names=("a", "b"), batch_size=4)
        >>> DataSpec.from_json(spec.to_json()) == spec
        True
    """

    source: str = _SYNTHETIC_SOURCE
    scheme: str = PartitionScheme.TMI2023.value
    site_names: tuple[str, ...] = ("site-1", "site-2", "site-3")
    batch_size: int = 8
    image_size: int | None = None
    seed: int = 0
    max_train_images: int | None = None

    def __post_init__(self) -> None:
        source = os.fspath(self.source) if isinstance(self.source, os.PathLike) else self.source
        if not isinstance(source, str):
            raise TypeError(f"DataSpec: source must be a str, got {self.source!r}.")
        if not source.strip():
            raise ConfigError(f"DataSpec: source must be 'synthetic' or a path, got {self.source!r}.")
        object.__setattr__(self, "source", source)
        scheme = _look_up_scheme(self.scheme)
        object.__setattr__(self, "scheme", scheme)
        names = self.site_names
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError(f"DataSpec: site_names must be a sequence of str, got {names!r}.")
        names = tuple(names)
        if not all(isinstance(name, str) and name.strip() for name in names):
            raise ConfigError(f"DataSpec: site_names must be non-empty strings, got {names!r}.")
        minimum = 2 if scheme == PartitionScheme.TMI2023 else 1
        if len(names) < minimum:
            raise ConfigError(
                f"DataSpec: site_names must hold at least {minimum} names for scheme {scheme.value!r}, got {names!r}."
            )
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"DataSpec: site_names must be unique, got duplicates {duplicates!r} in {names!r}.")
        object.__setattr__(self, "site_names", names)
        # Store Python ints (not NumPy integers), so that to_json can serialise them.
        object.__setattr__(self, "batch_size", check_int("DataSpec", "batch_size", self.batch_size, 1))
        min_size = _SYNTHETIC_MIN_IMAGE_SIZE if source == _SYNTHETIC_SOURCE else 1
        image_size = check_int("DataSpec", "image_size", self.image_size, min_size, allow_none=True)
        object.__setattr__(self, "image_size", image_size)
        object.__setattr__(self, "seed", check_int("DataSpec", "seed", self.seed, 0))
        max_train = check_int("DataSpec", "max_train_images", self.max_train_images, 1, allow_none=True)
        object.__setattr__(self, "max_train_images", max_train)

    def to_dict(self) -> dict:
        """Return the spec as plain JSON types (``scheme`` as its string, ``site_names`` as a list)."""
        out = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        out["scheme"] = PartitionScheme(self.scheme).value
        out["site_names"] = list(self.site_names)
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> DataSpec:
        """Build a spec from a mapping of field names (missing fields take their defaults).

        Args:
            d: field values, e.g. ``{"source": "../shared/data/nih_cxr1000_64.npz", "scheme": "even"}``.

        Returns:
            The validated ``DataSpec``.

        Raises:
            TypeError: if ``d`` is not a mapping or a value has the wrong type.
            ConfigError: if a key is not a field (the message lists the allowed keys) or a value is invalid.
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"DataSpec.from_dict: d must be a mapping, got {type(d).__name__}.")
        allowed = [field.name for field in dataclasses.fields(cls)]
        for key in d:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"DataSpec.from_dict: key {key!r} is not a DataSpec field; allowed keys: {allowed!r}.{hint}"
                )
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in d.items()}
        return cls(**values)

    def to_json(self) -> str:
        """Return the spec as a JSON object string (see ``to_dict``)."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> DataSpec:
        """Build a spec from a JSON object string or the path of a ``.json`` file holding one.

        Args:
            text_or_path: JSON text (starting with ``{``) or a file path.

        Returns:
            The validated ``DataSpec``.

        Raises:
            ConfigError: if the file is missing, the text is not a JSON object, or ``from_dict`` fails.
        """
        if isinstance(text_or_path, str) and text_or_path.lstrip().startswith("{"):
            text, origin = text_or_path, "text"
        else:
            path = Path(os.fspath(text_or_path))
            if not path.is_file():
                raise ConfigError(
                    "DataSpec.from_json: text_or_path must be a JSON object or an existing .json file, "
                    f"got {text_or_path!r}."
                )
            text, origin = path.read_text(), str(path)
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"DataSpec.from_json: text_or_path must hold valid JSON, got {origin!r} ({exc})."
            ) from exc
        if not isinstance(document, dict):
            raise ConfigError(
                f"DataSpec.from_json: JSON must be an object, got {type(document).__name__} from {origin!r}."
            )
        return cls.from_dict(document)

    def sites(self) -> tuple[SiteSpec, ...]:
        """Return the ``SiteSpec`` of every site under this spec's scheme, in ``site_names`` order."""
        if self.scheme == PartitionScheme.TMI2023:
            return tmi2023_sites(self.site_names)
        return even_sites(self.site_names, batch_size=self.batch_size)


@dataclass(frozen=True)
class SiteData:
    """The data one site trains and validates on.

    Args:
        name: site name.
        train_images: float32 ``(N, 1, H, W)`` in [0, 1], the site's share of the train split.
        train_labels: int64 ``(N,)``.
        val_images: float32 ``(M, 1, H, W)``, the site's share of the val split.
        val_labels: int64 ``(M,)``.
        batch_size: local training batch size.
        num_classes: number of classes of the dataset (``len(class_names)``).
        class_names: class names of the dataset.
        train_indices: positions of ``train_images`` in the (capped) train split, for audits.
        val_indices: positions of ``val_images`` in the val split.

    Raises:
        DataError: if images and labels (or indices) differ in length, or ``num_classes`` does not
            match ``class_names``.
        ConfigError: if ``batch_size`` < 1.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    batch_size: int
    num_classes: int
    class_names: tuple[str, ...]
    train_indices: np.ndarray | None = None
    val_indices: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_int("SiteData", "batch_size", self.batch_size, 1)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.num_classes != len(self.class_names):
            raise DataError(
                f"SiteData: num_classes must equal len(class_names)={len(self.class_names)}, got {self.num_classes!r}."
            )
        for split in ("train", "val"):
            n = len(getattr(self, f"{split}_images"))
            for arg in (f"{split}_labels", f"{split}_indices"):
                value = getattr(self, arg)
                if value is not None and len(value) != n:
                    raise DataError(f"SiteData: {arg} must have length {n} (one per {split} image), got {len(value)}.")


def _freeze(splits: DatasetSplits) -> DatasetSplits:
    """Mark every array of a cached ``DatasetSplits`` read-only so that no caller can corrupt the cache."""
    for field in dataclasses.fields(splits):
        value = getattr(splits, field.name)
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    return splits


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _cached_source(kind: str, path: str, image_size: int | None, stamp: int) -> DatasetSplits:
    """Load a source once per (kind, resolved path, image size, modification time); arrays read-only."""
    del stamp  # part of the cache key only: a rewritten file is loaded again
    if kind == "synthetic":
        size = _SYNTHETIC_IMAGE_SIZE if image_size is None else image_size
        splits = synthetic_splits(image_size=size, seed=_SYNTHETIC_SEED)
    elif kind == "npz":
        splits = load_npz(path, image_size=image_size)
    elif kind == "json":
        splits = load_decathlon_datalist(path, **({} if image_size is None else {"image_size": image_size}))
    else:
        splits = load_image_folder(path, **({} if image_size is None else {"image_size": image_size}))
    counts = [len(splits.train_labels), len(splits.val_labels), len(splits.test_labels)]
    logger.info("Loaded %s source %s: train/val/test = %s images", kind, path or "(generated)", counts)
    return _freeze(splits)


def _source_splits(spec: DataSpec) -> DatasetSplits:
    """The cached (read-only) splits of ``spec.source``, with ``max_train_images`` applied."""
    if not isinstance(spec, DataSpec):
        raise TypeError(f"load_splits: spec must be a DataSpec, got {type(spec).__name__}.")
    if spec.source == _SYNTHETIC_SOURCE:
        splits = _cached_source("synthetic", "", spec.image_size, 0)
    else:
        path = Path(spec.source).expanduser()
        resolved = (path if path.is_absolute() else Path.cwd() / path).resolve()
        if not resolved.exists():
            raise DataError(
                f"load_splits: source must be 'synthetic' or an existing .npz file, image folder or .json datalist, "
                f"got {spec.source!r} (resolved to {str(resolved)!r})."
            )
        suffix = resolved.suffix.lower()
        if resolved.is_dir():
            kind = "folder"
        elif suffix in (".npz", ".json"):
            kind = suffix[1:]
        else:
            raise DataError(
                f"load_splits: source must be a .npz file, an image folder or a .json datalist, got {spec.source!r}."
            )
        splits = _cached_source(kind, str(resolved), spec.image_size, resolved.stat().st_mtime_ns)
    cap = spec.max_train_images
    if cap is not None and cap < len(splits.train_labels):
        splits = dataclasses.replace(
            splits, train_images=splits.train_images[:cap], train_labels=splits.train_labels[:cap]
        )
    return splits


def load_splits(spec: DataSpec) -> DatasetSplits:
    """Load the train/val/test splits named by ``spec.source`` (with ``max_train_images`` applied).

    ``"synthetic"`` gives ``synthetic_splits`` (600/200/200 images, seed 0); a ``.npz`` path goes
    to ``load_npz``, a ``.json`` path to ``load_decathlon_datalist`` and a folder to
    ``load_image_folder``. Relative paths are resolved against the working directory. Sources are
    cached in-process per (path, image size, modification time); the returned arrays are
    writable copies.

    Args:
        spec: the data specification.

    Returns:
        The splits, train split capped at ``spec.max_train_images``.

    Raises:
        TypeError: if ``spec`` is not a ``DataSpec``.
        DataError: if the source does not exist, has an unsupported type, or fails to load.

    Example:
        >>> load_splits(DataSpec()).train_images.shape
        (600, 1, 64, 64)
    """
    splits = _source_splits(spec)
    copies = {
        field.name: np.array(getattr(splits, field.name))
        for field in dataclasses.fields(splits)
        if isinstance(getattr(splits, field.name), np.ndarray)
    }
    return dataclasses.replace(splits, **copies)


def load_site_data(spec: DataSpec, site_name: str) -> SiteData:
    """The training and validation data of one site under ``spec``.

    Training data is the site's part of ``partition_indices(len(train), spec.sites(), spec.seed)``;
    validation data is the site's equal share of the val split
    (``partition_indices(len(val), even_sites(spec.site_names), spec.seed)``).

    Args:
        spec: the data specification.
        site_name: one of ``spec.site_names``.

    Returns:
        The site's ``SiteData`` (arrays are copies).

    Raises:
        TypeError: if ``spec`` is not a ``DataSpec``.
        DataError: if ``site_name`` is unknown (the message lists the known names), or the train or
            val split is too small for the partition.

    Example:
        >>> load_site_data(DataSpec(), "site-1").train_images.shape
        (1, 1, 64, 64)
    """
    splits = _source_splits(spec)
    sites = {site.name: site for site in spec.sites()}
    if site_name not in sites:
        raise DataError(f"load_site_data: site_name must be one of {list(sites)!r}, got {site_name!r}.")
    parts = {}
    for split, site_specs in (("train", tuple(sites.values())), ("val", even_sites(spec.site_names))):
        num_items = len(getattr(splits, f"{split}_labels"))
        try:
            parts[split] = partition_indices(num_items, site_specs, seed=spec.seed)[site_name]
        except DataError as exc:
            raise DataError(
                f"load_site_data: the {split} split of {spec.source!r} ({num_items} images) cannot be divided "
                f"between sites {list(spec.site_names)!r} with scheme {PartitionScheme(spec.scheme).value!r}: {exc}"
            ) from exc
    train, val = parts["train"], parts["val"]
    return SiteData(
        name=site_name,
        train_images=splits.train_images[train],
        train_labels=splits.train_labels[train],
        val_images=splits.val_images[val],
        val_labels=splits.val_labels[val],
        batch_size=sites[site_name].batch_size,
        num_classes=splits.num_classes,
        class_names=splits.class_names,
        train_indices=train,
        val_indices=val,
    )


def load_test_data(spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """The test images and labels of ``spec.source`` (shared by all sites and the server).

    Args:
        spec: the data specification.

    Returns:
        ``(images, labels)``: writable copies, float32 ``(N, 1, H, W)`` and int64 ``(N,)``.

    Raises:
        TypeError: if ``spec`` is not a ``DataSpec``.
        DataError: if the source does not exist or fails to load.
    """
    splits = _source_splits(spec)
    return np.array(splits.test_images), np.array(splits.test_labels)
