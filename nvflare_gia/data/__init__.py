"""Datasets, site partitions and synthetic chest X-rays; ``DataSpec`` says which site trains on what."""

from nvflare_gia.data.datasets import DatasetSplits, load_decathlon_datalist, load_image_folder, load_npz
from nvflare_gia.data.partition import SiteSpec, even_sites, partition_indices, tmi2023_sites
from nvflare_gia.data.spec import (
    DataSpec,
    PartitionScheme,
    SiteData,
    load_site_data,
    load_splits,
    load_test_data,
)
from nvflare_gia.data.synthetic import make_synthetic_cxr, synthetic_splits

__all__ = [
    "DatasetSplits",
    "load_npz",
    "load_image_folder",
    "load_decathlon_datalist",
    "make_synthetic_cxr",
    "synthetic_splits",
    "SiteSpec",
    "tmi2023_sites",
    "even_sites",
    "partition_indices",
    "DataSpec",
    "PartitionScheme",
    "SiteData",
    "load_splits",
    "load_site_data",
    "load_test_data",
]
