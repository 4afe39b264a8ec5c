"""Image classification datasets as train/val/test arrays: ``.npz`` files, image folders, datalists.

Every loader returns a ``DatasetSplits``: float32 images ``(N, 1, H, W)`` in [0, 1] and int64
labels ``(N,)``. Image files (folders and MONAI decathlon datalists) are read with MONAI
transforms; MONAI is imported on first use so that ``import nvflare_gia.data`` stays fast.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nvflare_gia.data._checks import check_int
from nvflare_gia.errors import ConfigError, DataError, load_json_file

__all__ = ["DatasetSplits", "load_npz", "load_image_folder", "load_decathlon_datalist"]

logger = logging.getLogger(__name__)

_SPLITS = ("train", "val", "test")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".nii", ".nii.gz")
_DEFAULT_IMAGE_SIZE = 64
_DEFAULT_VAL_FRACTION = 0.2
_DEFAULT_TEST_FRACTION = 0.2
# ITU-R BT.601 luma weights, used to reduce RGB(A) images to one channel.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class DatasetSplits:
    """Train, validation and test images and labels of one classification dataset.

    Args:
        train_images: float32 ``(N, 1, H, W)`` in [0, 1], square (``H == W``).
        train_labels: int64 ``(N,)`` in ``[0, len(class_names))``.
        val_images: like ``train_images`` (same ``H``, ``W``).
        val_labels: like ``train_labels``.
        test_images: like ``train_images`` (same ``H``, ``W``).
        test_labels: like ``train_labels``.
        class_names: one name per class (a list is converted to a tuple).

    Raises:
        DataError: if an array has the wrong type, dtype or shape, a split is empty, image and label
            counts differ, images leave [0, 1], splits differ in image size, or a label is out of range.

    Example:
        >>> x, y = np.zeros((2, 1, 8, 8), np.float32), np.array([0, 1])
        >>> DatasetSplits(x, y, x, y, x, y, ("normal", "abnormal")).image_size
        8
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        names = self.class_names
        if isinstance(names, str) or not isinstance(names, (Sequence, np.ndarray)):
            raise DataError(f"DatasetSplits: class_names must be a sequence of str, got {names!r}.")
        names = tuple(str(name) if isinstance(name, np.str_) else name for name in names)
        if not names or not all(isinstance(name, str) and name for name in names):
            raise DataError(f"DatasetSplits: class_names must be non-empty strings, got {names!r}.")
        if len(set(names)) != len(names):
            raise DataError(f"DatasetSplits: class_names must be unique, got {names!r}.")
        object.__setattr__(self, "class_names", names)
        sizes = set()
        for split in _SPLITS:
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            _check_image_array(f"{split}_images", images)
            _check_label_array(f"{split}_labels", labels, len(names))
            if images.shape[0] != labels.shape[0]:
                raise DataError(
                    f"DatasetSplits: {split}_labels must have one label per image, got {labels.shape[0]} labels "
                    f"for {images.shape[0]} {split}_images."
                )
            sizes.add(images.shape[2:])
        if len(sizes) != 1:
            shapes = {split: getattr(self, f"{split}_images").shape for split in _SPLITS}
            raise DataError(f"DatasetSplits: all splits must have the same image size, got {shapes!r}.")

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(class_names)``."""
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        """Image height (= width) in pixels."""
        return int(self.train_images.shape[2])


def _check_image_array(arg: str, images: object) -> None:
    """Raise ``DataError`` unless ``images`` is a non-empty float32 (N, 1, H, W) array in [0, 1], H == W."""
    if not isinstance(images, np.ndarray):
        raise DataError(f"DatasetSplits: {arg} must be a numpy array, got {type(images).__name__}.")
    if images.dtype != np.float32:
        raise DataError(f"DatasetSplits: {arg} must have dtype float32, got {images.dtype}.")
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
        raise DataError(f"DatasetSplits: {arg} must have shape (N, 1, H, H), got {images.shape}.")
    if images.shape[0] == 0 or images.shape[2] == 0:
        raise DataError(f"DatasetSplits: {arg} must hold at least one non-empty image, got shape {images.shape}.")
    low, high = float(images.min()), float(images.max())
    if not (0.0 <= low and high <= 1.0):  # also catches NaN
        raise DataError(f"DatasetSplits: {arg} must lie in [0, 1], got values in [{low}, {high}].")


def _check_label_array(arg: str, labels: object, num_classes: int) -> None:
    """Raise ``DataError`` unless ``labels`` is an int64 (N,) array with values in [0, num_classes)."""
    if not isinstance(labels, np.ndarray):
        raise DataError(f"DatasetSplits: {arg} must be a numpy array, got {type(labels).__name__}.")
    if labels.dtype != np.int64:
        raise DataError(f"DatasetSplits: {arg} must have dtype int64, got {labels.dtype}.")
    if labels.ndim != 1:
        raise DataError(f"DatasetSplits: {arg} must have shape (N,), got {labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"DatasetSplits: {arg} must lie in [0, {num_classes}) (one per class name), got values in "
            f"[{labels.min()}, {labels.max()}]."
        )


def _resize(images: np.ndarray, image_size: int) -> np.ndarray:
    """Bilinear resize of float images (N, 1, H, W) to (N, 1, S, S), antialiased when shrinking."""
    if images.shape[2:] == (image_size, image_size):
        return images
    shrink = image_size < max(images.shape[2:])
    out = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(images)),
        size=(image_size, image_size),
        mode="bilinear",
        align_corners=False,
        antialias=shrink,
    )
    return out.clamp_(0.0, 1.0).numpy()


def _npz_images(path: Path, key: str, images: np.ndarray) -> np.ndarray:
    """Convert a stored image array to float32 (N, 1, H, W) in [0, 1]."""
    if images.dtype == np.uint8:
        scaled = images.astype(np.float32) / 255.0
    elif np.issubdtype(images.dtype, np.floating):
        scaled = images.astype(np.float32)
        low, high = (float(scaled.min()), float(scaled.max())) if scaled.size else (0.0, 0.0)
        if not (0.0 <= low and high <= 1.0):
            raise DataError(
                f"load_npz: {key} must be uint8 or float in [0, 1], got float values in [{low}, {high}] "
                f"in {str(path)!r}."
            )
    else:
        raise DataError(
            f"load_npz: {key} must have dtype uint8 or float in [0, 1], got {images.dtype} in {str(path)!r}."
        )
    if scaled.ndim == 3:
        return scaled[:, None]
    if scaled.ndim == 4 and scaled.shape[1] == 1:
        return scaled
    if scaled.ndim == 4 and scaled.shape[3] == 1:
        return np.ascontiguousarray(np.moveaxis(scaled, 3, 1))
    raise DataError(
        f"load_npz: {key} must have shape (N, H, W), (N, H, W, 1) or (N, 1, H, W), got {images.shape} in {str(path)!r}."
    )


def _npz_labels(path: Path, key: str, labels: np.ndarray) -> np.ndarray:
    """Convert a stored label array ((N,) or MedMNIST (N, 1), any integer dtype) to int64 (N,)."""
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise DataError(f"load_npz: {key} must have an integer dtype, got {labels.dtype} in {str(path)!r}.")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"load_npz: {key} must have shape (N,) or (N, 1), got {labels.shape} in {str(path)!r}.")
    if labels.size and labels.min() < 0:
        raise DataError(f"load_npz: {key} must be >= 0, got minimum {labels.min()} in {str(path)!r}.")
    return labels.astype(np.int64)


def _npz_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """Read ``archive[key]``; an object array (it needs pickle, which stays off) raises ``DataError``."""
    try:
        return archive[key]
    except ValueError as exc:
        raise DataError(
            f"load_npz: {key} in {str(path)!r} must be a numeric or string array readable without pickle, got: {exc}. "
            "Save object arrays with a concrete dtype, e.g. np.asarray(values, dtype=str) for class names."
        ) from exc


def _default_class_names(labels: Sequence[np.ndarray]) -> tuple[str, ...]:
    """``("class_0", ..., "class_<max label>")`` over all label arrays."""
    top = max(int(lab.max()) for lab in labels if lab.size)
    return tuple(f"class_{k}" for k in range(top + 1))


def load_npz(path: str | os.PathLike, image_size: int | None = None) -> DatasetSplits:
    """Load a ``.npz`` file with ``{train,val,test}_{images,labels}`` arrays (optional ``class_names``).

    Images may be uint8 (scaled by 1/255) or float in [0, 1], shaped ``(N, H, W)``, ``(N, H, W, 1)``
    or ``(N, 1, H, W)``; labels any integer dtype, ``(N,)`` or ``(N, 1)`` (MedMNIST). Without a
    ``class_names`` key, classes are named ``class_<k>`` up to the largest label.

    Args:
        path: the ``.npz`` file, e.g. ``../shared/data/nih_cxr1000_64.npz``.
        image_size: resize every image to ``image_size`` x ``image_size`` (bilinear, antialiased when
            shrinking); ``None`` keeps the native size, which must then be square.

    Returns:
        The three splits as a ``DatasetSplits``.

    Raises:
        DataError: if the file is missing or unreadable, a key is missing, a dtype or shape is wrong,
            image and label counts differ, a split is empty, or images are not square (without resize).
        ConfigError: if ``image_size`` < 1.

    Example:
        >>> splits = load_npz("../shared/data/nih_cxr1000_64.npz")  # doctest: +SKIP
        >>> splits.train_images.shape  # doctest: +SKIP
        (600, 1, 64, 64)
    """
    image_size = check_int("load_npz", "image_size", image_size, 1, allow_none=True)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"load_npz: path must be an existing .npz file, got {str(path)!r}.")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"load_npz: path must be a readable .npz file, got {str(path)!r} ({exc}).") from exc
    with archive:
        present = sorted(archive.files)
        arrays: dict[str, np.ndarray] = {}
        for split in _SPLITS:
            for kind in ("images", "labels"):
                key = f"{split}_{kind}"
                if key not in archive.files:
                    raise DataError(f"load_npz: key {key!r} is missing from {str(path)!r}; present keys: {present!r}.")
                arrays[key] = _npz_array(archive, key, path)
        raw_names = _npz_array(archive, "class_names", path) if "class_names" in archive.files else None
    images = {split: _npz_images(path, f"{split}_images", arrays[f"{split}_images"]) for split in _SPLITS}
    labels = {split: _npz_labels(path, f"{split}_labels", arrays[f"{split}_labels"]) for split in _SPLITS}
    for split in _SPLITS:
        n_img, n_lab = images[split].shape[0], labels[split].shape[0]
        if n_img != n_lab:
            raise DataError(
                f"load_npz: {split}_images and {split}_labels must have the same length, got {n_img} images "
                f"and {n_lab} labels in {str(path)!r}."
            )
        if n_img == 0:
            raise DataError(f"load_npz: {split}_images must not be empty, got 0 images in {str(path)!r}.")
    if image_size is not None:
        images = {split: _resize(value, image_size) for split, value in images.items()}
    else:
        for split, value in images.items():
            if value.shape[2] != value.shape[3]:
                raise DataError(
                    f"load_npz: {split}_images must be square unless image_size is given, got {value.shape[2:]} "
                    f"in {str(path)!r}; pass image_size to resize."
                )
    if raw_names is None:
        class_names = _default_class_names(list(labels.values()))
    else:
        class_names = tuple(str(name) for name in np.atleast_1d(raw_names))
    logger.debug("load_npz: %s, image size %s", path, images["train"].shape[2:])
    return DatasetSplits(
        train_images=images["train"],
        train_labels=labels["train"],
        val_images=images["val"],
        val_labels=labels["val"],
        test_images=images["test"],
        test_labels=labels["test"],
        class_names=class_names,
    )


def _is_image_file(path: Path) -> bool:
    """Whether ``path`` has one of ``_IMAGE_SUFFIXES`` (case-insensitive)."""
    return path.is_file() and path.name.lower().endswith(_IMAGE_SUFFIXES)


def _make_image_reader(func: str, image_size: int) -> Callable[[str], np.ndarray]:
    """Return a function reading one image file into float32 (1, S, S) in [0, 1] with MONAI transforms.

    PNG/JPEG files are read with ``PILReader(reverse_indexing=False)`` so that rows stay rows (as
    in PIL and in arrays saved with nibabel); MONAI's default would transpose them.
    """
    from monai.data import PILReader
    from monai.transforms import LoadImage, Resize, ScaleIntensity

    loader = LoadImage(image_only=True, ensure_channel_first=True)
    loader.register(PILReader(reverse_indexing=False))
    resize = Resize(spatial_size=(image_size, image_size), mode="bilinear", anti_aliasing=True)
    scale = ScaleIntensity(minv=0.0, maxv=1.0)

    def read(path: str) -> np.ndarray:
        try:
            image = torch.as_tensor(np.asarray(loader(path)), dtype=torch.float32)
        except (OSError, RuntimeError, ValueError) as exc:
            raise DataError(f"{func}: image file must be readable by MONAI LoadImage, got {path!r} ({exc}).") from exc
        while image.ndim > 3 and image.shape[-1] == 1:  # (C, H, W, 1) from 2-D NIfTI slices
            image = image[..., 0]
        if image.ndim != 3:
            raise DataError(f"{func}: images must be 2-D, got shape {tuple(image.shape)} (channel first) for {path!r}.")
        channels = image.shape[0]
        if channels in (3, 4):  # RGB / RGBA -> luma
            weights = torch.tensor(_LUMA, dtype=torch.float32).view(3, 1, 1)
            image = (image[:3] * weights).sum(dim=0, keepdim=True)
        elif channels == 2:  # grey + alpha
            image = image[:1]
        elif channels != 1:
            raise DataError(f"{func}: images must have 1, 3 or 4 channels, got {channels} for {path!r}.")
        image = scale(resize(image))
        return np.asarray(image, dtype=np.float32).clip(0.0, 1.0)

    return read


def _read_images(func: str, paths: Sequence[str], image_size: int) -> np.ndarray:
    """Read image files into float32 (N, 1, S, S)."""
    read = _make_image_reader(func, image_size)
    out = np.empty((len(paths), 1, image_size, image_size), dtype=np.float32)
    for i, path in enumerate(paths):
        out[i] = read(path)
    return out


def _check_fraction(func: str, arg: str, value: object) -> float:
    """Return ``value`` as float after checking 0 < value < 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{func}: {arg} must be a float, got {value!r}.")
    if not 0.0 < float(value) < 1.0:
        raise ConfigError(f"{func}: {arg} must be in (0, 1), got {value!r}.")
    return float(value)


def _carve(
    func: str, num_items: int, fractions: Sequence[float], seed: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Seeded split of ``range(num_items)`` into the rest and one part per fraction (each >= 1 item)."""
    order = np.random.default_rng(seed).permutation(num_items)
    counts = [max(1, int(round(f * num_items))) for f in fractions]
    if sum(counts) >= num_items:
        raise DataError(
            f"{func}: the number of images must leave at least one training image after carving fractions "
            f"{list(fractions)!r}, got {num_items} images."
        )
    parts, start = [], 0
    for count in counts:
        parts.append(np.sort(order[start : start + count]))
        start += count
    return np.sort(order[start:]), parts


def load_image_folder(
    root: str | os.PathLike,
    image_size: int = _DEFAULT_IMAGE_SIZE,
    val_fraction: float = _DEFAULT_VAL_FRACTION,
    test_fraction: float = _DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> DatasetSplits:
    """Load ``root/<class_name>/*.{png,jpg,jpeg,nii,nii.gz}`` and split it by a seeded permutation.

    Classes are the sorted subfolder names (label = position). Each file is read with MONAI:
    ``LoadImage(image_only=True, ensure_channel_first=True)``, RGB(A) reduced to grey with
    BT.601 luma weights, ``Resize`` to ``(image_size, image_size)`` (bilinear, antialiased) and
    ``ScaleIntensity`` to [0, 1] (per image). The split is not stratified; validation and test
    each get ``max(1, round(fraction * N))`` images, training the rest.

    Args:
        root: folder holding one subfolder per class.
        image_size: output height and width (>= 1).
        val_fraction: share of images for validation, in (0, 1).
        test_fraction: share of images for test, in (0, 1).
        seed: seed of the split permutation (>= 0).

    Returns:
        The three splits as a ``DatasetSplits``.

    Raises:
        DataError: if ``root`` is not a folder, has no class subfolders, a class has no image file,
            a file cannot be read, or too few images remain for training.
        ConfigError: if ``image_size`` or a fraction is out of range.

    Example:
        >>> splits = load_image_folder("/data/cxr_png", image_size=64)  # doctest: +SKIP
    """
    func = "load_image_folder"
    image_size = check_int(func, "image_size", image_size, 1)
    fractions = [
        _check_fraction(func, "val_fraction", val_fraction),
        _check_fraction(func, "test_fraction", test_fraction),
    ]
    seed = check_int(func, "seed", seed, 0)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{func}: root must be an existing folder, got {str(root)!r}.")
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if not class_dirs:
        raise DataError(f"{func}: root must hold one subfolder per class, got none in {str(root)!r}.")
    paths: list[str] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(str(p) for p in class_dir.iterdir() if _is_image_file(p))
        if not files:
            raise DataError(
                f"{func}: class folder {class_dir.name!r} must hold image files ({', '.join(_IMAGE_SUFFIXES)}), "
                f"got none in {str(class_dir)!r}."
            )
        paths += files
        labels += [label] * len(files)
    train, (val, test) = _carve(func, len(paths), fractions, int(seed))
    images = _read_images(func, paths, image_size)
    label_array = np.asarray(labels, dtype=np.int64)
    logger.debug("%s: %d images in %d classes from %s", func, len(paths), len(class_dirs), root)
    return DatasetSplits(
        train_images=images[train],
        train_labels=label_array[train],
        val_images=images[val],
        val_labels=label_array[val],
        test_images=images[test],
        test_labels=label_array[test],
        class_names=tuple(p.name for p in class_dirs),
    )


def _datalist_items(func: str, path: Path, key: str, base_dir: Path | None) -> tuple[list[str], np.ndarray]:
    """Image paths and int labels of one datalist section, via ``monai.data.load_decathlon_datalist``."""
    from monai.data import load_decathlon_datalist as monai_load_datalist

    items = monai_load_datalist(path, is_segmentation=False, data_list_key=key, base_dir=base_dir)
    paths, labels = [], []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or "image" not in item or "label" not in item:
            raise DataError(
                f"{func}: {key}[{i}] must be an object with 'image' and 'label', got {item!r} in {str(path)!r}."
            )
        label = item["label"]
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise DataError(f"{func}: {key}[{i}]['label'] must be an int >= 0, got {label!r} in {str(path)!r}.")
        image = item["image"]
        if not isinstance(image, str) or not Path(image).is_file():
            raise DataError(f"{func}: {key}[{i}]['image'] must be an existing file, got {image!r} in {str(path)!r}.")
        paths.append(image)
        labels.append(label)
    return paths, np.asarray(labels, dtype=np.int64)


def load_decathlon_datalist(
    datalist_path: str | os.PathLike,
    image_size: int = _DEFAULT_IMAGE_SIZE,
    base_dir: str | os.PathLike | None = None,
) -> DatasetSplits:
    """Load a MONAI decathlon-style classification datalist (``{"image": path, "label": int}`` items).

    ``"training"`` is required; ``"validation"`` and ``"test"`` are optional, and a missing one is
    carved from training by a seeded permutation (seed 0; 20% each, at least one image). Paths are
    resolved by ``monai.data.load_decathlon_datalist`` against ``base_dir`` (default: the
    datalist's folder). Class names come from a decathlon ``"labels"`` object
    (``{"0": "normal", ...}``) when present, else ``class_<k>``. Images are read like
    ``load_image_folder`` does.

    Args:
        datalist_path: the JSON datalist.
        image_size: output height and width (>= 1).
        base_dir: folder that relative image paths are resolved against.

    Returns:
        The three splits as a ``DatasetSplits``.

    Raises:
        DataError: if the file is missing or not JSON, ``"training"`` is missing or empty, an item
            lacks an image file or an int label, or too few images remain for training.
        ConfigError: if ``image_size`` < 1.

    Example:
        >>> splits = load_decathlon_datalist("/data/cxr/datalist.json")  # doctest: +SKIP
    """
    func = "load_decathlon_datalist"
    image_size = check_int(func, "image_size", image_size, 1)
    path = Path(datalist_path)
    document = load_json_file(path, func, "datalist_path")
    if not isinstance(document, dict):
        raise DataError(f"{func}: datalist must be a JSON object, got {type(document).__name__} in {str(path)!r}.")
    sections = {"training": "train", "validation": "val", "test": "test"}
    for key in sections:
        present = key in document
        if present and (not isinstance(document[key], list) or not document[key]):
            raise DataError(f"{func}: {key!r} must be a non-empty list, got {document[key]!r} in {str(path)!r}.")
        for i, item in enumerate(document[key] if present else ()):
            if not isinstance(item, dict):  # MONAI would raise a TypeError that names neither the item nor the file
                raise DataError(
                    f"{func}: {key}[{i}] must be an object with 'image' and 'label', got {item!r} in {str(path)!r}."
                )
        if key == "training" and not present:
            raise DataError(
                f"{func}: key 'training' is missing from {str(path)!r}; present keys: {sorted(document)!r}."
            )
    base = None if base_dir is None else Path(base_dir)
    loaded = {
        split: _datalist_items(func, path, key, base) for key, split in sections.items() if key in document
    }
    missing = [split for split in ("val", "test") if split not in loaded]
    if missing:
        train_paths, train_labels = loaded["train"]
        defaults = {"val": _DEFAULT_VAL_FRACTION, "test": _DEFAULT_TEST_FRACTION}
        rest, parts = _carve(func, len(train_paths), [defaults[s] for s in missing], 0)
        for split, part in zip(missing, parts):
            loaded[split] = ([train_paths[i] for i in part], train_labels[part])
        loaded["train"] = ([train_paths[i] for i in rest], train_labels[rest])
    all_labels = [labels for _, labels in loaded.values()]
    class_names = _default_class_names(all_labels)
    meta = document.get("labels")
    if isinstance(meta, Mapping) and meta:
        try:
            named = {int(k): str(v) for k, v in meta.items()}
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"{func}: 'labels' must map class indices to names, got {meta!r} in {str(path)!r}."
            ) from exc
        if sorted(named) != list(range(len(named))) or len(named) < len(class_names):
            raise DataError(
                f"{func}: 'labels' must name classes 0..{len(class_names) - 1} without gaps, got {meta!r} "
                f"in {str(path)!r}."
            )
        class_names = tuple(named[k] for k in range(len(named)))
    images = {split: _read_images(func, paths, image_size) for split, (paths, _) in loaded.items()}
    logger.debug("%s: %s", func, {split: len(paths) for split, (paths, _) in loaded.items()})
    return DatasetSplits(
        train_images=images["train"],
        train_labels=loaded["train"][1],
        val_images=images["val"],
        val_labels=loaded["val"][1],
        test_images=images["test"],
        test_labels=loaded["test"][1],
        class_names=class_names,
    )
