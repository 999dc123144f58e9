"""The bundled demo data set (data/raw) and its deterministic generator (demo_data/doves.py)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from demo_data import doves as demo_doves

REPO_ROOT = Path(__file__).resolve().parents[1]
RAW = REPO_ROOT / "data" / "raw"
SHAPE_KEYS = ["label", "points", "group_id", "description", "shape_type", "flags", "mask"]
TOP_KEYS = ["version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth"]


def committed_annotations() -> dict[int, dict]:
    return {
        int(path.stem.split("_")[1]): json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(RAW.glob("dove_*.json"))
    }


def pick_indices() -> list[int]:
    """A handful of committed samples covering the hard cases: EXIF, split doves, holes, no dove, three doves."""
    annotations = committed_annotations()

    def first(predicate):
        return next(index for index, labelme in annotations.items() if predicate(labelme))

    def doves(labelme):
        return {
            shape["group_id"] if shape["group_id"] is not None else id(shape)
            for shape in labelme["shapes"]
            if shape["label"] == "dove"
        }

    picked = {
        0,
        *demo_doves.EXIF_ORIENTATION,
        first(lambda d: any(s["group_id"] is not None for s in d["shapes"])),
        first(lambda d: any(s["label"] == "_background_" for s in d["shapes"])),
        first(lambda d: not d["shapes"]),
        first(lambda d: len(doves(d)) == 3),
    }
    return sorted(picked)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_committed_set_is_complete_and_small():
    jsons = sorted(RAW.glob("*.json"))
    jpegs = sorted(RAW.glob("*.jpg"))
    assert len(jsons) == demo_doves.DEFAULT_COUNT == 124
    assert [p.stem for p in jsons] == [p.stem for p in jpegs] == [demo_doves.sample_name(i) for i in range(124)]
    assert sorted(p.name for p in RAW.iterdir()) == sorted(p.name for p in jsons + jpegs)
    total = sum(p.stat().st_size for p in RAW.iterdir())
    assert total < 10_000_000, f"data/raw is {total / 1e6:.1f} MB"


def test_committed_json_is_labelme_5(tmp_path):
    for index, labelme in committed_annotations().items():
        name = demo_doves.sample_name(index)
        assert list(labelme) == TOP_KEYS, name
        assert re.fullmatch(r"5\.\d+\.\d+", labelme["version"])
        assert labelme["flags"] == {} and labelme["imageData"] is None
        assert labelme["imagePath"] == f"{name}.jpg"
        h, w = labelme["imageHeight"], labelme["imageWidth"]
        assert min(h, w) >= demo_doves.MIN_SIDE and max(h, w) <= demo_doves.MAX_SIDE, name
        for shape in labelme["shapes"]:
            assert list(shape) == SHAPE_KEYS, name
            assert shape["label"] in ("dove", "_background_")
            assert shape["shape_type"] == "polygon" and shape["flags"] == {} and shape["mask"] is None
            assert shape["description"] == "" and (shape["group_id"] is None or isinstance(shape["group_id"], int))
            points = np.asarray(shape["points"], dtype=float)
            assert points.ndim == 2 and points.shape[1] == 2 and len(points) >= 3
            assert points.min() >= 0 and points[:, 0].max() <= w - 1 and points[:, 1].max() <= h - 1
        # The photo, seen as labelme sees it (EXIF orientation applied), has the JSON's size.
        with Image.open(RAW / labelme["imagePath"]) as image:
            assert image.format == "JPEG"
            orientation = image.getexif().get(0x0112, 1)
            assert orientation == demo_doves.EXIF_ORIENTATION.get(index, 1), name
            width, height = image.size
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            assert (height, width) == (h, w), name


def test_labelme_itself_loads_a_sample():
    from labelme import LabelFile
    from labelme.utils import apply_exif_orientation

    annotations = committed_annotations()
    for index in pick_indices()[:3]:
        loaded = LabelFile(str(RAW / f"{demo_doves.sample_name(index)}.json"))
        assert len(loaded.shapes) == len(annotations[index]["shapes"])
    for index in demo_doves.EXIF_ORIENTATION:  # labelme's own EXIF handling gives the annotated size
        with Image.open(RAW / f"{demo_doves.sample_name(index)}.jpg") as image:
            oriented = apply_exif_orientation(image)
            assert oriented.size == (annotations[index]["imageWidth"], annotations[index]["imageHeight"])


def test_committed_set_covers_the_hard_cases():
    annotations = committed_annotations()
    dove_shapes = [s for d in annotations.values() for s in d["shapes"] if s["label"] == "dove"]
    assert sum(not d["shapes"] for d in annotations.values()) >= 3  # photos without doves
    assert any(s["group_id"] is not None for s in dove_shapes)  # a dove split in pieces by an occluder
    assert any(s["label"] == "_background_" for d in annotations.values() for s in d["shapes"])  # holes
    assert any(
        max(p[0] for p in s["points"]) == d["imageWidth"] - 1 or min(p[1] for p in s["points"]) == 0
        for d in annotations.values()
        for s in d["shapes"]
        if s["label"] == "dove"
    )  # cut by the border
    sizes = {(d["imageHeight"], d["imageWidth"]) for d in annotations.values()}
    assert len(sizes) > 60 and any(h > w for h, w in sizes) and any(w > h for h, w in sizes)


@pytest.mark.parametrize("index", pick_indices())
def test_regeneration_is_byte_identical(tmp_path, index):
    demo_doves.write_sample(tmp_path, index, demo_doves.DEFAULT_SEED)
    name = demo_doves.sample_name(index)
    assert (tmp_path / f"{name}.json").read_bytes() == (RAW / f"{name}.json").read_bytes()
    assert (tmp_path / f"{name}.jpg").read_bytes() == (RAW / f"{name}.jpg").read_bytes()


def test_samples_depend_on_the_seed():
    jpeg_a, labelme_a, _ = demo_doves.generate_sample(3, seed=0)
    jpeg_b, labelme_b, _ = demo_doves.generate_sample(3, seed=1)
    assert jpeg_a != jpeg_b and labelme_a != labelme_b


@pytest.mark.parametrize("index", pick_indices())
def test_annotation_matches_the_drawn_doves(index):
    """labelme's own rasteriser, given the JSON, reproduces the pixels the generator painted as dove."""
    from labelme.utils import shapes_to_label

    jpeg, labelme, drawn = demo_doves.generate_sample(index)
    h, w = labelme["imageHeight"], labelme["imageWidth"]
    assert drawn.shape == (h, w)
    classes, _ = shapes_to_label((h, w), labelme["shapes"], {"_background_": 0, "dove": 1})
    assert iou(classes == 1, drawn) >= 0.97
    # The painted region follows the birds' geometric silhouettes closely (traced polygons, ~1 px).
    scene = demo_doves.render_scene(index)
    if scene.silhouette_mask.any():
        assert iou(scene.drawn_mask, scene.silhouette_mask) >= 0.95
    # And the JPEG decodes, EXIF-oriented, to the annotated size.
    with Image.open(io.BytesIO(jpeg)) as image:
        assert ImageOps.exif_transpose(image).size == (w, h)


def test_cli_writes_a_fresh_folder_and_refuses_foreign_files(tmp_path, capsys):
    out = tmp_path / "raw"
    demo_doves.main(["--out", str(out), "--count", "2", "--seed", "0"])
    assert sorted(p.name for p in out.iterdir()) == ["dove_000.jpg", "dove_000.json", "dove_001.jpg", "dove_001.json"]
    assert (out / "dove_001.jpg").read_bytes() == (RAW / "dove_001.jpg").read_bytes()
    assert json.loads(capsys.readouterr().out)["images"] == 2
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        demo_doves.main(["--out", str(out), "--count", "1"])
    assert (out / "notes.txt").exists() and (out / "dove_001.json").exists()
