"""The shared update helpers: validation messages, float/int entries, torch <-> numpy round trips."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from nvflare_gia.defenses._update import (
    is_bn_running_stat,
    is_perturbable,
    restore_like,
    squared_norm,
    to_numpy,
    to_tensor,
    validate_update,
)
from nvflare_gia.errors import DataError


def test_validate_update_names_the_key_and_both_shapes():
    with pytest.raises(DataError, match=r"update\['fc.weight'\] has shape \(10, 84\); global model has \(10, 120\)"):
        validate_update({"fc.weight": np.zeros((10, 84))}, {"fc.weight": np.zeros((10, 120))}, owner="X")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_validate_update_rejects_non_finite_values_numpy_and_torch(bad):
    array = np.zeros(5, dtype=np.float32)
    array[3] = bad
    with pytest.raises(DataError, match=r"update\['w'\] has 1 non-finite"):
        validate_update({"w": array}, owner="X")
    with pytest.raises(DataError, match=r"update\['w'\] has 1 non-finite"):
        validate_update({"w": torch.from_numpy(array)}, owner="X")


def test_validate_update_accepts_large_finite_values_whose_sum_overflows():
    validate_update({"w": np.full(4, 3e38, dtype=np.float32)}, owner="X")


def test_validate_update_reports_missing_and_unexpected_keys_together():
    with pytest.raises(DataError) as info:
        validate_update({"a": np.zeros(1), "c": np.zeros(1)}, {"a": np.zeros(1), "b": np.zeros(1)}, owner="X")
    message = str(info.value)
    assert "lacks ['b']" in message and "has ['c']" in message


def test_validate_update_rejects_empty_non_mapping_and_non_arrays():
    with pytest.raises(DataError, match="at least one entry"):
        validate_update({}, owner="X")
    with pytest.raises(TypeError, match="mapping"):
        validate_update([np.zeros(1)], owner="X")
    with pytest.raises(DataError, match=r"update\['w'\] must be a numpy array or torch tensor, got list"):
        validate_update({"w": [1.0, 2.0]}, owner="X")
    with pytest.raises(DataError, match="must be real numbers"):
        validate_update({"w": np.array(["a"])}, owner="X")


def test_validate_update_allows_float_counters_against_int_counters():
    validate_update({"bn.num_batches_tracked": np.array(2.0)}, {"bn.num_batches_tracked": np.array(5, dtype=np.int64)}, owner="X")


def test_counters_and_integer_buffers_are_never_perturbable():
    assert not is_perturbable("bn.num_batches_tracked", np.array(2.0))
    assert not is_perturbable("bn.num_batches_tracked", np.array(2))
    assert not is_perturbable("step", torch.tensor(3))
    assert is_perturbable("bn.running_var", np.zeros(2, dtype=np.float32))
    assert is_bn_running_stat("features.1.running_mean") and not is_bn_running_stat("features.1.weight")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64])
def test_restore_like_keeps_torch_container_dtype_and_shape(dtype):
    reference = torch.zeros(2, 3, dtype=dtype)
    restored = restore_like(np.ones(6, dtype=np.float32), reference)
    assert isinstance(restored, torch.Tensor) and restored.dtype == dtype and restored.shape == (2, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64])
def test_restore_like_keeps_numpy_container_dtype_and_shape(dtype):
    reference = np.zeros((2, 3), dtype=dtype)
    restored = restore_like(torch.ones(6), reference)
    assert isinstance(restored, np.ndarray) and restored.dtype == dtype and restored.shape == (2, 3)


def test_to_tensor_copies_and_to_numpy_reads_bfloat16():
    array = np.arange(3, dtype=np.float32)
    tensor = to_tensor(array)
    tensor += 1
    assert array.tolist() == [0.0, 1.0, 2.0]
    assert to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float32


def test_squared_norm_sums_all_entries():
    assert squared_norm([np.full(4, 2.0, dtype=np.float32), torch.full((2,), 3.0)]) == pytest.approx(16.0 + 18.0)


def test_core_defenses_do_not_import_nvflare():
    code = (
        "import sys, nvflare_gia.defenses, nvflare_gia.defenses.shadow, nvflare_gia.defenses.latent;"
        "bad = [m for m in sys.modules if m == 'nvflare' or m.startswith('nvflare.')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
