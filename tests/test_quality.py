import numpy as np
import pytest

from seglib.data.quality import purity, truth_path


def test_purity_known_values():
    assert purity(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])) == 0.75
    assert purity(np.array([0, 0, 0, 1]), np.array([2, 2, 3, 255])) == pytest.approx(2 / 3)  # 255: ignored
    assert purity(np.array([0, 1, 2]), np.array([5, 5, 5])) == 1.0
    with pytest.raises(ValueError, match="no pixels with a known true class"):
        purity(np.array([0, 1]), np.array([255, 255]))


def test_truth_files_sit_beside_the_pairs(tmp_path):
    (tmp_path / "ids" / "val").mkdir(parents=True)
    assert truth_path(tmp_path / "val" / "7.jpg") == tmp_path / "ids" / "val" / "7.png"  # Kaggle layout
    assert truth_path(tmp_path / "flat" / "7.jpg") == tmp_path / "flat" / "ids" / "7.png"  # a flat folder
