import cv2
import numpy as np
import pytest

from seglib.training.pipeline import augment_pair, make_dataset


@pytest.mark.tf_lines
def test_batches_stream_every_row_once(prepared_dir):
    ds = make_dataset(prepared_dir, "val", batch_size=4)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    images, labels = np.concatenate(images), np.concatenate(labels)
    ref_images = np.load(prepared_dir / "val" / "images.npy")
    ref_labels = np.load(prepared_dir / "val" / "labels.npy")
    assert images.dtype == np.float32 and labels.dtype == np.uint8
    assert np.array_equal(images, ref_images.astype(np.float32)) and np.array_equal(labels, ref_labels)


@pytest.mark.tf_lines
def test_shuffle_is_seeded_and_covers_the_split(prepared_dir):
    def order(seed):
        ds = make_dataset(prepared_dir, "train", batch_size=8, shuffle=True, seed=seed)
        return np.concatenate([y.numpy().reshape(len(y), -1)[:, :64] for _, y in ds])

    a, b = order(3), order(3)
    assert np.array_equal(a, b)
    ref = np.load(prepared_dir / "train" / "labels.npy").reshape(-1, 128 * 128)[:, :64]
    assert sorted(map(bytes, a)) == sorted(map(bytes, ref))


@pytest.mark.tf_lines
def test_augmentation_moves_image_and_label_together():
    import tensorflow as tf

    tf.random.set_seed(0)
    label = np.zeros((64, 64), np.uint8)
    label[:, :20] = 1
    label[40:, 20:] = 2
    image = np.stack([np.choose(label, [60, 10, 200])] * 3, -1).astype(np.float32)
    for _ in range(20):
        aug_image, aug_label = (t.numpy() for t in augment_pair(tf.constant(image), tf.constant(label), 64))
        assert aug_image.shape == (64, 64, 3) and aug_label.shape == (64, 64)
        assert set(np.unique(aug_label)) <= {0, 1, 2}  # labels never interpolated
        red = aug_image[..., 0]
        # away from region borders (bilinear blends there), each label's pixels keep their own
        # brightness band: brightness +-25 and contrast 0.8-1.2 cannot move 10 and 200 across
        inner = [cv2.erode((aug_label == c).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) for c in (1, 2)]
        assert (red[inner[0]] < 45).all() and (red[inner[1]] > 140).all()
    # in a tf.data map the crop's shape is static (SegFormer's keras-hub layers read it)
    ds = tf.data.Dataset.from_tensors((image, label)).map(lambda x, y: augment_pair(x, y, 64))
    assert ds.element_spec[0].shape == (64, 64, 3) and ds.element_spec[1].shape == (64, 64)
