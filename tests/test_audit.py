import json
import stat

import numpy as np
from PIL import Image

from nvflare_gia.audit import append_record, image_grid, make_private_dir, save_reconstruction
from nvflare_gia.cli import read_metrics_lines


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
