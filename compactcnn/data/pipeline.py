"""tf.data input pipelines: decoded uint8 images in memory, augmented batch-wise in the graph.

Augmentation draws its randomness from stateless ops seeded with (seed, batch index), so a run
with the same seed sees exactly the same batches, whatever the threading. Images leave the pipeline
as float32 in 0-255: normalization is the model's first layer, so exported models take raw pixels.
(Being inside the compactcnn package, this module selects Keras 2 before TensorFlow loads.)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from compactcnn.errors import UserError

PADDING = 4


def train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    augment: bool = True,
    cutout: int = 0,
    seed: int = 0,
) -> tf.data.Dataset:
    """Builds the endless, shuffled, augmented training stream.

    Args:
        images: uint8 (N, H, W, 3) images.
        labels: int (N,) class indices.
        batch_size: Images per batch (the global batch under a distribution strategy). Partial
            batches are dropped so every step has the same shape.
        augment: Pad by 4 pixels with zeros, crop back to the original size at a random offset and
            flip horizontally at random, independently per image.
        cutout: Side of a square zeroed at a random centre of each image (clipped at the border);
            0 disables it. Independent of `augment`.
        seed: Seed of the shuffle order and of the augmentation.

    Returns:
        A repeated dataset of (float32 images in 0-255, int32 labels) batches.

    Raises:
        UserError: When there are no images.
    """
    if len(images) == 0:
        raise UserError("no training images to feed; check data.train_limit and the data source")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.batch(batch_size, drop_remainder=True).enumerate()

    def transform(step: tf.Tensor, batch: tuple[tf.Tensor, tf.Tensor]) -> tuple:
        batch_images, batch_labels = batch
        crop_seed, cutout_seed = tf.unstack(
            tf.random.experimental.stateless_split(tf.stack([tf.constant(seed, tf.int64), step]), 2)
        )
        if augment:
            batch_images = random_crop_and_flip(batch_images, crop_seed)
        if cutout:
            batch_images = random_cutout(batch_images, cutout, cutout_seed)
        return tf.cast(batch_images, tf.float32), batch_labels

    dataset = dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Builds one finite, ordered pass over the images, the last batch possibly smaller.

    Args:
        images: uint8 (N, H, W, 3) images.
        labels: int (N,) class indices.
        batch_size: Images per batch.

    Returns:
        A dataset of (float32 images in 0-255, int32 labels) batches.
    """
    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    dataset = dataset.batch(batch_size).map(
        lambda batch_images, batch_labels: (tf.cast(batch_images, tf.float32), batch_labels),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def random_crop_and_flip(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Zero-pads each image by 4 pixels and takes a same-size window at a random offset, flipped
    horizontally with probability 1/2, all with one gather (a pure translation, no resampling).

    Args:
        images: (B, H, W, C) batch, any dtype.
        seed: Shape [2] stateless seed.

    Returns:
        The augmented batch, same shape and dtype.
    """
    offset_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    padded = tf.pad(images, [[0, 0], [PADDING, PADDING], [PADDING, PADDING], [0, 0]])
    offsets = tf.random.stateless_uniform(
        [batch, 2], offset_seed, minval=0, maxval=2 * PADDING + 1, dtype=tf.int32
    )
    flips = tf.random.stateless_uniform([batch, 1], flip_seed) < 0.5
    rows = offsets[:, :1] + tf.range(height)[None, :]
    columns = offsets[:, 1:] + tf.where(flips, tf.range(width - 1, -1, -1), tf.range(width))
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(cropped, columns, axis=2, batch_dims=1)


def random_cutout(images: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    """Zeroes a `size` x `size` square centred at a random pixel of each image (DeVries & Taylor
    2017); squares near the border are clipped, as in the paper.

    Args:
        images: (B, H, W, C) batch, any dtype.
        size: Side of the square in pixels.
        seed: Shape [2] stateless seed.

    Returns:
        The batch with the squares zeroed, same shape and dtype.
    """
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    extent = tf.cast(tf.stack([height, width]), tf.float32)
    centres = tf.cast(tf.random.stateless_uniform([batch, 2], seed) * extent, tf.int32)
    starts = centres - size // 2
    rows, columns = tf.range(height)[None, :], tf.range(width)[None, :]
    inside_rows = (rows >= starts[:, :1]) & (rows < starts[:, :1] + size)
    inside_columns = (columns >= starts[:, 1:]) & (columns < starts[:, 1:] + size)
    square = inside_rows[:, :, None, None] & inside_columns[:, None, :, None]
    return images * tf.cast(~square, images.dtype)
