"""The Kaggle Cityscapes pairs with their true label ids as an official-Cityscapes-shaped tree, so
that seglib prepares them with the 19 benchmark classes (no K-Means) and can merge and drop them.

Each pair's photo half becomes ``leftImg8bit/<split>/pairs/<n>_leftImg8bit.png`` and its
``ids/<split>/<n>.png`` (the true Cityscapes labelId of every mask pixel) becomes
``gtFine/<split>/pairs/<n>_gtFine_labelIds.png``. The tree is written under ``data/`` (git-ignored:
the images may not be redistributed) and reused when it is there.

    python bench/cityscapes_tree.py [--pairs ../shared/data/cityscapes-pairs] [--out data/cityscapes-ids]
                                    [--train 600] [--val 200]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from seglib.data.pairs import read_pair  # noqa: E402
from seglib.fsutil import staged_dir  # noqa: E402
from seglib.layout import SyntheticLabelledDir  # noqa: E402


def build(pairs: Path, out: Path, counts: dict[str, int]) -> Path:
    """Write the tree (the first ``counts[split]`` pairs of each split, in numeric order)."""
    if (out / "gtFine").is_dir():
        return out
    with staged_dir(out, SyntheticLabelledDir) as tmp:
        for split, count in counts.items():
            files = sorted((pairs / split).glob("*.jpg"), key=lambda p: int(p.stem))[:count]
            for sub in ("leftImg8bit", "gtFine"):
                (tmp / sub / split / "pairs").mkdir(parents=True)
            for path in files:
                ids = cv2.imread(str(pairs / "ids" / split / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED)
                photo, _ = read_pair(path, ids.shape[:2])
                cv2.imwrite(str(tmp / "leftImg8bit" / split / "pairs" / f"{path.stem}_leftImg8bit.png"),
                            cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
                cv2.imwrite(str(tmp / "gtFine" / split / "pairs" / f"{path.stem}_gtFine_labelIds.png"), ids)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, default=REPO.parent / "shared" / "data" / "cityscapes-pairs")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "cityscapes-ids")
    parser.add_argument("--train", type=int, default=600, help="training pairs taken (the first, by number)")
    parser.add_argument("--val", type=int, default=200, help="val pairs taken: seglib's test split")
    args = parser.parse_args()
    out = build(args.pairs, args.out, {"train": args.train, "val": args.val})
    print(f"{out}: {args.train} train and {args.val} val pairs as Cityscapes leftImg8bit/ + gtFine/")


if __name__ == "__main__":
    main()
