"""The model and data source registries: one list of names, duplicates refused, clear errors."""

import pytest

from compactcnn.config import DataConfig, load_config
from compactcnn.data import list_sources, load_data, register_source
from compactcnn.errors import UserError
from compactcnn.models import list_models, register_model

BUILT_IN_SOURCES = ["cifar10", "cifar100", "imagefolder", "sample", "synthetic"]


def test_duplicate_model_name_raises_and_keeps_the_first():
    def resnet20(num_classes, **kwargs):
        raise AssertionError("the duplicate must not be registered")

    before = list_models()
    with pytest.raises(ValueError, match="'resnet20' is already registered; pick another name"):
        register_model(resnet20)
    assert list_models() == before


def test_duplicate_source_name_raises_and_keeps_the_first():
    def sample(config, seed):
        raise AssertionError("the duplicate must not be registered")

    with pytest.raises(ValueError, match="'sample' is already registered; pick another name"):
        register_source(sample)
    assert list_sources() == BUILT_IN_SOURCES
    assert load_data(DataConfig(name="sample", test_limit=10)).num_classes == 10


def test_unknown_source_error_lists_the_registered_names():
    with pytest.raises(UserError) as caught:
        load_data(DataConfig(name="mnist"))
    expected = f"unknown data source 'mnist'; choose one of {', '.join(BUILT_IN_SOURCES)}"
    assert str(caught.value) == expected


def test_config_checks_data_name_against_the_registry():
    with pytest.raises(UserError) as caught:
        load_config(None, ["data.name=mnist"])
    message = str(caught.value)
    assert "'data.name'" in message and "\n" not in message
    assert ", ".join(list_sources()) in message
