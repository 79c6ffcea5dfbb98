"""tf.data pipelines: types, exactness, augmentation geometry, reproducibility, cutout.

Labels are the image indices, so every output image can be traced back to its input.
"""

import numpy as np
import pytest
import tensorflow as tf

from compactcnn.data.pipeline import eval_dataset, train_dataset
from compactcnn.errors import UserError

BATCH = 16


@pytest.fixture
def indexed(tiny_images):
    images, _ = tiny_images
    return images, np.arange(len(images), dtype=np.int32)


def _take(dataset, count):
    return [(images.numpy(), labels.numpy()) for images, labels in dataset.take(count)]


def test_types_shapes_range_and_endless(indexed):
    images, labels = indexed
    batches = _take(train_dataset(images, labels, BATCH, augment=True, cutout=8, seed=0), 10)
    assert len(batches) == 10  # 64 images at batch 16: more than two epochs, so it repeats.
    for batch_images, batch_labels in batches:
        assert batch_images.shape == (BATCH, 32, 32, 3) and batch_images.dtype == np.float32
        assert batch_labels.shape == (BATCH,) and batch_labels.dtype == np.int32
        assert batch_images.min() >= 0 and batch_images.max() <= 255


def test_without_augmentation_images_are_the_inputs_each_epoch_reshuffled(indexed):
    images, labels = indexed
    batches = _take(train_dataset(images, labels, BATCH, augment=False, cutout=0, seed=0), 8)
    for batch_images, batch_labels in batches:
        np.testing.assert_array_equal(batch_images, images[batch_labels].astype(np.float32))
    epochs = [
        np.concatenate([labels for _, labels in batches[start : start + 4]]) for start in (0, 4)
    ]
    assert sorted(epochs[0]) == list(range(64)) and sorted(epochs[1]) == list(range(64))
    assert not np.array_equal(epochs[0], epochs[1])


def _window(padded_image, row, column, flip):
    window = padded_image[row : row + 32, column : column + 32]
    return window[:, ::-1] if flip else window


def test_crop_is_a_pure_translation_of_the_zero_padded_image_maybe_flipped(indexed):
    images, labels = indexed
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)])
    offsets = set()
    for batch_images, batch_labels in _take(train_dataset(images, labels, BATCH, True, 0, 3), 4):
        for image, index in zip(batch_images, batch_labels, strict=True):
            matches = [
                (row, column, flip)
                for row in range(9)
                for column in range(9)
                for flip in (False, True)
                if np.array_equal(image, _window(padded[index], row, column, flip))
            ]
            assert len(matches) == 1, f"image {index} is not a translated (flipped) window"
            offsets.add(matches[0])
    assert len(offsets) > 10  # Offsets and flips really vary.
    assert {flip for _, _, flip in offsets} == {False, True}


def test_same_seed_same_batches_other_seed_different(indexed):
    images, labels = indexed

    def first_batches(seed):
        return _take(train_dataset(images, labels, BATCH, True, 8, seed), 3)

    one, again, other = first_batches(5), first_batches(5), first_batches(6)
    for (a_images, a_labels), (b_images, b_labels) in zip(one, again, strict=True):
        np.testing.assert_array_equal(a_images, b_images)
        np.testing.assert_array_equal(a_labels, b_labels)
    assert not np.array_equal(one[0][1], other[0][1])
    assert not np.array_equal(one[0][0], other[0][0])


def test_cutout_zeroes_one_square_of_at_most_the_given_side():
    images = np.full((64, 32, 32, 3), 200, np.uint8)
    labels = np.zeros(64, np.int32)
    batches = _take(train_dataset(images, labels, BATCH, augment=False, cutout=8, seed=0), 4)
    full_squares = 0
    for image in np.concatenate([batch_images for batch_images, _ in batches]):
        assert set(np.unique(image)) <= {0.0, 200.0}
        zero = image == 0
        assert (zero == zero[..., :1]).all()  # All channels together.
        rows, columns = np.nonzero(zero[..., 0])
        assert len(rows) > 0
        height, width = rows.max() - rows.min() + 1, columns.max() - columns.min() + 1
        assert height <= 8 and width <= 8
        assert len(rows) == height * width  # A filled rectangle: a square clipped by the border.
        full_squares += height == width == 8
    assert full_squares > 20


def test_eval_dataset_is_one_ordered_exact_pass(indexed):
    images, labels = indexed
    batches = _take(eval_dataset(images, labels, 24), 100)
    assert [len(batch_labels) for _, batch_labels in batches] == [24, 24, 16]
    all_images = np.concatenate([batch_images for batch_images, _ in batches])
    assert all_images.dtype == np.float32
    np.testing.assert_array_equal(all_images, images.astype(np.float32))
    assert np.concatenate([batch_labels for _, batch_labels in batches]).tolist() == list(range(64))
    assert isinstance(eval_dataset(images, labels, 24), tf.data.Dataset)


def test_no_training_images_is_a_user_error():
    with pytest.raises(UserError, match="no training images"):
        train_dataset(np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0,), np.int32), BATCH)


def test_every_pass_over_a_runs_training_stream_starts_at_its_first_batch():
    """Recalibration and fine-tuning must see the batches training began with, on every worker.

    Iterators of one dataset share its reshuffling state: a second pass over the same dataset
    would start at an order set by how far the first pass (and its prefetching) had got.
    """
    from compactcnn import run
    from compactcnn.config import load_config

    config = load_config(
        None,
        ["model.name=resnet8_tiny", "data.name=synthetic", "data.synthetic_size=64",
         "train.batch_size=16", "train.precision=float32"],
    )  # fmt: skip
    training = run.build_training(config)

    def first_batch(stream):
        return next(iter(stream))[0].numpy()

    expected = first_batch(training.train_stream())
    stream = training.train_stream()
    consumed = iter(stream)
    for _ in range(12):  # three shuffles of the 64 images
        next(consumed)
    assert not np.array_equal(first_batch(stream), expected)  # the hazard: the order moved on
    np.testing.assert_array_equal(first_batch(training.train_stream()), expected)
