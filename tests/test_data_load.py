"""load_data: dispatch, validation hold-out, limits, and the synthetic source."""

import numpy as np
import pytest

from compactcnn.config import DataConfig
from compactcnn.data import ImageData, load_data, stratified_split, synthetic
from compactcnn.errors import UserError


def _synthetic(**changes) -> DataConfig:
    return DataConfig(name="synthetic", synthetic_size=200, synthetic_classes=10, **changes)


def _rows(images: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in images}


def test_without_validation_the_val_arrays_are_empty_with_the_right_shapes():
    data = load_data(_synthetic())
    assert isinstance(data, ImageData)
    assert data.x_val.shape == (0, 32, 32, 3) and data.x_val.dtype == np.uint8
    assert data.y_val.shape == (0,) and data.y_val.dtype == np.int32
    assert data.x_train.shape == (200, 32, 32, 3) and data.num_classes == 10


def test_validation_is_held_out_stratified_disjoint_and_seeded():
    full = load_data(_synthetic())
    data = load_data(_synthetic(validation_size=50), seed=0)
    assert len(data.y_val) == 50 and len(data.y_train) == 150
    assert np.bincount(data.y_val, minlength=10).tolist() == [5] * 10
    assert not _rows(data.x_val) & _rows(data.x_train)
    assert _rows(data.x_val) | _rows(data.x_train) == _rows(full.x_train)
    again = load_data(_synthetic(validation_size=50), seed=0)
    np.testing.assert_array_equal(again.x_val, data.x_val)
    other = load_data(_synthetic(validation_size=50), seed=1)
    assert _rows(other.x_val) != _rows(data.x_val)


def test_validation_as_big_as_the_training_set_is_a_user_error():
    with pytest.raises(UserError, match="validation_size=200.*has 200"):
        load_data(_synthetic(validation_size=200))


def test_limits_keep_a_stratified_subset_after_the_hold_out():
    data = load_data(_synthetic(validation_size=20, train_limit=100, test_limit=30))
    assert len(data.y_val) == 20 and len(data.y_train) == 100 and len(data.y_test) == 30
    assert np.bincount(data.y_train, minlength=10).tolist() == [10] * 10
    assert np.bincount(data.y_test, minlength=10).tolist() == [3] * 10
    assert not _rows(data.x_val) & _rows(data.x_train)


def test_stratified_split_keeps_class_proportions_of_unbalanced_labels():
    labels = np.array([0] * 80 + [1] * 20)
    chosen, rest = stratified_split(labels, 10, np.random.default_rng(0))
    assert np.bincount(labels[chosen]).tolist() == [8, 2]
    assert sorted(np.concatenate([chosen, rest]).tolist()) == list(range(100))


def test_dispatch_to_sample_and_imagefolder_needs_a_path():
    data = load_data(DataConfig(name="sample", test_limit=50))
    assert data.num_classes == 10 and len(data.y_test) == 50
    with pytest.raises(UserError, match="needs data.path"):
        load_data(DataConfig(name="imagefolder"))


def test_synthetic_is_seeded_balanced_and_learnable():
    first, same, other = (
        synthetic.load(100, 4, 0),
        synthetic.load(100, 4, 0),
        synthetic.load(100, 4, 1),
    )
    np.testing.assert_array_equal(first.x_train, same.x_train)
    assert not np.array_equal(first.x_train, other.x_train)
    assert np.bincount(first.y_train).tolist() == [25] * 4
    assert first.class_names == ["class_0", "class_1", "class_2", "class_3"]

    # Learnable: a nearest-class-mean colour classifier fit on train is near perfect on test.
    def colours(images):
        return images.reshape(len(images), -1, 3).mean(axis=1)

    means = np.stack([colours(first.x_train)[first.y_train == label].mean(0) for label in range(4)])
    distances = np.linalg.norm(colours(first.x_test)[:, None] - means[None], axis=2)
    assert (distances.argmin(axis=1) == first.y_test).mean() > 0.95


def _class_from_pixels(images: np.ndarray, num_classes: int) -> np.ndarray:
    """Reads each synthetic image's class back from its colour (hue), independently of labels."""
    import colorsys

    hues = [
        colorsys.rgb_to_hsv(*(image.reshape(-1, 3).mean(axis=0) / 255.0))[0] for image in images
    ]
    return np.rint(np.array(hues) * num_classes).astype(np.int32) % num_classes


@pytest.mark.parametrize(
    "changes",
    [{}, {"validation_size": 50}, {"validation_size": 30, "train_limit": 90, "test_limit": 40}],
)
def test_every_label_still_belongs_to_its_image_after_hold_out_and_limits(changes):
    """Labels and pixels travel together: a label shifted by one image would fail here."""
    data = load_data(_synthetic(**changes), seed=3)
    for images, labels in [
        (data.x_train, data.y_train),
        (data.x_val, data.y_val),
        (data.x_test, data.y_test),
    ]:
        np.testing.assert_array_equal(_class_from_pixels(images, 10), labels)
