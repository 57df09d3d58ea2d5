"""Where the pairs come from: a folder, kaggle:OWNER/NAME (a stand-in kagglehub serves the
synthetic pairs, nested as the real archive is), or synthetic scenes generated on demand."""
import shutil
import sys
import types

import pytest

from seglib.data.datasets import DataSourceError, resolve_data_dir


@pytest.fixture
def kagglehub(monkeypatch, synth_dir, tmp_path):
    calls = []

    def dataset_download(handle, path=None, **kwargs):
        calls.append(handle)
        if handle.endswith("/missing"):
            raise RuntimeError("404 Client Error: Not Found")
        target = tmp_path / "kagglehub-cache" / handle / "versions" / "1"
        for nested in ("cityscapes_data", "cityscapes_data/cityscapes_data"):
            for split in ("train", "val"):
                shutil.copytree(synth_dir / split, target / nested / split, dirs_exist_ok=True)
        return str(target)

    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(dataset_download=dataset_download))
    return calls


def test_kaggle_dataset_is_downloaded_once_and_kept(kagglehub, tmp_path, synth_dir):
    lines = []
    first = resolve_data_dir("kaggle:dansbecker/cityscapes-image-pairs", kaggle_cache=tmp_path / "data" / "kaggle",
                             log=lines.append)
    assert first == tmp_path / "data" / "kaggle" / "dansbecker" / "cityscapes-image-pairs"
    assert sorted(p.name for p in first.iterdir()) == [
        ".seglib",
        "kaggle.json",
        "train",
        "val",
    ]  # shallowest train/ + val/
    assert len(list((first / "train").iterdir())) == len(list((synth_dir / "train").iterdir()))
    again = resolve_data_dir("kaggle:dansbecker/cityscapes-image-pairs", kaggle_cache=tmp_path / "data" / "kaggle",
                             log=lines.append)
    assert again == first and kagglehub == ["dansbecker/cityscapes-image-pairs"]  # no second download
    assert lines[0].startswith("downloading kaggle:") and lines[-1].startswith("using kaggle:")


def test_kaggle_errors_name_the_dataset_and_what_to_do(kagglehub, tmp_path, monkeypatch):
    with pytest.raises(DataSourceError, match=r"kaggle:someone/missing: download failed .*404.*KAGGLE_USERNAME"):
        resolve_data_dir("kaggle:someone/missing", kaggle_cache=tmp_path)
    assert not (tmp_path / "someone" / "missing").exists()  # nothing half-written
    with pytest.raises(DataSourceError, match="expected kaggle:OWNER/NAME"):
        resolve_data_dir("kaggle:cityscapes", kaggle_cache=tmp_path)
    monkeypatch.setitem(sys.modules, "kagglehub", None)
    with pytest.raises(DataSourceError, match="pip install kagglehub"):
        resolve_data_dir("kaggle:a/b", kaggle_cache=tmp_path)


def test_a_missing_folder_gets_synthetic_pairs_only_when_a_count_is_given(tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        resolve_data_dir(tmp_path / "nothing")
    made = resolve_data_dir(tmp_path / "synth", synth_count=4, seed=1, log=lambda line: None)
    assert len(list((made / "train").iterdir())) + len(list((made / "val").iterdir())) == 4
    assert resolve_data_dir(made) == made  # an existing folder is used as it is


def test_cli_prepare_takes_a_kaggle_dataset(kagglehub, tmp_path, monkeypatch):
    from seglib.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["prepare", "kaggle:dansbecker/cityscapes-image-pairs", "prepared", "--size", "32", "--quiet"]) == 0
    assert (tmp_path / "data" / "kaggle" / "dansbecker" / "cityscapes-image-pairs" / "kaggle.json").exists()
    assert (tmp_path / "prepared" / "summary.json").exists()
    assert main(["prepare", "kaggle:someone/missing", "other"]) == 2  # a one-line error, no traceback
