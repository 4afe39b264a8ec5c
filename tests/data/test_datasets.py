"""Tests of ``nvflare_gia.data.datasets``: npz files, image folders and decathlon datalists."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from nvflare_gia.data import DatasetSplits, load_decathlon_datalist, load_image_folder, load_npz
from nvflare_gia.errors import ConfigError, DataError


def _write_npz(path: Path, n: tuple[int, int, int] = (6, 3, 3), size: int = 8, **overrides: object) -> Path:
    """Write a small valid npz (uint8 images, int labels), with some arrays replaced or removed."""
    rng = np.random.default_rng(0)
    arrays: dict[str, object] = {}
    for split, count in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(count, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.arange(count) % 2
    for key, value in overrides.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez(path, **arrays)
    return path


def _splits(**overrides: object) -> dict[str, object]:
    """Keyword arguments of a valid DatasetSplits, with some replaced."""
    x, y = np.zeros((2, 1, 4, 4), np.float32), np.array([0, 1], dtype=np.int64)
    kwargs: dict[str, object] = dict(
        train_images=x, train_labels=y, val_images=x, val_labels=y, test_images=x, test_labels=y,
        class_names=("a", "b"),
    )
    kwargs.update(overrides)
    return kwargs


# --- load_npz on the real files -------------------------------------------------------------


def test_load_npz_reads_nih_as_scaled_float(nih_path: Path) -> None:
    splits = load_npz(nih_path)
    raw = np.load(nih_path)
    assert splits.train_images.shape == (600, 1, 64, 64)
    assert splits.val_images.shape == (200, 1, 64, 64) and splits.test_images.shape == (200, 1, 64, 64)
    assert splits.train_images.dtype == np.float32 and splits.train_labels.dtype == np.int64
    np.testing.assert_allclose(splits.train_images[:, 0], raw["train_images"] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(splits.test_labels, raw["test_labels"])
    assert splits.class_names == ("normal", "abnormal")
    assert splits.num_classes == 2 and splits.image_size == 64


def test_load_npz_flattens_medmnist_column_labels(pneumonia_path: Path) -> None:
    splits = load_npz(pneumonia_path)
    raw = np.load(pneumonia_path)
    assert raw["train_labels"].shape == (4708, 1)
    assert splits.train_labels.shape == (4708,) and splits.train_labels.dtype == np.int64
    np.testing.assert_array_equal(splits.val_labels, raw["val_labels"][:, 0])
    assert splits.image_size == 28
    assert splits.class_names == ("class_0", "class_1")


def test_load_npz_resizes_to_image_size(pneumonia_path: Path) -> None:
    native = load_npz(pneumonia_path)
    resized = load_npz(pneumonia_path, image_size=64)
    assert resized.test_images.shape == (624, 1, 64, 64)
    assert 0.0 <= resized.test_images.min() and resized.test_images.max() <= 1.0
    # Bilinear upsampling keeps each image's mean brightness.
    means = resized.test_images.mean(axis=(1, 2, 3)), native.test_images.mean(axis=(1, 2, 3))
    np.testing.assert_allclose(*means, atol=0.02)


# --- load_npz on small written files ---------------------------------------------------------


@pytest.mark.parametrize("layout", ["nhw", "nhw1", "n1hw", "float"])
def test_load_npz_accepts_every_image_layout(tmp_path: Path, layout: str) -> None:
    reference = load_npz(_write_npz(tmp_path / "ref.npz"))
    raw = np.load(tmp_path / "ref.npz")
    images = {
        "nhw1": raw["train_images"][..., None],
        "n1hw": raw["train_images"][:, None],
        "float": raw["train_images"].astype(np.float64) / 255.0,
        "nhw": raw["train_images"],
    }[layout]
    splits = load_npz(_write_npz(tmp_path / "alt.npz", train_images=images))
    np.testing.assert_allclose(splits.train_images, reference.train_images, atol=1e-6)


def test_load_npz_raises_when_file_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"load_npz: path must be an existing \.npz file, got '.*nope\.npz'"):
        load_npz(tmp_path / "nope.npz")


def test_load_npz_raises_when_file_is_not_npz(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(DataError, match="readable .npz"):
        load_npz(bad)


@pytest.mark.parametrize("key", ["class_names", "val_images"])
def test_load_npz_raises_naming_the_key_of_an_object_array(tmp_path: Path, key: str) -> None:
    # pandas columns and lists of arrays are saved as dtype=object, which needs pickle to load
    value = np.array(["normal", "abnormal"], dtype=object) if key == "class_names" else np.empty(3, dtype=object)
    path = _write_npz(tmp_path / "d.npz", **{key: value})
    with pytest.raises(DataError, match=rf"load_npz: {key} in '.*d\.npz' must be a numeric or string array readable without pickle, got: Object arrays"):
        load_npz(path)


def test_load_npz_raises_naming_missing_key_and_present_keys(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "d.npz", val_labels=None)
    with pytest.raises(DataError, match=r"key 'val_labels' is missing .*present keys: \[.*'train_images'"):
        load_npz(path)


def test_load_npz_raises_when_lengths_mismatch(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "d.npz", train_labels=np.zeros(5, dtype=np.int64))
    with pytest.raises(DataError, match="train_images and train_labels must have the same length, got 6 images and 5"):
        load_npz(path)


def test_load_npz_raises_when_image_dtype_wrong(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "d.npz", test_images=np.zeros((3, 8, 8), dtype=np.int32))
    with pytest.raises(DataError, match="test_images must have dtype uint8 or float.*int32"):
        load_npz(path)


def test_load_npz_raises_when_label_dtype_not_integer(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "d.npz", val_labels=np.array([0.0, 1.0, 0.5]))
    with pytest.raises(DataError, match="val_labels must have an integer dtype, got float64"):
        load_npz(path)


def test_load_npz_raises_when_float_images_leave_unit_range(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "d.npz", train_images=np.full((6, 8, 8), 2.0, dtype=np.float32))
    with pytest.raises(DataError, match=r"train_images must be uint8 or float in \[0, 1\]"):
        load_npz(path)


@pytest.mark.parametrize(
    ("key", "value", "pattern"),
    [
        ("test_images", np.zeros((3, 8, 8, 3), np.uint8), r"test_images must have shape \(N, H, W\).*\(3, 8, 8, 3\)"),
        ("train_images", np.zeros((6, 64), np.uint8), r"train_images must have shape .*\(6, 64\)"),
        ("train_labels", np.zeros((6, 2), np.int64), r"train_labels must have shape \(N,\) or \(N, 1\), got \(6, 2\)"),
    ],
)
def test_load_npz_raises_when_shape_wrong(tmp_path: Path, key: str, value: np.ndarray, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_npz(_write_npz(tmp_path / "d.npz", **{key: value}))


def test_load_npz_raises_when_split_empty(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "d.npz", val_images=np.zeros((0, 8, 8), np.uint8), val_labels=np.zeros(0, np.int64))
    with pytest.raises(DataError, match="val_images must not be empty"):
        load_npz(path)


def test_load_npz_requires_square_images_unless_resized(tmp_path: Path) -> None:
    rect = {f"{s}_images": np.zeros((n, 8, 12), np.uint8) for s, n in (("train", 6), ("val", 3), ("test", 3))}
    path = _write_npz(tmp_path / "d.npz", **rect)
    with pytest.raises(DataError, match="train_images must be square unless image_size is given"):
        load_npz(path)
    assert load_npz(path, image_size=16).image_size == 16


def test_load_npz_raises_when_label_exceeds_class_names(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "d.npz", class_names=np.array(["only"]))
    with pytest.raises(DataError, match=r"train_labels must lie in \[0, 1\)"):
        load_npz(path)


def test_load_npz_rejects_non_positive_image_size(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="load_npz: image_size must be >= 1 or None, got 0"):
        load_npz(_write_npz(tmp_path / "d.npz"), image_size=0)


# --- DatasetSplits validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"train_images": np.zeros((2, 1, 4, 4), np.float64)}, "train_images must have dtype float32, got float64"),
        ({"val_images": np.zeros((2, 4, 4), np.float32)}, r"val_images must have shape \(N, 1, H, H\)"),
        ({"test_labels": np.array([0, 2])}, r"test_labels must lie in \[0, 2\)"),
        ({"test_labels": np.array([0, 1], dtype=np.int32)}, "test_labels must have dtype int64"),
        ({"val_labels": np.array([0], dtype=np.int64)}, "val_labels must have one label per image, got 1 labels for 2"),
        ({"train_images": np.full((2, 1, 4, 4), np.nan, np.float32)}, r"train_images must lie in \[0, 1\]"),
        ({"test_images": np.zeros((2, 1, 8, 8), np.float32)}, "all splits must have the same image size"),
        ({"class_names": ("a", "a")}, "class_names must be unique"),
    ],
)
def test_dataset_splits_rejects_invalid_arrays(overrides: dict, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        DatasetSplits(**_splits(**overrides))


def test_dataset_splits_converts_class_name_list_to_tuple() -> None:
    splits = DatasetSplits(**_splits(class_names=["a", "b"]))
    assert splits.class_names == ("a", "b") and splits.num_classes == 2 and splits.image_size == 4


# --- image folders and datalists (MONAI) ----------------------------------------------------


def _gradient(size: int, axis: int) -> np.ndarray:
    """uint8 image whose intensity grows along ``axis`` (0: down the rows, 1: along the columns)."""
    ramp = np.linspace(0, 255, size).astype(np.uint8)
    return np.repeat(ramp[:, None], size, axis=1) if axis == 0 else np.repeat(ramp[None, :], size, axis=0)


def _write_folder(root: Path) -> Path:
    """root/abnormal: row gradients (PNG, RGB PNG, NIfTI); root/normal: column gradients (PNG, JPEG)."""
    (root / "abnormal").mkdir(parents=True)
    (root / "normal").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(_gradient(40, 0)).save(root / "abnormal" / f"a{i}.png")
        Image.fromarray(_gradient(40, 1)).save(root / "normal" / f"n{i}.png")
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 1] = _gradient(40, 0)  # green channel only
    Image.fromarray(rgb, mode="RGB").save(root / "abnormal" / "rgb.png")
    nib.save(nib.Nifti1Image(_gradient(40, 0).astype(np.float32), np.eye(4)), root / "abnormal" / "vol.nii.gz")
    Image.fromarray(_gradient(40, 1)).save(root / "normal" / "n.jpg", quality=95)
    (root / "normal" / "notes.txt").write_text("ignored")
    return root


def _orientation(images: np.ndarray) -> np.ndarray:
    """+1 where intensity grows down the rows, -1 where it grows along the columns."""
    rows = np.diff(images[:, 0].mean(axis=2), axis=1).mean(axis=1)
    cols = np.diff(images[:, 0].mean(axis=1), axis=1).mean(axis=1)
    return np.sign(rows - cols)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_folder(tmp_path_factory.mktemp("folder") / "root")


def test_load_image_folder_labels_by_sorted_subfolder(image_root: Path) -> None:
    splits = load_image_folder(image_root, image_size=32, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert splits.class_names == ("abnormal", "normal")
    images = np.concatenate([splits.train_images, splits.val_images, splits.test_images])
    labels = np.concatenate([splits.train_labels, splits.val_labels, splits.test_labels])
    assert images.shape == (11, 1, 32, 32) and images.dtype == np.float32
    assert np.bincount(labels).tolist() == [6, 5]
    assert (len(splits.val_labels), len(splits.test_labels)) == (2, 2)
    np.testing.assert_allclose(images.min(axis=(1, 2, 3)), 0.0, atol=1e-6)  # ScaleIntensity per image
    np.testing.assert_allclose(images.max(axis=(1, 2, 3)), 1.0, atol=1e-6)
    # Rows stay rows for PNG, RGB PNG, JPEG and NIfTI alike, and each label matches its folder.
    np.testing.assert_array_equal(_orientation(images), np.where(labels == 0, 1.0, -1.0))


def test_load_image_folder_split_is_deterministic_per_seed(image_root: Path) -> None:
    first = load_image_folder(image_root, image_size=16, seed=1)
    again = load_image_folder(image_root, image_size=16, seed=1)
    other = [load_image_folder(image_root, image_size=16, seed=s).train_labels for s in (2, 3, 4)]
    np.testing.assert_array_equal(first.train_images, again.train_images)
    assert any(not np.array_equal(first.train_labels, labels) for labels in other)


def test_load_image_folder_raises_when_root_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="root must be an existing folder, got '.*missing'"):
        load_image_folder(tmp_path / "missing")


def test_load_image_folder_raises_when_class_has_no_images(tmp_path: Path) -> None:
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="class folder 'empty_class' must hold image files"):
        load_image_folder(tmp_path)


def test_load_image_folder_raises_when_file_unreadable(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    for i in range(5):
        Image.fromarray(_gradient(8, 0)).save(tmp_path / "c" / f"{i}.png")
    (tmp_path / "c" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="image file must be readable by MONAI LoadImage, got '.*broken.png'"):
        load_image_folder(tmp_path, image_size=8)


def test_load_image_folder_rejects_fraction_out_of_range(image_root: Path) -> None:
    with pytest.raises(ConfigError, match="val_fraction must be in \\(0, 1\\), got 1.5"):
        load_image_folder(image_root, val_fraction=1.5)


def _write_datalist(root: Path, sections: dict, **extra: object) -> Path:
    """Write datalist.json beside row/column-gradient PNGs named <label>_<i>.png (relative paths)."""
    root.mkdir(parents=True, exist_ok=True)
    document: dict = dict(extra)
    for key, count in sections.items():
        items = []
        for i in range(count):
            label = i % 2
            name = f"{key}_{i}.png"
            Image.fromarray(_gradient(24, 0 if label == 0 else 1)).save(root / name)
            items.append({"image": name, "label": label})
        document[key] = items
    path = root / "datalist.json"
    path.write_text(json.dumps(document))
    return path


def test_load_decathlon_datalist_reads_all_sections(tmp_path: Path) -> None:
    path = _write_datalist(
        tmp_path / "dl", {"training": 6, "validation": 4, "test": 2}, labels={"0": "normal", "1": "effusion"}
    )
    splits = load_decathlon_datalist(path, image_size=16)
    assert (len(splits.train_labels), len(splits.val_labels), len(splits.test_labels)) == (6, 4, 2)
    assert splits.class_names == ("normal", "effusion") and splits.image_size == 16
    np.testing.assert_array_equal(splits.val_labels, [0, 1, 0, 1])
    np.testing.assert_array_equal(_orientation(splits.train_images), np.where(splits.train_labels == 0, 1.0, -1.0))


def test_load_decathlon_datalist_carves_missing_sections_deterministically(tmp_path: Path) -> None:
    path = _write_datalist(tmp_path / "dl", {"training": 10})
    first = load_decathlon_datalist(path, image_size=8)
    again = load_decathlon_datalist(path, image_size=8)
    assert (len(first.train_labels), len(first.val_labels), len(first.test_labels)) == (6, 2, 2)
    assert first.class_names == ("class_0", "class_1")
    np.testing.assert_array_equal(first.test_images, again.test_images)


def test_load_decathlon_datalist_raises_when_training_missing(tmp_path: Path) -> None:
    path = _write_datalist(tmp_path / "dl", {"validation": 2})
    with pytest.raises(DataError, match=r"key 'training' is missing .*present keys: \['validation'\]"):
        load_decathlon_datalist(path)


def test_load_decathlon_datalist_raises_when_label_not_int(tmp_path: Path) -> None:
    path = _write_datalist(tmp_path / "dl", {"training": 6})
    document = json.loads(path.read_text())
    document["training"][3]["label"] = "pneumonia"
    path.write_text(json.dumps(document))
    with pytest.raises(DataError, match=r"training\[3\]\['label'\] must be an int >= 0, got 'pneumonia'"):
        load_decathlon_datalist(path)


def test_load_decathlon_datalist_raises_data_error_naming_an_item_that_is_not_an_object(tmp_path: Path) -> None:
    path = _write_datalist(tmp_path / "dl", {"training": 6})
    document = json.loads(path.read_text())
    document["training"][4] = "training_4.png"
    path.write_text(json.dumps(document))
    with pytest.raises(DataError, match=r"training\[4\] must be an object with 'image' and 'label', got 'training_4.png'"):
        load_decathlon_datalist(path)


def test_load_decathlon_datalist_raises_when_image_missing(tmp_path: Path) -> None:
    path = _write_datalist(tmp_path / "dl", {"training": 6})
    (tmp_path / "dl" / "training_2.png").unlink()
    with pytest.raises(DataError, match=r"training\[2\]\['image'\] must be an existing file, got '.*training_2.png'"):
        load_decathlon_datalist(path)


def test_load_decathlon_datalist_raises_when_file_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="datalist_path must be an existing JSON file, got '.*absent.json'"):
        load_decathlon_datalist(tmp_path / "absent.json")
