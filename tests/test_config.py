from pathlib import Path

import pytest
import yaml

from compactcnn.config import Config, from_dict, load_config, save_config, to_dict
from compactcnn.errors import UserError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
REQUIRED_KEYS = [
    "data.name",
    "data.path",
    "data.augment",
    "data.validation_size",
    "model.name",
    "train.epochs",
    "train.batch_size",
    "train.precision",
    "prune.schedule",
    "prune.final_sparsity",
    "quantize.formats",
    "distribute.strategy",
]


def test_required_keys_exist():
    values = to_dict(Config())
    for key in REQUIRED_KEYS:
        section, name = key.split(".")
        assert name in values[section], key


def test_round_trip_through_yaml(tmp_path):
    config = load_config(
        None,
        ["prune.schedule=polynomial", "prune.final_sparsity=0.7", "prune.m_by_n=[2, 4]"],
    )
    path = tmp_path / "config.yaml"
    save_config(config, path, resolved={"global_batch_size": 256})
    assert yaml.safe_load(path.read_text())["resolved"] == {"global_batch_size": 256}
    assert load_config(path) == config


RUN_CONFIGS = sorted(path for path in CONFIGS.rglob("*.yaml") if "studies" not in path.parts)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda path: str(path.relative_to(CONFIGS)))
def test_shipped_configs_load(path):
    assert isinstance(load_config(path), Config)


def test_overrides_are_typed_like_the_field():
    config = load_config(
        None,
        [
            "train.epochs=3",
            "train.learning_rate=1",
            "data.augment=false",
            "data.path=123",
            "quantize.formats=[int8]",
        ],
    )
    assert config.train.epochs == 3
    assert isinstance(config.train.learning_rate, float)
    assert config.data.augment is False
    assert config.data.path == "123"
    assert config.quantize.formats == ["int8"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.bogus=1"], "unknown config key 'train.bogus'"),
        (["nosection.key=1"], "unknown config key 'nosection'"),
        (["train.epochs=three"], "'train.epochs': expected int"),
        (["data.augment=7"], "'data.augment': expected bool"),
        (["prune.final_sparsity=1.0"], "'prune.final_sparsity' must be in [0, 1)"),
        (["prune.final_sparsity=-0.1"], "'prune.final_sparsity' must be in [0, 1)"),
        (["train.precision=float64"], "'train.precision'"),
        (["quantize.formats=[int4]"], "'quantize.formats'"),
        (["quantize.cluster_gradient=mean"], "not one of sum, average"),
        (["data.name=imagefolder"], "needs data.path"),
        (["train.epochs"], "not of the form"),
        (["quantize.weight_clusters=2"], "'quantize.weight_clusters' must be 0 (off) or 3"),
        (["quantize.weight_clusters=1"], "'quantize.weight_clusters' must be 0 (off) or 3"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(overrides, message):
    with pytest.raises(UserError) as caught:
        load_config(None, overrides)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("prune", "message"),
    [
        ({"end_epoch": 2.0, "begin_epoch": 2.0}, "must be after"),
        ({"end_epoch": 11.0}, "past the end of training"),
        ({"m_by_n": [4, 2]}, "m_by_n"),
    ],
)
def test_bad_pruning_schedules(prune, message):
    values = {"train": {"epochs": 10}, "prune": {"schedule": "polynomial", **prune}}
    with pytest.raises(UserError, match=message):
        from_dict(values)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(broken)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00train")
    with pytest.raises(UserError, match="not a readable UTF-8 text file"):
        load_config(binary)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(listed)
