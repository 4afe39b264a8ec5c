"""Split a training set between FLARE sites: site specifications and seeded index partitions.

The default scheme follows the client table of Hatamizadeh et al., "Do Gradient Inversion Attacks
Make Federated Learning Unsafe?", IEEE TMI 2023, scaled down to small benchmark datasets: one
high-risk client (1 image, batch 1), small clients (8 images, batch 4) and one large client that
holds the rest (batch 8).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nvflare_gia.data._checks import check_int
from nvflare_gia.errors import ConfigError, DataError

__all__ = ["SiteSpec", "tmi2023_sites", "even_sites", "partition_indices"]

logger = logging.getLogger(__name__)

# TMI 2023 scheme, scaled down: (num_images, batch_size) of the high-risk and the small sites,
# and the batch size of the last site, which takes the rest of the data.
_TMI2023_HIGH_RISK = (1, 1)
_TMI2023_SMALL = (8, 4)
_TMI2023_LARGE_BATCH = 8


@dataclass(frozen=True)
class SiteSpec:
    """How much training data one site holds and the batch size it trains with.

    Args:
        name: FLARE site name, e.g. ``"site-1"``.
        num_images: number of training images of the site; ``None`` means "the rest" (when every
            site of a partition is ``None``, the data is shared equally, see ``partition_indices``).
        batch_size: local training batch size (>= 1).

    Raises:
        TypeError: if an argument has the wrong type.
        ConfigError: if ``name`` is empty, ``num_images`` < 1 or ``batch_size`` < 1.

    Example:
        >>> SiteSpec(name="site-1", num_images=1, batch_size=1)
        SiteSpec(name='site-1', num_images=1, batch_size=1)
    """

    name: str
    num_images: int | None
    batch_size: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"SiteSpec: name must be a str, got {self.name!r}.")
        if not self.name.strip():
            raise ConfigError(f"SiteSpec: name must be a non-empty string, got {self.name!r}.")
        check_int("SiteSpec", "num_images", self.num_images, 1, allow_none=True)
        check_int("SiteSpec", "batch_size", self.batch_size, 1)


def _check_site_names(func: str, site_names: Sequence[str], minimum: int) -> tuple[str, ...]:
    """Return ``site_names`` as a tuple after checking its type and length."""
    if isinstance(site_names, str) or not isinstance(site_names, Sequence):
        raise TypeError(f"{func}: site_names must be a sequence of str, got {site_names!r}.")
    names = tuple(site_names)
    if len(names) < minimum:
        raise ConfigError(f"{func}: site_names must hold at least {minimum} names, got {names!r}.")
    return names


def tmi2023_sites(site_names: Sequence[str] = ("site-1", "site-2", "site-3")) -> tuple[SiteSpec, ...]:
    """Sites of the TMI 2023 scheme (Hatamizadeh et al., IEEE TMI 2023), scaled down.

    The first site is the high-risk client (1 image, batch 1), every middle site is a small client
    (8 images, batch 4) and the last site holds the rest of the data (batch 8).

    Args:
        site_names: site names in order, at least two.

    Returns:
        One ``SiteSpec`` per name, in the order given.

    Raises:
        TypeError: if ``site_names`` is not a sequence of str.
        ConfigError: if fewer than two names are given or a name is empty.

    Example:
        >>> [(s.num_images, s.batch_size) for s in tmi2023_sites()]
        [(1, 1), (8, 4), (None, 8)]
    """
    names = _check_site_names("tmi2023_sites", site_names, 2)
    first = SiteSpec(name=names[0], num_images=_TMI2023_HIGH_RISK[0], batch_size=_TMI2023_HIGH_RISK[1])
    middle = tuple(
        SiteSpec(name=name, num_images=_TMI2023_SMALL[0], batch_size=_TMI2023_SMALL[1]) for name in names[1:-1]
    )
    last = SiteSpec(name=names[-1], num_images=None, batch_size=_TMI2023_LARGE_BATCH)
    return (first, *middle, last)


def even_sites(site_names: Sequence[str], batch_size: int = 8) -> tuple[SiteSpec, ...]:
    """Sites that share the data equally, all with the same batch size.

    Every returned site has ``num_images=None``; ``partition_indices`` reads "all sites None" as
    equal shares (all but the last site get ``num_items // len(sites)``, the last the rest).

    Args:
        site_names: site names in order, at least one.
        batch_size: local batch size of every site (>= 1).

    Returns:
        One ``SiteSpec`` per name, in the order given.

    Raises:
        TypeError: if ``site_names`` is not a sequence of str or ``batch_size`` not an int.
        ConfigError: if no name is given, a name is empty or ``batch_size`` < 1.

    Example:
        >>> [s.num_images for s in even_sites(["a", "b"], batch_size=4)]
        [None, None]
    """
    names = _check_site_names("even_sites", site_names, 1)
    batch_size = check_int("even_sites", "batch_size", batch_size, 1)
    return tuple(SiteSpec(name=name, num_images=None, batch_size=batch_size) for name in names)


def _share_sizes(num_items: int, sites: Sequence[SiteSpec]) -> list[int]:
    """Number of items of each site; raises ``DataError`` when the sites do not fit ``num_items``."""
    if all(site.num_images is None for site in sites):
        share = num_items // len(sites)
        sizes = [share] * (len(sites) - 1) + [num_items - share * (len(sites) - 1)]
        if share == 0:
            raise DataError(
                f"partition_indices: num_items must be >= the number of sites ({len(sites)}) for equal "
                f"shares, got {num_items!r}; site {sites[0].name!r} would get an empty partition."
            )
        return sizes
    rest_sites = [site.name for site in sites if site.num_images is None]
    if len(rest_sites) > 1:
        raise DataError(
            f"partition_indices: at most one site may have num_images=None (the rest) unless all do, "
            f"got {rest_sites!r}."
        )
    explicit = sum(site.num_images for site in sites if site.num_images is not None)
    if explicit > num_items:
        wanted = {site.name: site.num_images for site in sites}
        raise DataError(
            f"partition_indices: sites request {explicit} items in total, which exceeds num_items={num_items!r} "
            f"({wanted!r})."
        )
    if rest_sites and explicit == num_items:
        raise DataError(
            f"partition_indices: site {rest_sites[0]!r} (the rest) would get an empty partition: the other "
            f"sites take all num_items={num_items!r} items."
        )
    return [num_items - explicit if site.num_images is None else site.num_images for site in sites]


def partition_indices(num_items: int, sites: Sequence[SiteSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Split ``range(num_items)`` between sites: a seeded permutation cut into consecutive slices.

    Slices are taken in the order of ``sites``. A site with ``num_images=None`` gets the rest
    (at most one such site); when every site is ``None`` the items are shared equally, all but the
    last site getting ``num_items // len(sites)`` items and the last the rest. Items not requested
    by any site (only possible when no site is ``None``) are left out.

    Args:
        num_items: number of items to split (>= 0).
        sites: site specifications, with unique names.
        seed: seed of the permutation (>= 0).

    Returns:
        ``{site name: int64 indices}`` in the order of ``sites``; the index arrays are disjoint.

    Raises:
        TypeError: if ``num_items`` or ``seed`` is not an int, or a site is not a ``SiteSpec``.
        ConfigError: if ``seed`` is negative.
        DataError: if ``sites`` is empty, names repeat, the sizes exceed ``num_items``, more than one
            (but not every) site is ``None``, or a site would get an empty partition.

    Example:
        >>> parts = partition_indices(20, tmi2023_sites(), seed=0)
        >>> {name: len(idx) for name, idx in parts.items()}
        {'site-1': 1, 'site-2': 8, 'site-3': 11}
    """
    if isinstance(num_items, bool) or not isinstance(num_items, (int, np.integer)):
        raise TypeError(f"partition_indices: num_items must be an int, got {num_items!r}.")
    if num_items < 0:
        raise DataError(f"partition_indices: num_items must be >= 0, got {num_items!r}.")
    check_int("partition_indices", "seed", seed, 0)
    sites = tuple(sites)
    if not sites:
        raise DataError(f"partition_indices: sites must hold at least one SiteSpec, got {sites!r}.")
    for site in sites:
        if not isinstance(site, SiteSpec):
            raise TypeError(f"partition_indices: sites must hold SiteSpec objects, got {site!r}.")
    names = [site.name for site in sites]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DataError(f"partition_indices: site names must be unique, got duplicates {duplicates!r} in {names!r}.")
    sizes = _share_sizes(int(num_items), sites)
    order = np.random.default_rng(int(seed)).permutation(int(num_items)).astype(np.int64)
    bounds = np.cumsum([0, *sizes])
    parts = {site.name: order[bounds[i] : bounds[i + 1]].copy() for i, site in enumerate(sites)}
    logger.debug("partition_indices: %d items -> %s", num_items, {k: len(v) for k, v in parts.items()})
    return parts
