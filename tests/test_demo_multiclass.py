"""The multi-class, phone-sized generator (demo_data/multiclass.py): labelme reads what it writes,
and labelme's rasteriser reproduces the class map the picture was composited with."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from demo_data import multiclass

TOP_KEYS = ["version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth"]
SHAPE_KEYS = ["label", "points", "group_id", "description", "shape_type", "flags", "mask"]


def find_index(predicate, size, classes=multiclass.MAX_CLASSES, seed=0, rotated_share=multiclass.ROTATED_SHARE):
    """The first photo index (of 40) whose Photo satisfies ``predicate``."""
    for index in range(40):
        photo = multiclass.render_photo(index, seed, size, classes, rotated_share)
        if predicate(photo):
            return index, photo
    raise AssertionError("no generated photo has the wanted property")


def test_writes_labelme_5_json_jpegs_and_a_labels_file(tmp_path):
    names = multiclass.write_multiclass_dataset(tmp_path, 3, seed=1, size=(96, 64), classes=6, progress=False)
    assert names == ("_background_", "dove", "stone", "leaf", "branch", "bottle", "can")
    assert (tmp_path / "labels.txt").read_text() == "__ignore__\n" + "\n".join(names) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["labels.txt"] + [f"IMG_000{i}.{ext}" for i in range(3) for ext in ("jpg", "json")]
    )
    for index in range(3):
        document = json.loads((tmp_path / f"IMG_000{index}.json").read_text())
        assert list(document) == TOP_KEYS and document["version"].startswith("5.")
        assert document["imagePath"] == f"IMG_000{index}.jpg" and document["imageData"] is None
        assert document["shapes"], "every photo holds at least one object"
        h, w = document["imageHeight"], document["imageWidth"]
        for shape in document["shapes"]:
            assert list(shape) == SHAPE_KEYS and shape["label"] in names[1:]
            assert shape["shape_type"] in ("polygon", "circle")
            points = np.asarray(shape["points"])
            assert points.min() >= 0 and points[:, 0].max() <= w - 1 and points[:, 1].max() <= h - 1
        with Image.open(tmp_path / document["imagePath"]) as image:
            assert image.format == "JPEG" and image.size in ((96, 64), (64, 96))
            assert ImageOps.exif_transpose(image).size == (w, h)


def test_phone_orientation_stores_sensor_pixels_with_an_exif_tag():
    size = (160, 120)
    _, photo = find_index(lambda p: p.orientation == 6, size, rotated_share=0.5)
    assert photo.rgb.shape[:2] == (160, 120)  # seen as portrait: 120 wide, 160 high
    with Image.open(io.BytesIO(multiclass.encode_jpeg(photo))) as image:
        assert image.size == size and image.getexif()[0x0112] == 6
        seen = np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.int16)
    assert np.abs(seen - photo.rgb).mean() < 6  # the same picture, after JPEG


@pytest.mark.parametrize("size", [(96, 72), (1200, 900)])
def test_labelme_reproduces_the_class_map_the_picture_was_composited_with(tmp_path, size):
    """Exact, in labelme's paint order, circles included, also when the scene is painted small and upscaled
    (1200x900)."""
    from labelme import LabelFile
    from labelme.utils import img_data_to_arr, shapes_to_label

    index, _ = find_index(
        lambda p: len({s["label"] for s in p.shapes}) >= 3 and any(s["shape_type"] == "circle" for s in p.shapes),
        size,
        rotated_share=0.0,
    )
    photo = multiclass.write_photo(tmp_path, index, 0, size, rotated_share=0.0)
    loaded = LabelFile(str(tmp_path / f"{photo.name}.json"))
    assert img_data_to_arr(loaded.image_data).shape == photo.rgb.shape
    ids = {name: k for k, name in enumerate(photo.class_names)}
    theirs, _ = shapes_to_label(photo.rgb.shape, loaded.shapes, ids)
    np.testing.assert_array_equal(theirs, photo.label)
    assert set(np.unique(photo.label)) == {0} | {ids[name] for name in photo.objects}


def test_objects_overlap_and_the_later_one_wins():
    """Paint order matters in some photo: a later shape covers part of an earlier one of another class."""
    from stages.labelme.shapes import shape_to_mask

    def overlapping(photo):
        masks = [(s["label"], shape_to_mask(photo.rgb.shape[:2], s)) for s in photo.shapes]
        return any(a != b and (ma & mb).any() for i, (a, ma) in enumerate(masks) for b, mb in masks[i + 1 :])

    _, photo = find_index(overlapping, (200, 150), rotated_share=0.0)
    masks = [(s["label"], shape_to_mask(photo.rgb.shape[:2], s)) for s in photo.shapes]
    ids = {name: k for k, name in enumerate(photo.class_names)}
    for k, (label, mask) in enumerate(masks):
        covered = np.zeros_like(mask)
        for _, later in masks[k + 1 :]:
            covered |= later
        assert (photo.label[mask & ~covered] == ids[label]).all()


def test_the_picture_shows_objects_where_they_are_annotated():
    """Inside an object's region the colours are its own: they differ from the ground just around it."""
    _, photo = find_index(lambda p: any(name in ("can", "ball") for name in p.objects), (320, 240), rotated_share=0)
    ids = {name: k for k, name in enumerate(photo.class_names)}
    target = ids["can"] if "can" in photo.objects else ids["ball"]  # saturated colours, unlike the ground
    inside = photo.label == target
    ys, xs = np.nonzero(inside)
    around = np.zeros_like(inside)
    around[max(0, ys.min() - 6) : ys.max() + 7, max(0, xs.min() - 6) : xs.max() + 7] = True
    around &= photo.label == 0
    assert inside.sum() > 20 and around.sum() > 20
    rgb = photo.rgb.astype(np.float64)
    assert np.linalg.norm(rgb[inside].mean(axis=0) - rgb[around].mean(axis=0)) > 25


def test_deterministic_per_seed_and_index(tmp_path):
    first = multiclass.encode_jpeg(multiclass.render_photo(2, seed=3, size=(120, 90)))
    again = multiclass.encode_jpeg(multiclass.render_photo(2, seed=3, size=(120, 90)))
    other = multiclass.encode_jpeg(multiclass.render_photo(2, seed=4, size=(120, 90)))
    assert first == again and first != other


def test_rare_classes_are_rare():
    """Over 60 small photos the first classes appear often and the last ones in few photos or none."""
    seen = [{s["label"] for s in multiclass.render_photo(i, 0, (64, 48)).shapes} for i in range(60)]
    counts = {entry.name: sum(entry.name in labels for labels in seen) for entry in multiclass.CATALOG}
    assert min(counts["stone"], counts["leaf"]) >= 20
    assert sum(counts[entry.name] for entry in multiclass.CATALOG[-6:]) <= 12


def test_cli(tmp_path, capsys):
    out = tmp_path / "photos"
    multiclass.main(
        [
            "--out",
            str(out),
            "--count",
            "2",
            "--size",
            "80x60",
            "--seed",
            "5",
            "--classes",
            "4",
            "--labels",
            str(tmp_path / "labels.txt"),
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 2 and report["classes"] == 4 and report["size"] == "80x60"
    assert (tmp_path / "labels.txt").read_text().splitlines()[2:] == ["dove", "stone", "leaf", "branch"]
    assert sorted(p.name for p in out.iterdir()) == ["IMG_0000.jpg", "IMG_0000.json", "IMG_0001.jpg", "IMG_0001.json"]
    with pytest.raises(SystemExit):
        multiclass.main(["--out", str(out), "--size", "4032by3024"])
