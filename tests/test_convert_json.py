"""convert_json on tiny labelme annotations built in tmp_path: accepted oddities, every refused input, atomicity."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.common.config import StageError
from stages.convert_json import run
from stages.data.images import read_label_png, to_rgb

REPO_ROOT = Path(__file__).resolve().parents[1]
LABELS = ["__ignore__", "_background_", "dove", "cat"]  # dove -> 1, cat -> 2, __ignore__ -> 255


# --- fixture factory: labelme JSON + images ---------------------------------------------------------


def image_bytes(width=40, height=30, mode="RGB", fmt="PNG", exif_orientation=None) -> bytes:
    """A deterministic picture with a gradient, so orientation and channel mistakes show."""
    yy, xx = np.mgrid[0:height, 0:width]
    if mode == "I;16":
        image = Image.fromarray((xx * 1000 + yy * 300).astype(np.uint16))  # opens as I;16
    else:
        rgb = np.stack([xx * 6 % 256, yy * 8 % 256, (xx + yy) * 3 % 256], axis=-1).astype(np.uint8)
        image = Image.fromarray(rgb, mode="RGB")
        if mode == "RGBA":
            image.putalpha(Image.fromarray((xx * 5 % 256).astype(np.uint8)))
        elif mode == "P":
            image = image.quantize(colors=16)
        elif mode != "RGB":
            image = image.convert(mode)
    buffer = io.BytesIO()
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(buffer, format=fmt, exif=exif, quality=95)
    else:
        image.save(buffer, format=fmt)
    return buffer.getvalue()


def shape(label="dove", points=((5, 5), (20, 5), (20, 15)), shape_type="polygon", **extra) -> dict:
    return {
        "label": label,
        "points": [list(p) for p in points],
        "group_id": None,
        "description": "",
        "shape_type": shape_type,
        "flags": {},
        **extra,
    }


def annotation(
    raw: Path,
    name: str,
    shapes=None,
    *,
    image: bytes | None = None,
    image_name: str | None = None,
    image_path: str | None = None,
    embed=False,
    height=30,
    width=40,
    **overrides,
) -> Path:
    """Write raw/<name>.json (and its image beside it unless embedded); returns the JSON path.

    ``image_name`` is the file written next to the JSON; ``image_path`` what the JSON says (default: the same).
    """
    json_path = raw / f"{name}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    data = image if image is not None else image_bytes(width, height)
    image_name = image_name or f"{Path(name).name}.png"
    if not embed:
        (json_path.parent / image_name).parent.mkdir(parents=True, exist_ok=True)
        (json_path.parent / image_name).write_bytes(data)
    document = {
        "version": "5.5.0",
        "flags": {},
        "shapes": [shape()] if shapes is None else shapes,
        "imagePath": image_path if image_path is not None else image_name,
        "imageData": base64.b64encode(data).decode() if embed else None,
        "imageHeight": height,
        "imageWidth": width,
    }
    document.update(overrides)
    json_path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return json_path


@pytest.fixture
def raw(tmp_path) -> Path:
    (tmp_path / "raw").mkdir()
    return tmp_path / "raw"


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "processed"


@pytest.fixture
def convert(tmp_path, raw, out, make_cfg):
    """convert(*overrides) runs the stage on raw -> out with the test labels file, in this process."""
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")

    def _convert(*overrides):
        return run(
            make_cfg(
                f"data.raw_dir={raw}",
                f"data.processed_dir={out}",
                f"data.labels={labels}",
                "convert_json.workers=1",
                *overrides,
            )
        )

    return _convert


def img(out: Path, stem: str) -> np.ndarray:
    """The processed image, img.jpg or img.png as the manifest names it (and nothing else beside it)."""
    entry = next(
        s for s in json.loads((out / "manifest.json").read_text(encoding="utf-8"))["samples"] if s["stem"] == stem
    )
    assert entry["image_file"] in ("img.jpg", "img.png")
    assert sorted(p.name for p in (out / stem).iterdir()) == sorted([entry["image_file"], "label.png", "label_viz.png"])
    with Image.open(out / stem / entry["image_file"]) as image:
        assert image.mode == "RGB" and image.getexif().get(0x0112, 1) == 1
        return np.asarray(image)


def label(out: Path, stem: str) -> np.ndarray:
    return read_label_png(out / stem / "label.png")


def refused(convert, out) -> str:
    """Run the stage expecting a StageError; check nothing was written; return the message."""
    with pytest.raises(StageError) as caught:
        convert()
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no staging left
    return str(caught.value)


# --- the happy path ---------------------------------------------------------------------------------


def test_writes_images_labels_viz_class_names_and_manifest(raw, out, convert):
    annotation(
        raw, "a", [shape("dove", [(0, 0), (9, 0), (9, 9), (0, 9)]), shape("cat", [(20, 10), (29, 19)], "rectangle")]
    )
    annotation(raw, "b", [shape("__ignore__", [(0, 0), (39, 29)], "rectangle")])

    result = convert()

    assert result["samples"] == 2 and result["processed_dir"] == str(out)
    np.testing.assert_array_equal(img(out, "a"), to_rgb(Image.open(io.BytesIO(image_bytes()))))
    a = label(out, "a")
    assert a.shape == (30, 40) and a[5, 5] == 1 and a[15, 25] == 2 and a[25, 5] == 0
    assert Image.open(out / "a" / "label.png").mode == "P"
    assert (label(out, "b") == 255).all()
    with Image.open(out / "a" / "label_viz.png") as viz:
        assert viz.mode == "RGB" and viz.size == (40, 30)
    assert (out / "class_names.txt").read_text().splitlines() == ["_background_", "dove", "cat"]

    manifest = json.loads((out / "manifest.json").read_text())
    first = manifest["samples"][0]
    assert [s["stem"] for s in manifest["samples"]] == ["a", "b"]
    assert first["json"] == "a.json" and first["image"] == "a.png" and first["size"] == [30, 40]
    assert first["class_pixels"] == {"_background_": 1200 - 100 - 100, "dove": 100, "cat": 100, "__ignore__": 0}
    assert first["label_sha256"] == hashlib.sha256(a.tobytes()).hexdigest()
    assert result["class_pixels"] == {"_background_": 1000, "dove": 100, "cat": 100, "__ignore__": 1200}


def mask_shape(label, x1, y1, mask: np.ndarray) -> dict:
    """labelme's mask shape: the bounding box corners, and the mask inside it as a base64 PNG."""
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).convert("1").save(buffer, format="PNG")
    y2, x2 = y1 + mask.shape[0] - 1, x1 + mask.shape[1] - 1
    return shape(label, [(x1, y1), (x2, y2)], "mask", mask=base64.b64encode(buffer.getvalue()).decode())


def test_labels_match_labelme_oracle(raw, out, convert):
    from labelme import LabelFile
    from labelme.utils import shapes_to_label as labelme_shapes_to_label

    ring = np.zeros((8, 10), bool)
    ring[1:7, 1:9], ring[3:5, 3:7] = True, False
    shapes = [
        shape("dove", [(2.4, 3.6), (30.2, 4.9), (25.5, 26.1), (4.0, 20.0)]),
        shape("cat", [(10, 10), (16, 13)], "circle"),
        shape("dove", [(1, 28), (38, 2)], "line"),
        shape("cat", [(33.3, 22.7)], "point"),
        shape("__ignore__", [(30, 0), (39.5, 8.2)], "rectangle"),
        shape("dove", [(5, 25), (12, 27), (20, 22), (36, 28)], "linestrip"),
        mask_shape("cat", 14, 17, ring),
    ]
    json_path = annotation(raw, "a", shapes)
    convert()
    ids = {"_background_": 0, "dove": 1, "cat": 2, "__ignore__": 255}
    expected, _ = labelme_shapes_to_label((30, 40), LabelFile(str(json_path)).shapes, ids)
    np.testing.assert_array_equal(label(out, "a"), expected.astype(np.uint8))
    assert set(np.unique(expected)) == {0, 1, 2, 255}  # the sample exercises every id
    assert expected[17 + 3, 14 + 4] != 2 and expected[17 + 1, 14 + 1] == 2  # the mask's hole and ring


def test_label_viz_is_labelme2voc_picture(raw, out, convert):
    import imgviz

    annotation(
        raw,
        "a",
        [
            shape("dove", [(0, 0), (25, 3), (12, 29)]),
            shape("cat", [(20, 10), (39, 29)], "rectangle"),
            shape("__ignore__", [(30, 0), (39, 5)], "rectangle"),
        ],
        image=image_bytes(400, 300),
        height=300,
        width=400,
    )
    convert()
    names = {0: "_background_", 1: "dove", 2: "cat", 255: "__ignore__"}
    expected = imgviz.label2rgb(
        label(out, "a"), imgviz.rgb2gray(img(out, "a")), label_names=names, font_size=15, loc="rb"
    )
    with Image.open(out / "a" / "label_viz.png") as viz:
        np.testing.assert_array_equal(np.asarray(viz), expected)


def test_same_class_same_id_whatever_order_files_list_labels(raw, out, convert):
    annotation(raw, "a", [shape("cat", [(0, 0), (9, 9)], "rectangle"), shape("dove", [(20, 0), (29, 9)], "rectangle")])
    annotation(raw, "b", [shape("dove", [(0, 0), (9, 9)], "rectangle"), shape("cat", [(20, 0), (29, 9)], "rectangle")])
    annotation(raw, "c", [shape("dove", [(0, 0), (9, 9)], "rectangle")])
    convert()
    assert label(out, "a")[5, 5] == 2 and label(out, "a")[5, 25] == 1
    assert label(out, "b")[5, 5] == 1 and label(out, "b")[5, 25] == 2
    assert label(out, "c")[5, 5] == 1


def test_parallel_run_writes_the_same_as_serial(raw, tmp_path, out, convert):
    for index in range(6):
        annotation(raw, f"s{index}", [shape("dove", [(index, index), (20 + index, 4), (12, 25)])])
    serial = convert()
    serial_files = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    parallel = convert("convert_json.workers=2")
    assert parallel["workers"] == 2 and parallel["samples"] == serial["samples"] == 6
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == serial_files


# --- accepted oddities ------------------------------------------------------------------------------


def test_embedded_image_data_wins_over_image_path(raw, out, convert):
    embedded = image_bytes()
    # imagePath names another (here: missing) file; labelme uses imageData then, and so do we.
    annotation(raw, "a", embed=True, image=embedded, image_path="elsewhere.jpg")
    annotation(raw, "b", image=image_bytes(height=30, width=40, mode="L"))
    (raw / "b.json").write_text(
        (raw / "b.json")
        .read_text()
        .replace('"imageData": null', f'"imageData": "{base64.b64encode(embedded).decode()}"')
    )
    convert()
    expected = to_rgb(Image.open(io.BytesIO(embedded)))
    np.testing.assert_array_equal(img(out, "a"), expected)
    np.testing.assert_array_equal(img(out, "b"), expected)
    assert json.loads((out / "manifest.json").read_text())["samples"][0]["image"] == "imageData"


def test_windows_backslash_path_non_ascii_name_and_subfolders(raw, out, convert):
    annotation(
        raw,
        "north/a",
        image_name="photos/鸽子_001.jpg",
        image_path="photos\\鸽子_001.jpg",
        image=image_bytes(fmt="JPEG"),
    )
    annotation(raw, "south/deeper/鸽子_002", image_name="鸽子_002.png")
    convert()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["a", "鸽子_002"]
    np.testing.assert_array_equal(img(out, "a"), to_rgb(Image.open(raw / "north/photos/鸽子_001.jpg")))
    samples = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["samples"]
    assert [(s["json"], s["image"]) for s in samples] == [
        ("north/a.json", "north/photos/鸽子_001.jpg"),
        ("south/deeper/鸽子_002.json", "south/deeper/鸽子_002.png"),
    ]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "I;16"])
def test_any_image_mode_becomes_rgb(raw, out, convert, mode):
    data = image_bytes(mode=mode)
    annotation(raw, "a", image=data)
    convert()
    source = Image.open(io.BytesIO(data))
    assert source.mode == mode
    result = img(out, "a")
    np.testing.assert_array_equal(result, to_rgb(source))
    if mode == "I;16":  # scaled by the 16-bit range, not clipped to 255
        assert result.max() == round(np.asarray(Image.open(io.BytesIO(data))).max() / 65535 * 255)
        assert len(np.unique(result)) > 100


def test_exif_rotated_jpeg_is_oriented_and_sizes_declared_oriented(raw, out, convert):
    # Stored 40 wide x 30 high, EXIF 6 (rotate 90° clockwise to view): the photo is 30 wide x 40 high.
    data = image_bytes(width=40, height=30, fmt="JPEG", exif_orientation=6)
    annotation(
        raw, "a", [shape("dove", [(0, 0), (9, 39)], "rectangle")], image=data, image_name="a.jpg", height=40, width=30
    )
    convert()
    assert img(out, "a").shape == (40, 30, 3)
    # re-encoded as JPEG (with the photo's own tables): within JPEG's rounding of the rotated pixels
    rotated = np.asarray(Image.open(io.BytesIO(data)).rotate(-90, expand=True)).astype(np.int16)
    assert np.abs(img(out, "a") - rotated).mean() < 2.0
    assert label(out, "a").shape == (40, 30) and (label(out, "a")[:, :10] == 1).all()


def test_shapes_partly_outside_are_clipped_and_no_shapes_is_background(raw, out, convert):
    annotation(
        raw,
        "a",
        [shape("dove", [(-50, -50), (20, -50), (20, 15), (-50, 15)]), shape("cat", [(35, 25), (80, 90)], "rectangle")],
    )
    annotation(raw, "b", [])
    convert()
    a = label(out, "a")
    assert (a[:16, :21] == 1).all() and (a[25:, 35:] == 2).all() and a.sum() == 16 * 21 + 2 * 5 * 5
    assert (label(out, "b") == 0).all() and label(out, "b").shape == (30, 40)


def test_raw_data_is_never_modified(raw, out, convert):
    annotation(raw, "a", image=image_bytes(fmt="JPEG", exif_orientation=3), image_name="a.jpg")
    annotation(raw, "sub/b", embed=True)

    def snapshot():
        return {
            p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(raw.rglob("*"))
            if p.is_file()
        }

    before = snapshot()
    convert()
    assert snapshot() == before


# --- refused input: each case names the file and the problem, and nothing is written ----------------


def _bad_json(raw):
    (raw / "bad.json").write_text('{"shapes": [')
    return "invalid JSON"


def _json_array(raw):
    (raw / "bad.json").write_text("[1, 2]")
    return "not an object"


def _no_shapes_key(raw):
    annotation(raw, "bad")
    document = json.loads((raw / "bad.json").read_text())
    del document["shapes"]
    (raw / "bad.json").write_text(json.dumps(document))
    return "missing the 'shapes' key"


def _missing_image(raw):
    annotation(raw, "bad")
    (raw / "bad.png").unlink()
    return "image file not found"


def _garbage_image(raw):
    annotation(raw, "bad", image=b"this is not a picture")
    return "not a readable image"


def _truncated_jpeg(raw):
    data = image_bytes(width=300, height=300, fmt="JPEG")  # the header is read, the pixels are cut short
    annotation(raw, "bad", image=data[: len(data) // 2], image_name="bad.jpg", height=300, width=300)
    return "image bad.jpg is corrupt"


def _garbage_image_data(raw):
    annotation(raw, "bad", embed=True, image=b"\x89PNG garbage")
    return "imageData is not a readable image"


def _unknown_label(raw):
    annotation(raw, "bad", [shape("dove"), shape("pigeon")])
    return "shape 1 ('pigeon'): label 'pigeon' is not in the labels file"


def _size_mismatch(raw):
    annotation(raw, "bad", image=image_bytes(width=40, height=30), height=31)
    return "imageHeight is 31 but the image (EXIF-oriented) is 30x40"


def _absolute_posix_path(raw):
    annotation(raw, "bad", image_path=str(raw / "bad.png"))
    return "is absolute"


def _absolute_windows_path(raw):
    annotation(raw, "bad", image_path="C:\\Users\\me\\bad.png")
    return "is absolute"


def _traversal(raw):
    (raw.parent / "outside.png").write_bytes(image_bytes())
    annotation(raw, "bad", image_path="../outside.png")
    return "points outside the raw data folder"


def _windows_traversal(raw):
    (raw.parent / "x.png").write_bytes(image_bytes())
    annotation(raw, "sub/bad", image_path="..\\..\\x.png")
    return "points outside the raw data folder"


def _too_many_pixels(raw):
    annotation(raw, "bad", image=image_bytes(width=400, height=300), height=300, width=400)
    return "too large: 120000 pixels, over convert_json.max_image_pixels=100000"


def _same_stem_in_two_folders(raw):
    annotation(raw, "one/bad")
    annotation(raw, "two/bad")
    return "writes the same output folder as two/bad.json"


def _stems_differ_by_case(raw):
    annotation(raw, "Bad", image_name="Bad.png")
    annotation(raw, "sub/bad")
    return "writes the same output folder as sub/bad.json"


BAD_INPUTS = [
    _bad_json,
    _json_array,
    _no_shapes_key,
    _missing_image,
    _garbage_image,
    _truncated_jpeg,
    _garbage_image_data,
    _unknown_label,
    _size_mismatch,
    _absolute_posix_path,
    _absolute_windows_path,
    _traversal,
    _windows_traversal,
    _too_many_pixels,
    _same_stem_in_two_folders,
    _stems_differ_by_case,
]


@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=lambda f: f.__name__.strip("_"))
def test_bad_input_is_refused_naming_file_and_problem(raw, out, convert, make_bad):
    annotation(raw, "good")
    expected = make_bad(raw)
    message = refused(lambda: convert("convert_json.max_image_pixels=100000"), out)
    assert expected in message
    assert "bad.json" in message and "good.json" not in message


# Shape problems come from stages.labelme.shapes.shape_problems; here: that they reach the message.
BAD_SHAPES = {  # name: (shape, a word its problem must mention)
    "too_few_points": (shape("dove", [(1, 1), (5, 5)], "polygon"), "points"),
    "unknown_shape_type": (shape("dove", [(1, 1), (5, 5)], "hexagon"), "'hexagon'"),
    "non_numeric_points": (shape("dove", [(1, 1), ("a", 5), (9, 9)]), "numbers"),
    "nan_points": (shape("dove", [(1, 1), (float("nan"), 5), (9, 9)]), "NaN"),
    "mask_without_mask": (shape("dove", [(1, 1), (5, 5)], "mask"), "mask"),
}


@pytest.mark.parametrize("name", BAD_SHAPES)
def test_bad_shape_is_refused(raw, out, convert, name):
    bad_shape, word = BAD_SHAPES[name]
    annotation(raw, "good")
    annotation(raw, "bad", [shape("dove"), bad_shape])
    message = refused(convert, out)
    problem = next(line for line in message.splitlines() if "bad.json: shape 1 ('dove'): " in line)
    assert word in problem.split("shape 1 ('dove'): ")[1]
    assert "good.json" not in message and "shape 0" not in message


def test_pillow_decompression_bomb_guard_is_a_clear_problem(raw, out, convert, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # Pillow's own guard, below ours
    annotation(raw, "bad")
    assert "bad.json: image bad.png refused by Pillow as a decompression bomb" in refused(convert, out)


def test_empty_raw_dir_is_a_clear_error(raw, out, convert):
    (raw / "notes.txt").write_text("no annotations here")
    with pytest.raises(StageError, match="no labelme JSON files"):
        convert()
    assert not out.exists()


def test_every_problem_in_every_file_is_listed_and_nothing_written(raw, out, convert):
    annotation(raw, "good")
    annotation(raw, "m1", [shape("pigeon"), shape("dove", [(1, 1)], "polygon")], image=image_bytes(), height=99)
    (raw / "m2.json").write_text("not json")
    annotation(raw, "m3", image_path="../../etc/passwd")
    annotation(raw, "sub/good")  # collides with good.json
    for index in range(4):
        annotation(raw, f"fine{index}")
    message = refused(lambda: convert("convert_json.workers=2"), out)
    lines = message.splitlines()
    assert "in 5 of 9 annotation file(s)" in lines[0]
    body = "\n".join(lines[1:])
    for expected in [
        "m1.json: shape 0 ('pigeon'): label 'pigeon'",
        "m1.json: shape 1 ('dove'): ",
        "m1.json: imageHeight is 99",
        "m2.json: invalid JSON",
        "m3.json: imagePath '../../etc/passwd' points outside",
        "good.json: writes the same output folder as sub/good.json",
    ]:
        assert expected in body
    assert "fine" not in body


def test_failed_run_leaves_previous_output_unchanged(raw, out, convert):
    annotation(raw, "a")
    convert()
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    annotation(raw, "b", [shape("pigeon")])
    with pytest.raises(StageError):
        convert()
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["labels.txt", "processed", "raw"]


def test_command_line_prints_the_problem_without_traceback(raw, out, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    annotation(raw, "bad", [shape("pigeon")])
    python_path = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.convert_json",
            f"data.raw_dir={raw}",
            f"data.processed_dir={out}",
            f"data.labels={labels}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": python_path},
    )
    assert done.returncode == 1
    assert "bad.json: shape 0 ('pigeon'): label 'pigeon' is not in the labels file" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


# --- phone photos: JPEG bytes kept, rotated ones re-encoded, label_viz scaled down --------------------


def test_jpegs_keep_their_bytes_rotated_ones_are_reencoded_and_the_lists_follow(raw, out, convert, tmp_path, make_cfg):
    from stages import build_splits

    kept = image_bytes(fmt="JPEG")
    rotated = image_bytes(width=40, height=30, fmt="JPEG", exif_orientation=6)
    annotation(raw, "kept", image=kept, image_name="kept.jpg")
    annotation(raw, "embedded", image=kept, embed=True)
    annotation(
        raw,
        "rotated",
        [shape("dove", [(0, 0), (9, 39)], "rectangle")],
        image=rotated,
        image_name="rotated.jpg",
        height=40,
        width=30,
    )
    annotation(raw, "lossless")  # a PNG
    convert()
    files = {s["stem"]: s["image_file"] for s in json.loads((out / "manifest.json").read_text())["samples"]}
    assert files == {"kept": "img.jpg", "embedded": "img.jpg", "rotated": "img.jpg", "lossless": "img.png"}
    assert (out / "kept" / "img.jpg").read_bytes() == kept == (out / "embedded" / "img.jpg").read_bytes()
    with Image.open(out / "rotated" / "img.jpg") as written, Image.open(io.BytesIO(rotated)) as source:
        assert written.size == (30, 40) and 0x0112 not in written.getexif()  # OpenCV would rotate it again
        assert written.quantization == source.quantization  # re-encoded with the camera's own tables
    np.testing.assert_array_equal(img(out, "lossless"), to_rgb(Image.open(io.BytesIO(image_bytes()))))

    cfg = make_cfg(
        f"data.processed_dir={out}",
        f"data.splits_dir={tmp_path / 'splits'}",
        "build_splits.train=0.5",
        "build_splits.val=0.25",
        "build_splits.test=0.25",
    )
    build_splits.run(cfg)
    lines = sorted(
        line
        for name in ("train", "val", "test")
        for line in (tmp_path / "splits" / f"{name}.txt").read_text().splitlines()
    )
    assert lines == sorted(f"{stem}/{name} {stem}/label.png" for stem, name in files.items())


def test_a_large_photo_gets_a_label_viz_of_1024_px_and_a_full_size_label(raw, out, convert):
    from stages.data.images import VOC_PALETTE
    from stages.labelme.label_viz import LABEL_VIZ_MAX_SIDE

    data = image_bytes(width=2400, height=1800, fmt="JPEG")
    shapes = [
        shape("dove", [(100, 100), (1300, 200), (900, 1500)]),
        shape("cat", [(1500, 900), (2300, 1700)], "rectangle"),
    ]
    annotation(raw, "big", shapes, image=data, image_name="big.jpg", height=1800, width=2400)
    convert()
    assert (out / "big" / "img.jpg").read_bytes() == data
    full = label(out, "big")
    assert full.shape == (1800, 2400) and full[1000, 2000] == 2 and full[300, 800] == 1
    with Image.open(out / "big" / "label_viz.png") as viz:
        assert max(viz.size) == LABEL_VIZ_MAX_SIDE and viz.size == (1024, 768)
        pixels = np.asarray(viz).astype(np.int16)
    # labelme2voc's blend on the scaled-down pair: half the class colour plus half a grey picture of the photo
    small = np.asarray(Image.fromarray(full).resize(viz.size, Image.NEAREST))
    grey = pixels[:600, :700] - VOC_PALETTE[small[:600, :700]].astype(np.int16) // 2  # clear of the legend
    assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 1 and np.abs(grey[..., 1] - grey[..., 2]).max() <= 1
    photo = np.asarray(Image.open(io.BytesIO(data)).convert("L").resize(viz.size, Image.BILINEAR), np.int16)
    assert np.abs(grey[..., 1] * 2 - photo[:600, :700]).mean() < 3


def test_a_cut_short_large_jpeg_is_refused_though_decoded_at_a_reduced_scale(raw, out, convert):
    data = image_bytes(width=2400, height=1800, fmt="JPEG")
    annotation(raw, "big", image=data[: len(data) * 2 // 3], image_name="big.jpg", height=1800, width=2400)
    assert "image big.jpg is corrupt" in refused(convert, out)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_as_pillow_does(orientation):
    """to_rgb turns the stored pixels with OpenCV (10x faster at 12 MP): the same pixels as exif_transpose."""
    from PIL import ImageOps

    pixels = np.random.default_rng(orientation).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    for mode in ("RGB", "L", "RGBA"):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buffer, format="PNG", exif=exif.tobytes())
        expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))).convert("RGB"))
        np.testing.assert_array_equal(to_rgb(Image.open(io.BytesIO(buffer.getvalue()))), expected)
