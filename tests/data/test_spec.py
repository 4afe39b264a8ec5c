"""Tests of ``nvflare_gia.data.spec``: DataSpec validation and JSON, and per-site data loading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from nvflare_gia.data import (
    DataSpec,
    PartitionScheme,
    SiteData,
    load_site_data,
    load_splits,
    load_test_data,
    partition_indices,
    tmi2023_sites,
)
from nvflare_gia.errors import ConfigError, DataError


def _write_npz(path: Path, n_train: int = 30, size: int = 8, fill: int | None = None) -> Path:
    """Write a small npz whose image i of each split holds a distinct value (or ``fill`` everywhere)."""
    arrays = {}
    for split, count in (("train", n_train), ("val", 9), ("test", 6)):
        values = np.arange(count, dtype=np.uint8) if fill is None else np.full(count, fill, np.uint8)
        arrays[f"{split}_images"] = np.broadcast_to(values[:, None, None], (count, size, size)).copy()
        arrays[f"{split}_labels"] = np.arange(count) % 2
    np.savez(path, **arrays)
    return path


# --- DataSpec ---------------------------------------------------------------------------------


def test_data_spec_round_trips_through_json() -> None:
    spec = DataSpec(source="x.npz", scheme="even", site_names=("a", "b"), batch_size=4, image_size=32, seed=3,
                    max_train_images=50)
    text = spec.to_json()
    assert json.loads(text)["site_names"] == ["a", "b"] and json.loads(text)["scheme"] == "even"
    assert DataSpec.from_json(text) == spec


def test_data_spec_with_numpy_ints_round_trips_through_json() -> None:
    spec = DataSpec(source="x.npz", scheme="even", site_names=("a", "b"), batch_size=np.int64(4),
                    image_size=np.int32(32), seed=np.int64(3), max_train_images=np.int64(50))
    assert json.loads(spec.to_json())["batch_size"] == 4
    assert all(type(spec.to_dict()[k]) is int for k in ("batch_size", "image_size", "seed", "max_train_images"))
    assert DataSpec.from_json(spec.to_json()) == spec


def test_data_spec_reads_json_file_path(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"scheme": "tmi2023", "site_names": ["h", "s", "l"]}))
    spec = DataSpec.from_json(str(path))
    assert spec.site_names == ("h", "s", "l") and spec.source == "synthetic"
    assert DataSpec.from_json(path) == spec


def test_data_spec_from_dict_converts_lists_to_tuples() -> None:
    spec = DataSpec.from_dict({"site_names": ["a", "b"]})
    assert spec.site_names == ("a", "b") and isinstance(spec.site_names, tuple)
    assert hash(spec) == hash(DataSpec(site_names=("a", "b")))
    assert spec.scheme is PartitionScheme.TMI2023 and spec.to_dict()["scheme"] == "tmi2023"


def test_data_spec_from_dict_raises_on_unknown_key() -> None:
    with pytest.raises(ConfigError, match=r"key 'sitenames' is not a DataSpec field; allowed keys: \['source', .*"
                       r"Did you mean 'site_names'\?"):
        DataSpec.from_dict({"sitenames": ["a", "b"]})


def test_data_spec_raises_on_unknown_scheme() -> None:
    with pytest.raises(ConfigError, match=r"scheme must be one of \['tmi2023', 'even'\], got 'tmi'\. Did you mean"):
        DataSpec(scheme="tmi")


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"site_names": ("a", "a", "b")}, ConfigError, r"site_names must be unique, got duplicates \['a'\]"),
        ({"site_names": ("only",)}, ConfigError, "site_names must hold at least 2 names for scheme 'tmi2023'"),
        ({"site_names": "site-1"}, TypeError, "site_names must be a sequence of str"),
        ({"batch_size": 0}, ConfigError, "DataSpec: batch_size must be >= 1, got 0"),
        ({"image_size": 8}, ConfigError, "DataSpec: image_size must be >= 16 or None, got 8"),
        ({"max_train_images": 0}, ConfigError, "DataSpec: max_train_images must be >= 1 or None, got 0"),
        ({"seed": "0"}, TypeError, "DataSpec: seed must be an int, got '0'"),
        ({"source": ""}, ConfigError, "DataSpec: source must be 'synthetic' or a path, got ''"),
    ],
)
def test_data_spec_rejects_invalid_field(kwargs: dict, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        DataSpec(**kwargs)


def test_data_spec_from_json_raises_on_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="text_or_path must be a JSON object or an existing .json file"):
        DataSpec.from_json(str(tmp_path / "none.json"))


def test_data_spec_sites_follow_scheme() -> None:
    assert DataSpec().sites() == tmi2023_sites()
    even = DataSpec(scheme="even", site_names=("a", "b", "c"), batch_size=2).sites()
    assert [(s.name, s.num_images, s.batch_size) for s in even] == [("a", None, 2), ("b", None, 2), ("c", None, 2)]


# --- load_splits / load_site_data / load_test_data --------------------------------------------


def test_load_splits_gives_synthetic_by_default() -> None:
    splits = load_splits(DataSpec(image_size=16))
    assert splits.train_images.shape == (600, 1, 16, 16)
    assert (len(splits.val_labels), len(splits.test_labels)) == (200, 200)


def test_load_splits_returns_writable_copies_of_cache(tmp_path: Path) -> None:
    spec = DataSpec(source=str(_write_npz(tmp_path / "d.npz")))
    first = load_splits(spec)
    first.train_images[:] = 0.5
    assert load_splits(spec).train_images[1].max() == pytest.approx(1 / 255)


def test_load_splits_reloads_rewritten_file(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "d.npz", fill=10)
    spec = DataSpec(source=str(path))
    assert load_splits(spec).test_images.max() == pytest.approx(10 / 255)
    _write_npz(path, fill=20)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert load_splits(spec).test_images.max() == pytest.approx(20 / 255)


def test_load_splits_resolves_relative_path_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_npz(tmp_path / "rel.npz")
    monkeypatch.chdir(tmp_path)
    assert load_splits(DataSpec(source="rel.npz")).image_size == 8


def test_load_splits_raises_naming_missing_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"source must be 'synthetic' or an existing .* got '.*absent\.npz'"):
        load_splits(DataSpec(source=str(tmp_path / "absent.npz")))


def test_load_splits_raises_on_unsupported_file_type(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b")
    pattern = r"source must be a .npz file, an image folder or a .json datalist, got '.*data\.csv'"
    with pytest.raises(DataError, match=pattern):
        load_splits(DataSpec(source=str(tmp_path / "data.csv")))


def test_load_splits_caps_train_images_before_partitioning(tmp_path: Path) -> None:
    spec = DataSpec(source=str(_write_npz(tmp_path / "d.npz")), max_train_images=20)
    assert len(load_splits(spec).train_labels) == 20
    assert len(load_site_data(spec, "site-3").train_labels) == 11


def test_load_site_data_gives_disjoint_tmi2023_sites_of_nih(nih_path: Path) -> None:
    spec = DataSpec(source=str(nih_path))
    splits = load_splits(spec)
    sites = [load_site_data(spec, name) for name in spec.site_names]
    assert [len(s.train_labels) for s in sites] == [1, 8, 591]
    assert [s.batch_size for s in sites] == [1, 4, 8]
    assert all(s.num_classes == 2 and s.class_names == ("normal", "abnormal") for s in sites)
    train_idx = np.concatenate([s.train_indices for s in sites])
    assert np.array_equal(np.sort(train_idx), np.arange(600))
    val_idx = np.concatenate([s.val_indices for s in sites])
    assert [len(s.val_labels) for s in sites] == [66, 66, 68]
    assert np.array_equal(np.sort(val_idx), np.arange(200))
    expected = partition_indices(600, spec.sites(), seed=0)
    for site in sites:
        np.testing.assert_array_equal(site.train_indices, expected[site.name])
        np.testing.assert_array_equal(site.train_images, splits.train_images[site.train_indices])
        np.testing.assert_array_equal(site.val_labels, splits.val_labels[site.val_indices])


def test_load_site_data_changes_partition_with_seed(tmp_path: Path) -> None:
    source = str(_write_npz(tmp_path / "d.npz"))
    a = load_site_data(DataSpec(source=source, seed=0), "site-2").train_indices
    b = load_site_data(DataSpec(source=source, seed=1), "site-2").train_indices
    assert not np.array_equal(a, b)


def test_load_site_data_raises_on_unknown_site() -> None:
    with pytest.raises(DataError, match=r"site_name must be one of \['site-1', 'site-2', 'site-3'\], got 'site-9'"):
        load_site_data(DataSpec(image_size=16), "site-9")


def test_load_site_data_raises_when_train_split_too_small(tmp_path: Path) -> None:
    spec = DataSpec(source=str(_write_npz(tmp_path / "d.npz")), max_train_images=5)
    with pytest.raises(DataError, match="the train split of .* \\(5 images\\) cannot be divided.*exceeds num_items=5"):
        load_site_data(spec, "site-1")


def test_load_site_data_shares_evenly_under_even_scheme(pneumonia_path: Path) -> None:
    spec = DataSpec(source=str(pneumonia_path), scheme="even", site_names=("a", "b"), batch_size=16, image_size=32)
    a, b = load_site_data(spec, "a"), load_site_data(spec, "b")
    assert (len(a.train_labels), len(b.train_labels)) == (2354, 2354)
    assert a.batch_size == b.batch_size == 16 and a.train_images.shape[1:] == (1, 32, 32)
    assert not set(a.train_indices) & set(b.train_indices)


def test_load_test_data_matches_test_split(nih_path: Path) -> None:
    images, labels = load_test_data(DataSpec(source=str(nih_path)))
    raw = np.load(nih_path)
    assert images.shape == (200, 1, 64, 64) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, raw["test_labels"])
    assert images.flags.writeable


def test_site_data_rejects_mismatched_lengths() -> None:
    x, y = np.zeros((2, 1, 4, 4), np.float32), np.zeros(2, np.int64)
    with pytest.raises(DataError, match="SiteData: val_labels must have length 2 \\(one per val image\\), got 1"):
        SiteData("a", x, y, x, y[:1], batch_size=1, num_classes=2, class_names=("n", "a"))

