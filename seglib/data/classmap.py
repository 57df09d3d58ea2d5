"""Merging and dropping classes while preparing: ``--merge "vehicle=car,truck,bus"`` joins classes
under a new name (the first one's colour), ``--drop train`` turns a class into the ignore label.
Classes are named as the dataset names them (Cityscapes' names, ``classes.json``'s, a K-Means
class's nearest Cityscapes colour) or by their index. The mapping is checked before anything is
written: an unknown class, or a class mapped twice, is a one-line error."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from seglib.data.pairs import DatasetError
from seglib.data.palette import Palette

IGNORE = 255


@dataclass
class ClassMap:
    merges: list[tuple[str, list[str]]] = field(default_factory=list)  # (new name, the classes it joins)
    drops: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.merges or self.drops)

    def record(self) -> dict:
        return {"merge": [f"{new}={','.join(old)}" for new, old in self.merges], "drop": list(self.drops)}


def _listed(value, sep: str) -> list[str]:
    """``None``, a string (items split at ``sep``) or a list of such strings, as a flat list."""
    items = [value] if isinstance(value, str) else list(value or [])
    return [part.strip() for item in items for part in str(item).split(sep) if part.strip()]


def parse_class_map(merge=None, drop=None) -> ClassMap:
    """From ``--merge NEW=A,B`` (repeated, or several in one string separated by ``;``) and ``--drop
    A`` (repeated, or comma-separated); checks the form and that no class is named twice."""
    merges, seen = [], {}
    for item in _listed(merge, ";"):
        new, _, old = item.partition("=")
        members = _listed(old, ",")
        if not new.strip() or not members:
            raise DatasetError(f"--merge {item!r}: expected NEW=CLASS,CLASS,... (e.g. vehicle=car,truck,bus)")
        merges.append((new.strip(), members))
    drops = _listed(drop, ",")
    for where, names in [*((f"--merge {new}", old) for new, old in merges), ("--drop", drops)]:
        for name in names:
            if name in seen:
                raise DatasetError(f"class {name!r} is mapped twice ({seen[name]} and {where}); map each class once")
            seen[name] = where
    return ClassMap(merges, drops)


def resolve(class_map: ClassMap, names: list[str]) -> tuple[np.ndarray, list[list[int]], list[str]]:
    """For classes ``names`` (id = index): the look-up table old id -> new id (dropped: 255), the old
    ids of each new class (the first gives its colour) and the new classes' names."""
    def ids(ref: str, where: str) -> list[int]:
        found = [i for i, name in enumerate(names) if name == ref] or ([int(ref)] if ref.isdigit()
                                                                        and int(ref) < len(names) else [])
        if not found:
            raise DatasetError(f"{where}: unknown class {ref!r}; the classes are {', '.join(names)} (or 0-"
                               f"{len(names) - 1})")
        return found

    group_of, owner = {}, {}
    for where, refs, group in [*((f"--merge {n}", old, n) for n, old in class_map.merges),
                               ("--drop", class_map.drops, None)]:
        for ref in refs:
            for i in ids(ref, where):
                if i in owner:
                    raise DatasetError(f"class {names[i]!r} (id {i}) is mapped twice ({owner[i]} and {where})")
                owner[i], group_of[i] = where, group
    for new, _ in class_map.merges:  # a new name may be one of its own members' names, never another class's
        taken = [i for i, name in enumerate(names) if name == new and group_of.get(i) != new]
        if taken:
            raise DatasetError(f"--merge {new}=...: {new!r} is the name of class {taken[0]}, which is not merged into "
                               "it; choose a new name (or merge that class into it too)")
    members, new_names, lut, slot = [], [], np.full(256, IGNORE, np.uint8), {}
    for i, name in enumerate(names):
        if owner.get(i) == "--drop":
            continue  # stays IGNORE
        group = group_of.get(i)
        if group is None or group not in slot:
            new_names.append(group or name)
            members.append([])
            slot.setdefault(group, len(members) - 1)
        j = slot[group] if group is not None else len(members) - 1
        members[j].append(i)
        lut[i] = j
    if len(members) < 2:
        raise DatasetError(f"--drop {','.join(class_map.drops)}: {len(members)} class(es) would be left of "
                           f"{len(names)}; a model needs 2")
    return lut, members, new_names


def remapped(palette: Palette, class_map: ClassMap) -> tuple[Palette, np.ndarray, list[list[int]]]:
    """The palette after the mapping (a merged class has its first class's colour and the members'
    shares; what is ignored is 255), the look-up table and the old ids of each new class."""
    lut, members, names = resolve(class_map, list(palette.names))
    ignore = IGNORE if class_map.drops or palette.ignore_index is not None else None
    shares = np.array([palette.shares[m].sum() for m in members], np.float64)
    return Palette(palette.centroids[[m[0] for m in members]], shares, palette.seed, palette.sample_pixels, names,
                   ignore), lut, members


def merged_counts(counts: np.ndarray, members: list[list[int]]) -> np.ndarray:
    """Pixels per new class from pixels per old class."""
    return np.array([counts[m].sum() for m in members], np.int64)
