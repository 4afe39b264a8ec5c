"""ThreatModel: validation, the batch split and construction from an update's meta."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from nvflare_gia.attack import (
    NUM_STEPS_META_KEY,
    TRAINING_META_KEY,
    ThreatModel,
    bn_momenta,
)
from nvflare_gia.errors import ConfigError
from nvflare_gia.models import SmallCNN
from nvflare_gia.training import TrainingConfig


def test_threat_model_derives_steps_and_batch_split():
    threat = ThreatModel(batch_size=4, num_images=10, training=TrainingConfig(local_epochs=2))
    assert threat.num_steps == 6
    assert threat.batch_sizes == (4, 4, 2, 4, 4, 2)


def test_threat_model_from_meta_reads_training_and_steps():
    meta = {
        NUM_STEPS_META_KEY: 2,
        TRAINING_META_KEY: {
            "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "local_epochs": 1,
            "batch_size": 4, "num_images": 8, "model": "small_cnn", "num_classes": 3, "image_size": 32, "in_channels": 1,
        },
    }
    threat = ThreatModel.from_meta(meta)
    assert (threat.batch_size, threat.num_images, threat.num_steps, threat.num_classes, threat.image_size) == (4, 8, 2, 3, 32)
    assert threat.training == TrainingConfig(lr=0.05, momentum=0.9, weight_decay=1e-4)


def test_threat_model_from_meta_falls_back_to_defaults():
    threat = ThreatModel.from_meta({TRAINING_META_KEY: {"num_images": 1}}, defaults={"batch_size": 1, "image_size": 16})
    assert (threat.batch_size, threat.num_images, threat.image_size) == (1, 1, 16)


def test_threat_model_from_meta_requires_batch_size_and_num_images():
    with pytest.raises(ConfigError, match="batch_size"):
        ThreatModel.from_meta({TRAINING_META_KEY: {"num_images": 4}})


def test_threat_model_rejects_step_count_that_contradicts_the_batch_split():
    meta = {NUM_STEPS_META_KEY: 3, TRAINING_META_KEY: {"batch_size": 4, "num_images": 8}}
    with pytest.raises(ConfigError, match="num_steps"):
        ThreatModel.from_meta(meta)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model": "resnet"}, "model"),
        ({"num_classes": 1}, "num_classes"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_images": 2.5}, "num_images"),
        ({"image_size": 2}, "image_size"),
        ({"bn_momentum": 0.0}, "bn_momentum"),
        ({"training": {"lr": 0.1}}, "training"),
    ],
)
def test_threat_model_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ThreatModel(**kwargs)


def test_bn_momenta_reads_modules_or_override():
    model = SmallCNN()
    assert set(bn_momenta(model).values()) == {0.1}
    assert set(bn_momenta(model, 0.3).values()) == {0.3}
    assert len(bn_momenta(model)) == 3


def test_threat_model_batch_split_works_with_float_local_epochs():
    threat = ThreatModel(batch_size=2, num_images=3, training=TrainingConfig(local_epochs=2.0))
    assert threat.batch_sizes == (2, 1, 2, 1) and threat.num_steps == 4


def test_threat_model_accepts_numpy_scalars():
    threat = ThreatModel(batch_size=np.int64(2), num_images=np.int32(4), num_classes=np.int64(3), bn_momentum=np.float32(0.25))
    assert (threat.batch_size, threat.num_images, threat.num_classes, threat.num_steps) == (2, 4, 3, 2)
    assert isinstance(threat.batch_size, int) and threat.bn_momentum == pytest.approx(0.25)


def test_threat_model_from_meta_treats_none_defaults_as_unset():
    threat = ThreatModel.from_meta(
        {TRAINING_META_KEY: {"batch_size": 1, "num_images": 1}}, defaults={"momentum": None, "lr": None, "num_classes": None}
    )
    assert threat.training == TrainingConfig() and threat.num_classes == 2


def test_threat_model_from_meta_imports_only_the_networks_the_reader_trusts(tmp_path, monkeypatch, request):
    """The meta is the sender's word: a network path in it is refused unimported unless trusted."""
    request.addfinalizer(lambda: sys.modules.pop("senders_networks", None))
    marker = tmp_path / "imported"
    (tmp_path / "senders_networks.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from nvflare_gia.models import SmallCNN as Net\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    meta = {TRAINING_META_KEY: {"batch_size": 1, "num_images": 1, "model": "senders_networks.Net"}}
    with pytest.raises(ConfigError, match=r"model must be one of \['small_cnn', .*\] or of the trusted networks \[\], got 'senders_networks.Net'"):
        ThreatModel.from_meta(meta)
    with pytest.raises(ConfigError, match=r"trusted networks \['other.Net'\], got 'senders_networks.Net'"):
        ThreatModel.from_meta(meta, networks=["other.Net"])
    assert not marker.exists()
    assert ThreatModel.from_meta(meta, networks=["senders_networks.Net"]).model == "senders_networks.Net"
    assert marker.exists()
    assert ThreatModel.from_meta({TRAINING_META_KEY: {"batch_size": 1, "num_images": 1, "model": "ResNet18"}}).model == "resnet18"
    with pytest.raises(ConfigError, match=r"networks must be a list of dotted network paths, got 'senders_networks.Net'"):
        ThreatModel.from_meta(meta, networks="senders_networks.Net")
