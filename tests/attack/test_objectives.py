"""Update-matching objectives keep float32 precision on updates of millions of parameters."""

from __future__ import annotations

import pytest
import torch

from nvflare_gia.attack import OBJECTIVES
from nvflare_gia.errors import DataError

# Tensor sizes like MONAI ResNet-18's largest convolutions (layer4: 512x512x3x3 = 2,359,296), with
# per-tensor scales spread like a real update's, so that a sequential float32 sum loses digits.
_SIZES = (2_359_296, 2_359_296, 1_179_648, 3_000_000, 512, 64)
_SCALES = (1e-3, 3e-4, 2e-3, 5e-4, 1e-1, 1.0)


def _update(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(size, generator=generator) for size, scale in zip(_SIZES, _SCALES)]


def _float64_reference(name: str, simulated: list[torch.Tensor], observed: list[torch.Tensor]) -> float:
    s, o = torch.cat(simulated).double(), torch.cat(observed).double()
    if name == "l2":
        return float((s - o).pow(2).sum() / o.pow(2).sum())
    if name == "cosine":
        return float(1 - (s * o).sum() / (s.pow(2).sum() * o.pow(2).sum()).sqrt())
    per = [1 - (a * b).sum() / (a.pow(2).sum() * b.pow(2).sum()).sqrt() for a, b in zip(s.split(_SIZES), o.split(_SIZES))]
    return float(torch.stack(per).mean())


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objectives_of_a_ten_million_entry_update_match_float64(name):
    observed = _update(0)
    nearby = [o + 1e-2 * n for o, n in zip(observed, _update(1))]
    objective = OBJECTIVES[name]
    assert abs(float(objective(observed, observed))) < 1e-6  # an exact match scores 0, never below
    # 1 - cos cancels in float32: what is left is its rounding (6e-8), not the 9e-5 of a sequential sum
    expected = _float64_reference(name, nearby, observed)
    assert float(objective(nearby, observed)) == pytest.approx(expected, rel=1e-4, abs=2e-7)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objectives_accept_tensors_of_any_shape_and_differentiate_through_them(name):
    generator = torch.Generator().manual_seed(0)
    observed = [torch.randn(4, 3, 3, 3, generator=generator), torch.randn(7, generator=generator)]
    simulated = [(o + 0.3 * torch.randn(o.shape, generator=generator)).requires_grad_(True) for o in observed]
    value = OBJECTIVES[name](simulated, observed)
    flat_value = OBJECTIVES[name]([t.reshape(-1) for t in simulated], [t.reshape(-1) for t in observed])
    assert float(value) == pytest.approx(float(flat_value), rel=1e-6)
    assert float(value) > 0.0
    grads = torch.autograd.grad(value, simulated)
    assert all(g.shape == t.shape and float(g.abs().sum()) > 0.0 for g, t in zip(grads, simulated))


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objectives_reject_updates_that_do_not_pair_up(name):
    observed = [torch.ones(9), torch.ones(3)]
    with pytest.raises(DataError, match="simulated has 1 tensors, observed has 2"):
        OBJECTIVES[name]([torch.ones(9)], observed)
    with pytest.raises(DataError, match="tensor 1 has 4 entries in simulated, 3 in observed"):
        OBJECTIVES[name]([torch.ones(9), torch.ones(4)], observed)
