"""Fixtures for the defense tests: real updates of the benchmark CNN trained on real chest X-rays.

Session fixtures hand out read-only NumPy arrays, so a defense that writes into its input fails
loudly in every test that uses them.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nvflare_gia.defenses import DefenseContext
from nvflare_gia.models import SmallCNN
from nvflare_gia.training import TrainingConfig, train_local, training_meta

CXR_PATH = Path(__file__).resolve().parents[3] / "shared" / "data" / "nih_cxr1000_64.npz"


@pytest.fixture(autouse=True)
def _one_thread_per_test(one_torch_thread):
    """Every defense test runs on one torch thread (see ``one_torch_thread``)."""


@dataclasses.dataclass(frozen=True)
class Case:
    """A client's round: the global model, its update and the data it trained on (all read-only NumPy)."""

    global_state: dict[str, np.ndarray]
    update: dict[str, np.ndarray]
    images: np.ndarray
    labels: np.ndarray
    batch_size: int
    training: TrainingConfig

    def context(self, round_index: int = 0) -> DefenseContext:
        return DefenseContext(
            round_index=round_index,
            images=self.images,
            labels=self.labels,
            batch_size=self.batch_size,
            training=self.training,
            model="small_cnn",
            num_classes=2,
            in_channels=int(self.images.shape[1]),
        )

    def meta(self) -> dict:
        """The DXO meta the client script sends with this update."""
        return {
            "NUM_STEPS_CURRENT_ROUND": int(np.ceil(len(self.labels) / self.batch_size)),
            "gia_training": training_meta(self.training, "small_cnn", self.images, 2, self.batch_size),
        }


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.setflags(write=False)
    return array


def make_case(images: np.ndarray, labels: np.ndarray, batch_size: int, round_index: int = 0) -> Case:
    """Train ``SmallCNN(init_seed=0)`` for one round with ``train_local`` (the client's loop), on one
    torch thread like the tests, so that replays in the tests reproduce it bit for bit."""
    training = TrainingConfig()
    model = SmallCNN(init_seed=0)
    start = copy.deepcopy(model.state_dict())
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_local(model, images, labels, batch_size, training, round_index=round_index)
    finally:
        torch.set_num_threads(previous)
    update = {k: _read_only((v - start[k]).numpy()) for k, v in model.state_dict().items()}
    global_state = {k: _read_only(v.numpy()) for k, v in start.items()}
    return Case(global_state, update, _read_only(images), _read_only(labels), batch_size, training)


@pytest.fixture(scope="session")
def cxr() -> tuple[np.ndarray, np.ndarray]:
    """The first 8 training chest X-rays, float32 ``(8, 1, 64, 64)`` in [0, 1], and their labels."""
    if not CXR_PATH.is_file():
        pytest.skip(f"real chest X-rays not found at {CXR_PATH}")
    with np.load(CXR_PATH) as data:
        images = data["train_images"][:8, None].astype(np.float32) / 255.0
        labels = data["train_labels"][:8].astype(np.int64)
    return images, labels


@pytest.fixture(scope="session")
def cxr_case(cxr) -> Case:
    """A small client: 4 real chest X-rays (64×64), batch 4, so one SGD step."""
    images, labels = cxr
    return make_case(images[:4], labels[:4], batch_size=4)


@pytest.fixture(scope="session")
def small_site_case(cxr) -> Case:
    """A TMI 2023 small client: 8 real chest X-rays (64×64), batch 4, two SGD steps."""
    images, labels = cxr
    return make_case(images, labels, batch_size=4)


@pytest.fixture(scope="session")
def high_risk_case(cxr) -> Case:
    """The high-risk client of the attack tests: one chest X-ray, downsampled to 32×32, batch 1."""
    images, labels = cxr
    small = F.avg_pool2d(torch.from_numpy(images[:1]), 2).numpy()
    return make_case(small, labels[:1], batch_size=1)


@pytest.fixture(scope="session")
def cxr_val_32() -> np.ndarray:
    """The 200 validation chest X-rays downsampled to 32×32 like ``high_risk_case`` (float32 in [0, 1]):
    the public images of a validation prior."""
    if not CXR_PATH.is_file():
        pytest.skip(f"real chest X-rays not found at {CXR_PATH}")
    with np.load(CXR_PATH) as data:
        images = data["val_images"][:, None].astype(np.float32) / 255.0
    return _read_only(F.avg_pool2d(torch.from_numpy(images), 2).numpy())


@pytest.fixture()
def toy_update() -> dict[str, np.ndarray]:
    """A small synthetic update with a conv weight, BatchNorm buffers and an integer counter (read-only)."""
    rng = np.random.default_rng(7)
    update = {
        "conv.weight": rng.normal(0.0, 1e-3, (16, 1, 3, 3)).astype(np.float32),
        "bn.weight": rng.normal(0.0, 1e-3, 16).astype(np.float32),
        "bn.bias": rng.normal(0.0, 1e-3, 16).astype(np.float32),
        "bn.running_mean": rng.normal(0.0, 1e-2, 16).astype(np.float32),
        "bn.running_var": rng.normal(0.0, 1e-2, 16).astype(np.float32),
        "bn.num_batches_tracked": np.array(2, dtype=np.int64),
        "fc.weight": rng.normal(0.0, 1e-3, (2, 16)).astype(np.float32),
    }
    return {k: _read_only(v) for k, v in update.items()}


def _cosine(a: dict, b: dict, keys) -> float:
    va = np.concatenate([np.asarray(a[k], dtype=np.float64).ravel() for k in keys])
    vb = np.concatenate([np.asarray(b[k], dtype=np.float64).ravel() for k in keys])
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


@pytest.fixture(scope="session")
def cosine():
    """``cosine(a, b, keys)``: cosine similarity of two updates over ``keys`` (test modules cannot import conftest)."""
    return _cosine


@pytest.fixture(scope="session")
def parameter_keys() -> list[str]:
    """State-dict keys of SmallCNN's parameters (no buffers)."""
    return [name for name, _ in SmallCNN().named_parameters()]


@pytest.fixture(scope="session")
def attack_ssim(high_risk_case):
    """``attack_ssim(update)``: SSIM of a short, seeded TMI 2023 attack's reconstruction of the high-risk image.

    400 iterations, one restart, BatchNorm-statistics matching on, no time limit (deterministic).
    """
    from nvflare_gia.attack import AttackConfig, GradientInversionAttack, ThreatModel
    from nvflare_gia.metrics import compute_ssim

    case = high_risk_case
    threat = ThreatModel(image_size=int(case.images.shape[-1]), batch_size=1, num_images=1, training=case.training)
    config = AttackConfig(
        bn_weight=1.0, tv_weight=0.001, max_iterations=400, restarts=1, max_seconds=None, seed=0, device="cpu", num_threads=1
    )

    def run(update) -> float:
        result = GradientInversionAttack(config).reconstruct(case.global_state, update, threat)
        return float(compute_ssim(result.images, case.images)[0])

    return run


@pytest.fixture(scope="session")
def undefended_ssim(attack_ssim, high_risk_case) -> float:
    """The short attack's SSIM on the undefended high-risk update (the attack must work for the comparison to mean anything)."""
    ssim = attack_ssim(high_risk_case.update)
    assert ssim > 0.3, f"the short attack should reconstruct the undefended image, got SSIM {ssim:.3f}"
    return ssim
