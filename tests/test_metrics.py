import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, jaccard_score

from seglib.training.metrics import scores, update_confusion


def test_hand_made_matrix():
    # truth rows, prediction columns
    cm = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    s = scores(cm)
    assert s["pixel_accuracy"] == pytest.approx(11 / 14)
    # class 0: tp 8, fp 1, fn 2 -> IoU 8/11, dice 16/19; class 1: tp 3, fp 2, fn 1 -> IoU 3/6
    assert s["per_class"]["iou"][:2] == pytest.approx([8 / 11, 3 / 6])
    assert s["per_class"]["dice"][:2] == pytest.approx([16 / 19, 6 / 9])
    assert s["per_class"]["precision"][:2] == pytest.approx([8 / 9, 3 / 5])
    assert s["per_class"]["recall"][:2] == pytest.approx([8 / 10, 3 / 4])
    assert s["per_class"]["specificity"][:2] == pytest.approx([3 / 4, 8 / 10])
    assert s["absent_classes"] == [2] and math.isnan(s["per_class"]["iou"][2])
    assert s["mean_iou"] == pytest.approx((8 / 11 + 0.5) / 2)  # the absent class is left out
    assert s["mean_accuracy"] == pytest.approx((0.8 + 0.75) / 2)


def test_zero_iou_class_stays_in_the_mean():
    cm = np.array([[5, 0], [3, 0]])  # class 1 present, never predicted
    s = scores(cm)
    assert s["per_class"]["iou"] == pytest.approx([5 / 8, 0.0])
    assert s["mean_iou"] == pytest.approx(5 / 16) and s["absent_classes"] == []


def test_streaming_matches_scikit_learn():
    rng = np.random.default_rng(0)
    k = 5
    cm = np.zeros((k, k), np.int64)
    all_t, all_p = [], []
    for _ in range(4):
        t = rng.integers(0, k, (2, 8, 8))
        p = np.where(rng.random(t.shape) < 0.7, t, rng.integers(0, k, t.shape))
        update_confusion(cm, t, p)
        all_t.append(t.ravel()), all_p.append(p.ravel())
    t, p = np.concatenate(all_t), np.concatenate(all_p)
    assert (cm == confusion_matrix(t, p, labels=range(k))).all()
    s = scores(cm)
    assert s["per_class"]["iou"] == pytest.approx(jaccard_score(t, p, average=None, labels=range(k)))
    assert s["per_class"]["dice"] == pytest.approx(f1_score(t, p, average=None, labels=range(k)))
    with pytest.raises(ValueError, match="labels must be"):
        update_confusion(cm, np.array([k]), np.array([0]))
