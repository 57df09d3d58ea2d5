"""The official Cityscapes label table (labelId -> name, colour) and its 19 train classes.

Used to turn the true labelIds shipped beside a dataset (``ids/<split>/<n>.png``) into the
*colour* classes a K-Means palette can recover, and by the synthetic generator so that its
scenes use the same colours and ids as real data.
"""
from __future__ import annotations

import numpy as np

# (labelId, name, RGB colour) from cityscapesScripts' labels.py.
LABELS: list[tuple[int, str, tuple[int, int, int]]] = [
    (0, "unlabeled", (0, 0, 0)),
    (1, "ego vehicle", (0, 0, 0)),
    (2, "rectification border", (0, 0, 0)),
    (3, "out of roi", (0, 0, 0)),
    (4, "static", (0, 0, 0)),
    (5, "dynamic", (111, 74, 0)),
    (6, "ground", (81, 0, 81)),
    (7, "road", (128, 64, 128)),
    (8, "sidewalk", (244, 35, 232)),
    (9, "parking", (250, 170, 160)),
    (10, "rail track", (230, 150, 140)),
    (11, "building", (70, 70, 70)),
    (12, "wall", (102, 102, 156)),
    (13, "fence", (190, 153, 153)),
    (14, "guard rail", (180, 165, 180)),
    (15, "bridge", (150, 100, 100)),
    (16, "tunnel", (150, 120, 90)),
    (17, "pole", (153, 153, 153)),
    (18, "polegroup", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)),
    (20, "traffic sign", (220, 220, 0)),
    (21, "vegetation", (107, 142, 35)),
    (22, "terrain", (152, 251, 152)),
    (23, "sky", (70, 130, 180)),
    (24, "person", (220, 20, 60)),
    (25, "rider", (255, 0, 0)),
    (26, "car", (0, 0, 142)),
    (27, "truck", (0, 0, 70)),
    (28, "bus", (0, 60, 100)),
    (29, "caravan", (0, 0, 90)),
    (30, "trailer", (0, 0, 110)),
    (31, "train", (0, 80, 100)),
    (32, "motorcycle", (0, 0, 230)),
    (33, "bicycle", (119, 11, 32)),
]

# The 19 classes the official benchmark trains and scores (cityscapesScripts' trainId); every
# other labelId is ignored (trainId 255).
TRAIN_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
               "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
               "bicycle")
IGNORE_ID = 255

NAME_TO_ID = {name: label_id for label_id, name, _ in LABELS}
ID_TO_COLOUR = {label_id: colour for label_id, _, colour in LABELS}


def colour_class_table() -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Map every labelId (0..255) to the index of its distinct palette colour.

    Several labelIds share a colour (e.g. 0-4 are all black); a colour mask cannot tell them
    apart, so label quality is measured against colour classes. Unknown ids map to 255.
    """
    colours: list[tuple[int, int, int]] = []
    table = np.full(256, 255, dtype=np.uint8)
    for label_id, _, colour in LABELS:
        if colour not in colours:
            colours.append(colour)
        table[label_id] = colours.index(colour)
    return table, colours


def ids_to_colour_classes(label_ids: np.ndarray) -> np.ndarray:
    """Convert a labelId image to colour-class indices (see :func:`colour_class_table`)."""
    table, _ = colour_class_table()
    return table[label_ids]


def nearest_label_names(colours: np.ndarray, max_distance: float = 40.0) -> list[str]:
    """Name each RGB colour after the nearest Cityscapes palette colour (for legends).

    Colours farther than ``max_distance`` from every palette colour are named "mixed <i>".
    When several labelIds share the colour, the first name is used (e.g. "unlabeled" for black).
    Names stay unique: a second class nearest to the same colour is named "road (2)".
    """
    table = np.array([c for _, _, c in LABELS], np.float32)
    names: list[str] = []
    for i, colour in enumerate(np.asarray(colours, np.float32)):
        dist = np.sqrt(((table - colour) ** 2).sum(1))
        j = int(dist.argmin())
        base = LABELS[j][1] if dist[j] <= max_distance else f"mixed {i}"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base} ({n})"
        names.append(name)
    return names


def train_id_table() -> np.ndarray:
    """labelId (0..255) -> trainId (0..18), 255 for every id the benchmark ignores."""
    table = np.full(256, IGNORE_ID, np.uint8)
    for train_id, name in enumerate(TRAIN_NAMES):
        table[NAME_TO_ID[name]] = train_id
    return table


def train_colours() -> list[tuple[int, int, int]]:
    """The official colour of each of the 19 train classes."""
    return [ID_TO_COLOUR[NAME_TO_ID[name]] for name in TRAIN_NAMES]
