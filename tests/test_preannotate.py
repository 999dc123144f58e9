"""preannotate: drafts that labelme loads and convert_json turns back into the model's masks, a ranking that
puts unsure photos first, a page, and never a person's JSON touched.

The model is a real exported Paddle inference model with set weights: a 1x1 conv scoring "red" by how red a
pixel is and "green" by how green, so photos of red and green shapes with holes are predicted well, and a
dull red box on a reddish background is predicted unsurely.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from stages.common.config import StageError
from stages.data.images import read_label_png, read_rgb
from stages.labelme.drafts import MARKER_KEY
from stages.models.inference_model import ModelMeta, Predictor, export
from stages.preannotate import run
from stages.prediction.masks import predict_masks

from tiny_pipeline import make_cfg

CLASS_NAMES = ("_background_", "red", "green")
INPUT_SIZE = (60, 80)  # the model's (height, width); photos are larger, so masks come from resized scores


def colour_detector():
    import paddle
    from paddle import nn

    class ColourDetector(nn.Layer):
        def __init__(self):
            super().__init__()
            self.score = nn.Conv2D(3, 3, kernel_size=1)
            weights = np.zeros((3, 3, 1, 1), np.float32)
            weights[1, 0] = weights[2, 1] = 8.0
            self.score.weight.set_value(weights)
            self.score.bias.set_value(np.array([0, -1, -1], np.float32))

        def forward(self, x):
            return self.score(x)

    paddle.seed(0)
    return ColourDetector()


def export_colour_model(model_dir: Path, class_names=CLASS_NAMES) -> None:
    export(
        colour_detector(),
        model_dir,
        ModelMeta(INPUT_SIZE, tuple(class_names), (0.5,) * 3, (0.5,) * 3, "ColourDetector"),
    )


def shapes_photo(path: Path, seed: int, size=(150, 200)) -> None:
    """Red and green shapes with holes, an island in a hole, and separate regions, on a dull background."""
    rng = np.random.default_rng(seed)
    height, width = size
    rgb = rng.integers(50, 110, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    red, green, dull = (235, 30, 30), (30, 235, 30), (80, 80, 80)
    cx, cy = width * 0.35 + rng.integers(-8, 8), height * 0.5 + rng.integers(-8, 8)
    draw.ellipse((cx - 55, cy - 50, cx + 55, cy + 50), fill=red)  # a red ring...
    draw.ellipse((cx - 32, cy - 28, cx + 32, cy + 28), fill=dull)  # ...its hole...
    draw.ellipse((cx - 17, cy - 15, cx + 17, cy + 15), fill=green)  # ...a green island in it...
    draw.ellipse((cx - 6, cy - 6, cx + 6, cy + 6), fill=dull)  # ...with a hole of its own
    draw.rectangle((width - 50, 12, width - 12, 60), fill=green)  # two separate regions
    draw.polygon([(width - 60, height - 15), (width - 15, height - 60), (width - 15, height - 15)], fill=red)
    image.save(path)


def rotated_photo(path: Path, seed: int) -> None:
    """A phone photo: pixels stored turned, with an EXIF tag saying how to turn them back (Orientation 6)."""
    shapes_photo(path.with_suffix(".png"), seed)
    with Image.open(path.with_suffix(".png")) as upright:
        stored = upright.transpose(Image.Transpose.ROTATE_90)
    path.with_suffix(".png").unlink()
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, quality=95, exif=exif)


def box_photo(path: Path, box_rgb, background_rgb, size=(120, 160)) -> None:
    height, width = size
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:] = background_rgb
    rgb[30:90, 40:120] = box_rgb
    Image.fromarray(rgb).save(path)


def person_json(photo: Path) -> Path:
    """A labelme file as a person saves it (no marker)."""
    path = photo.with_suffix(".json")
    path.write_text(
        json.dumps(
            {
                "version": "5.5.0",
                "flags": {},
                "imagePath": photo.name,
                "imageData": None,
                "imageHeight": 120,
                "imageWidth": 160,
                "shapes": [
                    {
                        "label": "red",
                        "points": [[40, 30], [119, 30], [119, 89], [40, 89]],
                        "group_id": None,
                        "description": "",
                        "shape_type": "polygon",
                        "flags": {},
                        "mask": None,
                    }
                ],
            },
            indent=2,
        )
    )
    os.utime(path, (1_600_000_000, 1_600_000_000))  # an old mtime: any rewrite would show
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("preannotate")
    (root / "labels.txt").write_text("__ignore__\n" + "\n".join(CLASS_NAMES) + "\n")
    export_colour_model(root / "models" / "colour")
    return root


def overrides(root: Path, input_dir: Path, *extra: str) -> list[str]:
    return [
        f"data.labels={root / 'labels.txt'}",
        f"paths.models_dir={root / 'models'}",
        f"paths.reports_dir={root / 'reports'}",
        f"preannotate.input_dir={input_dir}",
        f"preannotate.output_dir={input_dir.parent / (input_dir.name + '_out')}",
        "preannotate.model=colour",
        "preannotate.batch_size=3",
        "preannotate.cpu_threads=1",
        *extra,
    ]


@pytest.fixture(scope="module")
def drafted(workspace):
    """One run over: shape photos (one in a subfolder), a sure and an unsure box, an unreadable file, and a
    photo that already has a person's JSON."""
    photos = workspace / "photos"
    (photos / "sub").mkdir(parents=True)
    for seed in range(3):
        shapes_photo(photos / f"shapes_{seed}.png", seed)
    shapes_photo(photos / "sub" / "shapes_sub.png", 9, size=(131, 177))
    rotated_photo(photos / "rotated.jpg", 4)
    box_photo(photos / "sure.png", (250, 10, 10), (10, 10, 10))
    box_photo(photos / "unsure.png", (150, 90, 90), (118, 100, 100))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    box_photo(photos / "annotated.png", (250, 10, 10), (10, 10, 10))
    person = person_json(photos / "annotated.png")
    before = (person.read_bytes(), person.stat().st_mtime_ns)
    cfg = make_cfg(*overrides(workspace, photos))
    return cfg, run(cfg), photos, person, before


def drafts(photos: Path) -> list[Path]:
    return sorted(path for path in photos.rglob("*.json") if path.name != "annotated.json")


def photo_of(json_path: Path) -> Path:
    return json_path.parent / json.loads(json_path.read_text())["imagePath"]


def test_writes_one_labelme_json_per_readable_photo_that_labelme_loads(drafted):
    from labelme import LabelFile

    _cfg, result, photos, _, _ = drafted
    written = drafts(photos)
    assert [path.relative_to(photos).as_posix() for path in written] == [
        "rotated.json",
        "shapes_0.json",
        "shapes_1.json",
        "shapes_2.json",
        "sub/shapes_sub.json",
        "sure.json",
        "unsure.json",
    ]
    assert result["counts"] == {"written": 7, "replaced": 0, "kept_draft": 0, "kept_person": 1, "skipped": 1}
    for path in written:
        document = json.loads(path.read_text())
        assert list(document)[:7] == [
            "version",
            "flags",
            "shapes",
            "imagePath",
            "imageData",
            "imageHeight",
            "imageWidth",
        ]
        assert document["imagePath"] == photo_of(path).name and document["imageData"] is None
        assert document[MARKER_KEY]["model"] == "colour"
        loaded = LabelFile(str(path))  # labelme 6's own reader: raises on anything it cannot open
        assert len(loaded.shapes) == len(document["shapes"]) > 0
        height, width = read_rgb(photo_of(path)).shape[:2]  # EXIF-oriented, as labelme shows it
        assert (document["imageHeight"], document["imageWidth"]) == (height, width)
        for shape in document["shapes"]:
            assert shape["shape_type"] == "polygon" and len(shape["points"]) >= 3
            assert re.fullmatch(
                r"drafted by model colour \(ColourDetector\), mean confidence [01]\.\d\d", shape["description"]
            )
    assert json.loads((photos / "rotated.json").read_text())["imageHeight"] == 150  # stored 200 high
    labels = [shape["label"] for shape in json.loads((photos / "shapes_0.json").read_text())["shapes"]]
    # The red ring, its hole, the green island, its hole, the separate green box and red triangle.
    assert sorted(labels) == sorted(["red", "_background_", "green", "_background_", "green", "red"])
    assert labels.index("_background_") > labels.index("red")


def test_drafts_round_trip_through_convert_json_to_the_models_masks(drafted, workspace, tmp_path):
    """JSON -> convert_json (as `dvc repro` would run it) -> label.png equals the model's mask, per class
    IoU >= 0.99; the subfolder photo included."""
    from stages.convert_json import run as convert_json

    _cfg, _, photos, _, _ = drafted
    raw = tmp_path / "raw"
    shutil.copytree(photos, raw, ignore=shutil.ignore_patterns("broken.jpg", "annotated.*"))
    convert_json(
        make_cfg(
            f"data.raw_dir={raw}",
            f"data.processed_dir={tmp_path / 'processed'}",
            f"data.labels={workspace / 'labels.txt'}",
            "convert_json.workers=1",
        )
    )
    predictor = Predictor(workspace / "models" / "colour", cpu_threads=1)
    for path in drafts(photos):
        photo = photo_of(path)
        predicted = predict_masks(predictor, [read_rgb(photo)])[0]
        label = read_label_png(tmp_path / "processed" / path.stem / "label.png")
        for class_id in np.unique(predicted)[1:]:
            inside, drafted_class = predicted == class_id, label == class_id
            iou = (inside & drafted_class).sum() / (inside | drafted_class).sum()
            assert iou >= 0.99, f"{photo.name}: {CLASS_NAMES[class_id]} IoU {iou:.4f}"
        assert set(np.unique(label)) <= set(np.unique(predicted))


def test_the_ranking_puts_the_unsure_photo_above_the_sure_one(drafted):
    cfg, result, _photos, _, _ = drafted
    with open(Path(cfg.preannotate.output_dir) / "ranking.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = [row["image"] for row in rows]
    assert set(images) == {
        "rotated.jpg",
        "shapes_0.png",
        "shapes_1.png",
        "shapes_2.png",
        "sub/shapes_sub.png",
        "sure.png",
        "unsure.png",
    }
    scores = [float(row["score"]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert images.index("unsure.png") < images.index("sure.png")
    by_image = {row["image"]: row for row in rows}
    assert float(by_image["unsure.png"]["score"]) > 2 * float(by_image["sure.png"]["score"])
    assert float(by_image["unsure.png"]["confidence"]) < float(by_image["sure.png"]["confidence"])
    assert result["most_uncertain"][0] == images[0]


def test_the_page_is_self_contained_and_shows_the_top_photos(drafted):
    cfg, _, _, _, _ = drafted
    page = (Path(cfg.preannotate.output_dir) / "index.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 7 and all(src.startswith("data:image/jpeg;base64,") for src in sources)
    assert "href=" not in page and "url(" not in page
    assert page.index("unsure.png") < page.index("sure.png")


def test_unreadable_photos_are_skipped_and_listed_and_a_persons_json_left_alone(drafted):
    cfg, _, photos, person, before = drafted
    summary = json.loads((Path(cfg.preannotate.output_dir) / "summary.json").read_text())
    assert [entry["image"] for entry in summary["skipped"]] == ["broken.jpg"]
    assert not (photos / "broken.json").exists()
    assert summary["kept_person_json"] == [{"image": "annotated.png", "json": "annotated.json"}]
    assert (person.read_bytes(), person.stat().st_mtime_ns) == before


def test_overwrite_replaces_only_untouched_drafts(workspace, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("kept", "edited", "person"):
        box_photo(photos / f"{name}.png", (250, 10, 10), (10, 10, 10))
    person = person_json(photos / "person.png")
    run(make_cfg(*overrides(workspace, photos)))
    assert json.loads(person.read_text()).get(MARKER_KEY) is None

    # A person corrects one draft in labelme (which keeps the marker when it saves) and leaves the other.
    edited = photos / "edited.json"
    document = json.loads(edited.read_text())
    document["shapes"][0]["points"][0] = [0.0, 0.0]
    edited.write_text(json.dumps(document, indent=2))
    kept = photos / "kept.json"
    for path in (kept, edited, person):
        os.utime(path, (1_600_000_000, 1_600_000_000))
    untouched = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (kept, edited, person)}

    result = run(make_cfg(*overrides(workspace, photos)))  # overwrite off: nothing replaced
    assert result["counts"] == {"written": 0, "replaced": 0, "kept_draft": 1, "kept_person": 2, "skipped": 0}
    assert all((path.read_bytes(), path.stat().st_mtime_ns) == state for path, state in untouched.items())

    result = run(make_cfg(*overrides(workspace, photos, "preannotate.overwrite=true")))
    assert result["counts"] == {"written": 0, "replaced": 1, "kept_draft": 0, "kept_person": 2, "skipped": 0}
    assert kept.stat().st_mtime_ns != untouched[kept][1]
    for path in (edited, person):
        assert (path.read_bytes(), path.stat().st_mtime_ns) == untouched[path]


def labelme_saves(json_path: Path, move_first_point: bool) -> None:
    """What labelme 6's save does with a file it loaded (app.save_labels / _shape_to_dict)."""
    from labelme import LabelFile
    from labelme._label_file import write_label_file

    loaded = LabelFile(str(json_path))
    shapes = [
        {
            **shape["other_data"],
            "label": shape["label"],
            "points": [(float(x), float(y)) for x, y in shape["points"]],
            "group_id": shape["group_id"],
            "description": shape["description"],
            "shape_type": shape["shape_type"],
            "flags": shape["flags"],
            "mask": None,
        }
        for shape in loaded.shapes
    ]
    if move_first_point:
        shapes[0]["points"][0] = (shapes[0]["points"][0][0] + 3.0, shapes[0]["points"][0][1])
    document = json.loads(json_path.read_text())
    write_label_file(
        str(json_path),
        shapes=shapes,
        image_path=document["imagePath"],
        image_data=None,
        image_height=document["imageHeight"],
        image_width=document["imageWidth"],
        other_data=loaded.other_data,
        flags={},
    )


def test_labelme_keeps_the_marker_but_a_correction_makes_the_draft_a_persons(drafted, tmp_path):
    from stages.labelme.drafts import JsonState, json_state

    _, _, photos, _, _ = drafted
    for move, expected in ((False, JsonState.DRAFT), (True, JsonState.PERSON)):
        copy = tmp_path / f"moved_{move}" / "shapes_0.json"
        copy.parent.mkdir()
        shutil.copy(photos / "shapes_0.json", copy)
        shutil.copy(photos / "shapes_0.png", copy.parent)
        labelme_saves(copy, move_first_point=move)
        assert MARKER_KEY in json.loads(copy.read_text())
        assert json_state(copy) is expected


def test_model_null_picks_the_best_test_miou_with_a_model_folder(workspace, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    box_photo(photos / "a.png", (250, 10, 10), (10, 10, 10))
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "metrics.json").write_text(
        json.dumps(
            {
                "colour": {"test": {"mIoU": 0.8}, "architecture": "DoveNet"},
                "gone": {"test": {"mIoU": 0.9}},
                "worse": {"test": {"mIoU": 0.5}},
                "champion": {"model": "gone", "test_mIoU": 0.9},  # as report writes it
            }
        )
    )
    shutil.copytree(workspace / "models" / "colour", workspace / "models" / "worse", dirs_exist_ok=True)
    result = run(make_cfg(*overrides(workspace, photos, "preannotate.model=null", f"paths.reports_dir={reports}")))
    assert result["model"] == "colour"


# --- bad input: a clear error, and nothing written -------------------------------------------------------


def nothing_written(photos: Path, cfg) -> bool:
    return not list(photos.rglob("*.json")) and not Path(cfg.preannotate.output_dir).exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty folder", r"no photos to annotate"),
        ("no such folder", r"preannotate.input_dir .*: no such folder"),
        ("missing model", r"preannotate.model=nope: no model folder"),
        ("no metrics to choose from", r"picks the best test mIoU in .*metrics.json.*does not exist"),
        ("other classes", r"trained on classes \['_background_', 'dove'\]"),
        ("output inside input", r"is inside preannotate.input_dir"),
        ("two photos one JSON", r"would share one labelme JSON .*a.jpg and a.png"),
        ("nothing readable", r"none of its 1 photos could be read"),
        ("negative tolerance", r"preannotate.tolerance_px=-0.5: must be a number >= 0"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(workspace, tmp_path, case, message):
    photos = tmp_path / "photos"
    photos.mkdir()
    extra = []
    if case != "empty folder":
        box_photo(photos / "a.png", (250, 10, 10), (10, 10, 10))
    if case == "no such folder":
        photos = tmp_path / "nowhere"
    elif case == "missing model":
        extra = ["preannotate.model=nope"]
    elif case == "no metrics to choose from":
        extra = ["preannotate.model=null"]
    elif case == "other classes":
        export_colour_model(tmp_path / "models" / "doves", ("_background_", "dove"))
        extra = [f"paths.models_dir={tmp_path / 'models'}", "preannotate.model=doves"]
    elif case == "output inside input":
        extra = [f"preannotate.output_dir={photos / 'out'}"]
    elif case == "two photos one JSON":
        Image.new("RGB", (8, 8)).save(photos / "a.jpg")
    elif case == "nothing readable":
        (photos / "a.png").write_bytes(b"not a png")
    elif case == "negative tolerance":
        extra = ["preannotate.tolerance_px=-0.5"]
    cfg = make_cfg(*overrides(workspace, photos, *extra))
    with pytest.raises(StageError, match=message):
        run(cfg)
    assert nothing_written(photos, cfg) if photos.exists() else not Path(cfg.preannotate.output_dir).exists()
