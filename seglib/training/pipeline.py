"""tf.data pipelines over a prepared dataset, streamed from the memory-mapped ``.npy`` files.

Only the rows of the current batches are read from disk (``np.load(mmap_mode="r")``), so a
split never has to fit in memory. Augmentation is applied identically to image and label;
labels are only flipped, cropped and resized with nearest neighbour, never interpolated.
"""
from __future__ import annotations

import os

import numpy as np

from seglib.data.splits import open_split
from seglib.layout import PreparedDir
from seglib.training.checks import check_replicas


def augment_pair(image, label, size):
    """Random horizontal flip, scale-and-crop (x1 to x1.25), brightness and contrast; ``size`` is
    the side of square images or ``(H, W)``."""
    import tensorflow as tf

    height, width = (size, size) if isinstance(size, int) else size
    label = label[..., None]
    flip = tf.random.uniform(()) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    label = tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label)
    scale = tf.random.uniform((), 1.0, 1.25)
    scaled_h = tf.cast(tf.round(height * scale), tf.int32)
    scaled_w = tf.cast(tf.round(width * scale), tf.int32)
    image = tf.image.resize(image, (scaled_h, scaled_w), method="bilinear")
    label = tf.image.resize(label, (scaled_h, scaled_w), method="nearest")
    top = tf.random.uniform((), 0, scaled_h - height + 1, dtype=tf.int32)
    left = tf.random.uniform((), 0, scaled_w - width + 1, dtype=tf.int32)
    image = image[top : top + height, left : left + width]
    label = label[top : top + height, left : left + width]
    image = tf.image.random_brightness(image, 25.0)
    image = tf.image.random_contrast(image, 0.8, 1.2)
    # the crop's size is known, not its shape: stated, for models whose layers read static shapes (SegFormer's)
    image, label = tf.ensure_shape(image, (height, width, 3)), tf.ensure_shape(label, (height, width, 1))
    return tf.clip_by_value(image, 0.0, 255.0), label[..., 0]


def make_dataset(prepared_dir: str | os.PathLike, split: str, batch_size: int = 8, shuffle: bool = False,
                 seed: int = 0, augment: bool = False, cache_bytes: int = 1 << 30, multiple_of: int = 1):
    """Batches of ``(images float32 (B,H,W,3) in [0,255], labels uint8 (B,H,W))``.

    Rows are read batch by batch from the memory-mapped split; a split smaller than
    ``cache_bytes`` is cached in memory after the first pass (before augmentation). ``multiple_of``:
    the replicas a batch is split across; every batch, the last included, holds a multiple of them
    (Keras fails on a batch its devices would split unevenly), so up to ``multiple_of - 1`` rows are
    left out: after shuffling, other ones each epoch.
    """
    import tensorflow as tf

    data = open_split(prepared_dir, split)
    n, size = len(data), tuple(data.images.shape[1:3])
    if n == 0:
        raise ValueError(f"{prepared_dir}/{split}: the split is empty")
    check_replicas(prepared_dir, {split: n}, multiple_of)
    files = PreparedDir(prepared_dir).split(split)
    images_path, labels_path = str(files.images), str(files.labels)

    def read_rows(index):
        images = np.load(images_path, mmap_mode="r")
        labels = np.load(labels_path, mmap_mode="r")
        order = np.sort(index)
        return np.asarray(images[order]), np.asarray(labels[order])

    def load(index):
        images, labels = tf.numpy_function(read_rows, [index], [tf.uint8, tf.uint8])
        images.set_shape((None, *size, 3))
        labels.set_shape((None, *size))
        return images, labels

    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if n % multiple_of:
        ds = ds.take(n - n % multiple_of)
    ds = ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    fits = data.images.nbytes + data.labels.nbytes <= cache_bytes
    if fits and not shuffle:
        ds = ds.cache()
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        ds = ds.unbatch().map(lambda x, y: augment_pair(x, y, size), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)
