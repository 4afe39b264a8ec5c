"""Tests of ``nvflare_gia.data.partition``: TMI 2023 and even site schemes, seeded partitions."""

from __future__ import annotations

import numpy as np
import pytest

from nvflare_gia.data import SiteSpec, even_sites, partition_indices, tmi2023_sites
from nvflare_gia.errors import ConfigError, DataError


def test_tmi2023_sites_gives_high_risk_small_and_large_sites() -> None:
    sites = tmi2023_sites(("a", "b", "c", "d"))
    assert [s.name for s in sites] == ["a", "b", "c", "d"]
    assert [s.num_images for s in sites] == [1, 8, 8, None]
    assert [s.batch_size for s in sites] == [1, 4, 4, 8]


def test_partition_indices_gives_tmi2023_sizes_one_eight_rest() -> None:
    parts = partition_indices(600, tmi2023_sites(), seed=0)
    assert list(parts) == ["site-1", "site-2", "site-3"]
    assert [len(v) for v in parts.values()] == [1, 8, 591]


@pytest.mark.parametrize("seed", [0, 1, 17])
@pytest.mark.parametrize("sites", [tmi2023_sites(), tmi2023_sites(["x", "y"]), even_sites(["p", "q", "r"], 4)])
def test_partition_indices_is_disjoint_and_covering_for_seed(seed: int, sites: tuple[SiteSpec, ...]) -> None:
    parts = partition_indices(50, sites, seed=seed)
    joined = np.concatenate(list(parts.values()))
    assert all(v.dtype == np.int64 for v in parts.values())
    assert len(joined) == 50 and np.array_equal(np.sort(joined), np.arange(50))


def test_partition_indices_is_deterministic_and_seed_dependent() -> None:
    first = partition_indices(100, tmi2023_sites(), seed=3)
    again = partition_indices(100, tmi2023_sites(), seed=3)
    other = partition_indices(100, tmi2023_sites(), seed=4)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["site-2"], other["site-2"])


def test_partition_indices_shares_equally_for_even_sites() -> None:
    sites = even_sites(["a", "b", "c"], batch_size=4)
    parts = partition_indices(10, sites, seed=0)
    assert [len(v) for v in parts.values()] == [3, 3, 4]
    assert [s.batch_size for s in sites] == [4, 4, 4]


def test_partition_indices_leaves_unrequested_items_out_without_rest_site() -> None:
    sites = (SiteSpec("a", 2, 1), SiteSpec("b", 3, 1))
    parts = partition_indices(10, sites, seed=0)
    assert [len(v) for v in parts.values()] == [2, 3]
    assert not set(parts["a"]) & set(parts["b"])


def test_partition_indices_raises_when_sizes_exceed_num_items() -> None:
    with pytest.raises(DataError, match="sites request 9 items in total, which exceeds num_items=5"):
        partition_indices(5, tmi2023_sites(), seed=0)


def test_partition_indices_raises_when_rest_partition_empty() -> None:
    with pytest.raises(DataError, match="site 'site-3' \\(the rest\\) would get an empty partition"):
        partition_indices(9, tmi2023_sites(), seed=0)


@pytest.mark.parametrize(("batch_size", "error"), [(0, ConfigError), (2.5, TypeError)])
def test_even_sites_names_itself_for_a_bad_batch_size(batch_size, error) -> None:
    with pytest.raises(error, match="even_sites: batch_size must be"):
        even_sites(["a", "b"], batch_size=batch_size)


def test_partition_indices_raises_when_equal_share_empty() -> None:
    with pytest.raises(DataError, match="num_items must be >= the number of sites \\(3\\).*empty partition"):
        partition_indices(2, even_sites(["a", "b", "c"]), seed=0)


def test_partition_indices_raises_on_duplicate_names() -> None:
    sites = (SiteSpec("a", 1, 1), SiteSpec("b", 1, 1), SiteSpec("a", None, 1))
    with pytest.raises(DataError, match="site names must be unique, got duplicates \\['a'\\]"):
        partition_indices(10, sites, seed=0)


def test_partition_indices_raises_when_two_sites_take_the_rest() -> None:
    sites = (SiteSpec("a", 1, 1), SiteSpec("b", None, 1), SiteSpec("c", None, 1))
    with pytest.raises(DataError, match="at most one site may have num_images=None.*\\['b', 'c'\\]"):
        partition_indices(10, sites, seed=0)


def test_partition_indices_raises_without_sites() -> None:
    with pytest.raises(DataError, match="sites must hold at least one SiteSpec"):
        partition_indices(10, (), seed=0)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"name": "", "num_images": 1, "batch_size": 1}, "SiteSpec: name must be a non-empty string, got ''"),
        ({"name": "a", "num_images": 0, "batch_size": 1}, "SiteSpec: num_images must be >= 1 or None, got 0"),
        ({"name": "a", "num_images": None, "batch_size": 0}, "SiteSpec: batch_size must be >= 1, got 0"),
    ],
)
def test_site_spec_rejects_invalid_field(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        SiteSpec(**kwargs)


def test_tmi2023_sites_requires_two_names() -> None:
    with pytest.raises(ConfigError, match="tmi2023_sites: site_names must hold at least 2 names, got \\('solo',\\)"):
        tmi2023_sites(["solo"])


def test_even_sites_rejects_bare_string() -> None:
    with pytest.raises(TypeError, match="even_sites: site_names must be a sequence of str, got 'site-1'"):
        even_sites("site-1")
