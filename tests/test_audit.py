import copy
import json
import stat

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nvflare_gia.attack import NUM_STEPS_META_KEY, TRAINING_META_KEY, AttackConfig, GradientInversionAttack, ThreatModel
from nvflare_gia.audit import AuditTarget, append_record, audit_update, image_grid, make_private_dir, save_reconstruction
from nvflare_gia.cli import read_metrics_lines
from nvflare_gia.data import SiteData
from nvflare_gia.models import SmallCNN
from nvflare_gia.training import TrainingConfig, train_local, training_meta


def test_append_record_writes_whole_json_lines_owner_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_record(path, {"client": "site-1", "gia/ssim": np.float32(0.5), "gia/psnr": float("inf"), "n": np.int64(3)})
    append_record(path, {"client": "site-2", "nested": {"a": (1, 2)}})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["client"] for line in lines] == ["site-1", "site-2"]
    first = json.loads(lines[0])
    assert first["gia/ssim"] == 0.5 and first["gia/psnr"] is None and first["n"] == 3
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_metrics_reader_tolerates_a_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_record(path, {"client": "site-1", "round": 0})
    with open(path, "a") as f:
        f.write('{"client": "site-2", "rou')  # a server killed mid-write
    assert read_metrics_lines(path) == [{"client": "site-1", "round": 0}]


def test_make_private_dir_makes_every_new_level_owner_only(tmp_path):
    leaf = make_private_dir(tmp_path / "gia" / "site-1" / "round_0")
    for folder in (tmp_path / "gia", tmp_path / "gia" / "site-1", leaf):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_image_grid_places_truth_above_reconstruction():
    truth = np.zeros((2, 1, 4, 4), np.float32)
    reconstruction = np.ones((2, 1, 4, 4), np.float32)
    grid = image_grid([truth, reconstruction], pad=1)
    assert grid.shape == (2 * 5 + 1, 2 * 5 + 1) and grid.dtype == np.uint8
    assert grid[1:5, 1:5].max() == 0 and grid[6:10, 1:5].min() == 255


def test_save_reconstruction_round_trips_and_is_private(tmp_path):
    images = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    files = save_reconstruction(tmp_path / "out", images, np.array([0, 1, 1]), truth=images[::-1], truth_labels=np.array([1, 1, 0]))
    with np.load(files["npz"]) as saved:
        np.testing.assert_array_equal(saved["reconstruction"], images)
        np.testing.assert_array_equal(saved["truth_labels"], [1, 1, 0])
    with Image.open(files["png"]) as png:
        assert png.format == "PNG"
    for path in files.values():
        assert stat.S_IMODE((tmp_path / "out" / path.split("/")[-1]).stat().st_mode) == 0o600


@pytest.fixture(scope="module")
def one_image_round(nih_cxr_path):
    """A 1-image site's round on a real chest X-ray at 32x32: its data, the global state and the update."""
    with np.load(nih_cxr_path) as data:
        image = F.interpolate(torch.tensor(data["train_images"][:1], dtype=torch.float32)[:, None] / 255.0, size=32, mode="area")
        label = torch.tensor(data["train_labels"][:1]).long()
    torch.manual_seed(0)
    model = SmallCNN()
    global_state = copy.deepcopy(model.state_dict())
    config = TrainingConfig()
    steps = train_local(model, image, label, 1, config)
    update = {k: (v - global_state[k]).numpy() for k, v in model.state_dict().items()}
    meta = {NUM_STEPS_META_KEY: steps, TRAINING_META_KEY: training_meta(config, "small_cnn", image, 2, 1)}
    site = SiteData("site-1", image.numpy(), label.numpy(), image.numpy(), label.numpy(), 1, 2, ("normal", "abnormal"))
    return site, {k: v.numpy() for k, v in global_state.items()}, update, meta


def test_audit_reports_the_matching_loss_of_the_truth_beside_the_reconstruction(one_image_round):
    site, global_state, update, meta = one_image_round
    attack = GradientInversionAttack(AttackConfig(max_iterations=20, max_seconds=None, restarts=1, device="cpu"))
    undefended = audit_update(AuditTarget("site-1", 0, global_state, update, meta), attack, truth=site)
    assert undefended["gia/truth_matching_loss"] < 1e-3 < undefended["gia/matching_loss"]
    rng = np.random.default_rng(0)
    noised = {k: v + 0.01 * rng.standard_normal(v.shape).astype(v.dtype) if "weight" in k else v for k, v in update.items()}
    defended = audit_update(AuditTarget("site-1", 0, global_state, noised, meta), attack, truth=site)
    assert defended["gia/truth_matching_loss"] > 100 * undefended["gia/truth_matching_loss"]
    blind = audit_update(AuditTarget("site-1", 0, global_state, update, meta), attack)
    assert "gia/truth_matching_loss" not in blind and blind["gia/matching_loss"] == undefended["gia/matching_loss"]


def test_audit_puts_the_true_images_in_the_clients_batches_for_a_multi_step_round(nih_cxr_path):
    """8 images, batch 4, round 3: two steps whose batches the client drew from its seed and the
    round. The truth in the client's order explains the update; in the data spec's order it does not."""
    with np.load(nih_cxr_path) as data:
        images = F.interpolate(torch.tensor(data["train_images"][:8], dtype=torch.float32)[:, None] / 255.0, size=32, mode="area")
        labels = torch.tensor(data["train_labels"][:8]).long()
    model = SmallCNN(init_seed=0)
    global_state = {k: v.clone().numpy() for k, v in model.state_dict().items()}
    config = TrainingConfig(seed=5)
    steps = train_local(model, images, labels, 4, config, round_index=3)
    update = {k: v.numpy() - global_state[k] for k, v in model.state_dict().items()}
    meta = {NUM_STEPS_META_KEY: steps, TRAINING_META_KEY: training_meta(config, "small_cnn", images, 2, 4)}
    site = SiteData("site-2", images.numpy(), labels.numpy(), images.numpy(), labels.numpy(), 4, 2, ("normal", "abnormal"))
    attack = GradientInversionAttack(AttackConfig(max_iterations=1, max_seconds=None, restarts=1, device="cpu"))
    record = audit_update(AuditTarget("site-2", 3, global_state, update, meta), attack, truth=site)
    assert steps == 2 and record["gia/truth_matching_loss"] < 1e-4
    threat = ThreatModel.from_meta(meta)
    assert attack.matching_loss(global_state, update, threat, site.train_images, site.train_labels) > 1e-2
