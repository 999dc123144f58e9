import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.common.config import StageError
from stages.data.images import VOC_PALETTE, colorize_label, read_label_png, read_rgb, save_rgb_png
from stages.data.split_lists import read_split
from stages.evaluation.metrics import ConfusionMatrix
from stages.models.inference_model import preprocess, read_meta
from stages.predict import run
from stages.prediction.files import CLASS_ID_DIR, OVERLAY_DIR, PSEUDO_COLOR_DIR
from stages.prediction.masks import scores_to_mask

from tiny_pipeline import SAMPLE_SIZES, export_both_models, make_cfg, make_dataset, read_image


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """predict run once on the tiny test split with both tiny models."""
    root = tmp_path_factory.mktemp("predict")
    overrides = make_dataset(root)
    export_both_models(root / "models")
    cfg = make_cfg(*overrides)
    return cfg, run(cfg)


def test_outputs_are_full_size_p_mode_with_the_palette(scored):
    cfg, result = scored
    assert set(result["models"]) == {"paddle", "paddleseg"}
    for model in ("paddle", "paddleseg"):
        out = Path(cfg.paths.predictions_dir) / model
        for stem, (height, width) in SAMPLE_SIZES.items():
            class_ids = read_image(out / CLASS_ID_DIR / f"{stem}.png")
            assert class_ids.mode == "P" and class_ids.size == (width, height)
            palette = np.array(class_ids.getpalette(), np.uint8).reshape(-1, 3)
            assert (palette[:2] == VOC_PALETTE[:2]).all()
            ids = np.asarray(class_ids)
            colour = read_image(out / PSEUDO_COLOR_DIR / f"{stem}.png")
            assert colour.mode == "RGB" and (np.asarray(colour) == colorize_label(ids)).all()
            overlay = read_image(out / OVERLAY_DIR / f"{stem}.jpg")
            assert overlay.size == (width, height)
        # No temp folders left beside the outputs.
        assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_both_engines_give_the_same_masks_and_scores(scored, tmp_path):
    cfg, result = scored
    assert cfg.predict.engine == "onnxruntime" and result["engine"] == "onnxruntime"  # the default
    paddle_cfg = make_cfg(
        *[
            f"{key}={value}"
            for key, value in (
                ("data.labels", cfg.data.labels),
                ("data.processed_dir", cfg.data.processed_dir),
                ("data.splits_dir", cfg.data.splits_dir),
                ("paths.exports_dir", cfg.paths.exports_dir),
            )
        ],
        f"paths.predictions_dir={tmp_path / 'paddle_engine'}",
        "predict.engine=paddle",
        "predict.batch_size=3",
    )
    paddle_result = run(paddle_cfg)
    assert paddle_result["engine"] == "paddle"
    for model in ("paddle", "paddleseg"):
        for stem in SAMPLE_SIZES:
            onnx_mask = read_label_png(Path(cfg.paths.predictions_dir) / model / CLASS_ID_DIR / f"{stem}.png")
            paddle_mask = read_label_png(tmp_path / "paddle_engine" / model / CLASS_ID_DIR / f"{stem}.png")
            assert (onnx_mask == paddle_mask).all(), (model, stem)
        assert paddle_result["models"][model]["mIoU"] == result["models"][model]["mIoU"]
        metrics = json.loads((tmp_path / "paddle_engine" / model / "metrics.json").read_text())
        assert metrics["engine"] == "paddle"


def test_an_unknown_engine_is_refused(tmp_path):
    with pytest.raises(StageError, match=r"predict.engine must be one of paddle, onnxruntime, not 'tensorrt'"):
        run(make_cfg(*make_dataset(tmp_path), "predict.engine=tensorrt"))


def test_metrics_equal_a_direct_confusion_matrix_over_the_written_masks(scored):
    cfg, _ = scored
    for model in ("paddle", "paddleseg"):
        out = Path(cfg.paths.predictions_dir) / model
        metrics = json.loads((out / "metrics.json").read_text())
        matrix = ConfusionMatrix(2)
        for sample in read_split(cfg, "test"):
            matrix.update(read_label_png(out / CLASS_ID_DIR / f"{sample.stem}.png"), read_label_png(sample.label))
        expected = matrix.scores()
        assert metrics["confusion_matrix"] == matrix.matrix.tolist()
        for key in ("mIoU", "acc", "kappa", "mDice"):
            assert metrics["test"][key] == pytest.approx(expected[key])
        for key in ("IoU", "dice", "precision", "recall"):
            assert metrics["test"][key] == pytest.approx(dict(zip(("_background_", "dove"), expected[key])))
        assert [s["stem"] for s in metrics["samples"]] == list(SAMPLE_SIZES)
        assert metrics["architecture"] in ("DoveNet", "UNet")
        # The red detector finds the red boxes: good, but the resize costs something at the edges.
        assert 0.8 < metrics["test"]["mIoU"] <= 1.0


def test_dove_free_photo_predicted_right_scores_one(scored):
    cfg, _ = scored
    metrics = json.loads((Path(cfg.paths.predictions_dir) / "paddle" / "metrics.json").read_text())
    empty = next(s for s in metrics["samples"] if s["stem"] == "empty_e")
    ids = read_label_png(Path(cfg.paths.predictions_dir) / "paddle" / CLASS_ID_DIR / "empty_e.png")
    assert not ids.any() and empty["mIoU"] == 1.0 and empty["acc"] == 1.0


def test_masks_match_paddles_own_bilinear_resize_of_the_scores(scored):
    """Oracle: the dygraph layer, paddle.nn.functional.interpolate (bilinear) back to size, argmax."""
    import paddle
    import paddle.nn.functional as F

    from tiny_pipeline import red_detector

    cfg, _ = scored
    model_dir = Path(cfg.paths.models_dir) / "paddleseg"
    meta, layer = read_meta(model_dir), red_detector(pool=2)
    layer.eval()
    for sample in read_split(cfg, "test"):
        rgb = read_rgb(sample.image)
        scores = layer(paddle.to_tensor(preprocess(rgb, meta)[None]))
        full = F.interpolate(scores, size=rgb.shape[:2], mode="bilinear", align_corners=False)
        expected = full.argmax(axis=1)[0].numpy()
        written = read_label_png(Path(cfg.paths.predictions_dir) / "paddleseg" / CLASS_ID_DIR / f"{sample.stem}.png")
        assert (written == expected).mean() > 0.995, sample.stem


def test_scores_to_mask_resizes_scores_before_the_argmax():
    # Two coarse pixels, dove score rising left to right: the boundary lands between them, where the
    # interpolated scores cross, not where nearest-neighbour ids would put it.
    scores = np.array([[[0.0, 0.0]], [[-3.0, 1.0]]], np.float32)  # C=2, h=1, w=2
    mask = scores_to_mask(scores, (1, 8))
    # Bilinear at pixel centres: dove - background = -3 (x<=1.5) ... 1 (x>=5.5), zero at x=4.5.
    assert mask.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1]]
    assert scores_to_mask(scores, (1, 2)).tolist() == [[0, 1]]


def test_scores_to_mask_with_many_classes_equals_resizing_every_score_map():
    import paddle
    import paddle.nn.functional as F

    scores = np.random.default_rng(0).normal(size=(4, 6, 5)).astype(np.float32)
    full = F.interpolate(paddle.to_tensor(scores[None]), size=(23, 17), mode="bilinear", align_corners=False)
    expected = full.argmax(axis=1)[0].numpy()
    assert (scores_to_mask(scores, (23, 17)) == expected).mean() > 0.99


def test_a_model_that_upsamples_like_dovenet_and_unet_predicts(tmp_path):
    from tiny_pipeline import deploy_model, export_model

    overrides = make_dataset(tmp_path)
    export_model(tmp_path / "models" / "paddle", (16, 16), pool=2, upsample=True)
    deploy_model(tmp_path / "models" / "paddle")
    result = run(make_cfg(*overrides, "predict.models=[paddle]"))
    assert result["models"]["paddle"]["mIoU"] > 0.8


def test_missing_model_is_a_clear_error_and_writes_nothing(tmp_path):
    overrides = make_dataset(tmp_path)
    cfg = make_cfg(*overrides)
    with pytest.raises(StageError, match=r"(?s)dvc repro export.*model 'paddle'.*model\.onnx"):
        run(cfg)
    with pytest.raises(StageError, match=r"model 'paddle'.*inference"):
        run(make_cfg(*overrides, "predict.engine=paddle"))
    assert not Path(cfg.paths.predictions_dir).exists()


def test_model_trained_on_other_classes_is_refused(tmp_path):
    from tiny_pipeline import deploy_model, export_model

    overrides = make_dataset(tmp_path)
    export_model(tmp_path / "models" / "paddle", class_names=("_background_", "pigeon"))
    deploy_model(tmp_path / "models" / "paddle")
    with pytest.raises(StageError, match=r"pigeon"):
        run(make_cfg(*overrides, "predict.models=[paddle]"))


# --- folder mode ----------------------------------------------------------------------------------


@pytest.fixture
def folder_cfg(tmp_path):
    export_both_models(tmp_path / "models")

    def _cfg(input_dir, *extra):
        return make_cfg(
            f"paths.exports_dir={tmp_path / 'exports'}",
            f"predict.input_dir={input_dir}",
            f"predict.output_dir={tmp_path / 'out'}",
            "predict.batch_size=2",
            *extra,
        )

    return _cfg


def test_folder_mode_predicts_every_readable_photo_and_lists_the_corrupt_ones(tmp_path, folder_cfg, capsys):
    photos = tmp_path / "photos"
    (photos / "trip").mkdir(parents=True)
    rng = np.random.default_rng(1)
    save_rgb_png(photos / "a.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 255, (25, 15, 3), dtype=np.uint8)).save(photos / "trip" / "b.JPG")
    # EXIF orientation 6 (rotate 90): the prediction follows the photo as it is shown, 40 wide x 10 high.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 255, (40, 10, 3), dtype=np.uint8)).save(photos / "rotated.jpg", exif=exif)
    (photos / "broken.jpg").write_bytes(b"this is not a jpeg")
    valid = (photos / "a.png").read_bytes()
    (photos / "truncated.png").write_bytes(valid[: len(valid) // 2])
    (photos / "notes.txt").write_text("not a photo, ignored")

    result = run(folder_cfg(photos))

    assert sorted(result["predicted"]) == ["a", "rotated", "trip/b"]
    assert sorted(Path(s["file"]).name for s in result["skipped"]) == ["broken.jpg", "truncated.png"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["skipped"] == result["skipped"] and summary["predicted"] == result["predicted"]
    assert "warning: skipped" in capsys.readouterr().err
    for model in ("paddle", "paddleseg"):
        out = tmp_path / "out" / model
        assert read_image(out / CLASS_ID_DIR / "rotated.png").size == (40, 10)
        assert read_image(out / CLASS_ID_DIR / "trip" / "b.png").size == (15, 25)
        assert (out / OVERLAY_DIR / "a.jpg").is_file() and (out / PSEUDO_COLOR_DIR / "a.png").is_file()
        assert not (out / CLASS_ID_DIR / "broken.png").exists()


def test_folder_mode_empty_folder_is_a_clear_error(tmp_path, folder_cfg):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no photos here")
    with pytest.raises(StageError, match=r"no images"):
        run(folder_cfg(tmp_path / "empty"))
    with pytest.raises(StageError, match=r"no such folder"):
        run(folder_cfg(tmp_path / "nowhere"))


def test_folder_mode_missing_model_is_a_clear_error(tmp_path, folder_cfg):
    (tmp_path / "photos").mkdir()
    save_rgb_png(tmp_path / "photos" / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(StageError, match=r"model 'dovenet'"):
        run(folder_cfg(tmp_path / "photos", "predict.models=[paddle,dovenet]"))
    assert not (tmp_path / "out").exists()


def test_folder_mode_with_only_unreadable_photos_fails_and_writes_nothing(tmp_path, folder_cfg):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(StageError, match=r"could be read"):
        run(folder_cfg(tmp_path / "photos"))
    assert not (tmp_path / "out" / "paddle").exists()


def test_folder_mode_output_inside_the_input_folder_is_not_read_back(tmp_path, folder_cfg):
    photos = tmp_path / "photos"
    photos.mkdir()
    save_rgb_png(photos / "a.png", np.zeros((8, 8, 3), np.uint8))
    cfg = folder_cfg(photos, f"predict.output_dir={photos / 'predicted'}")
    run(cfg)
    assert run(cfg)["predicted"] == ["a"]


def test_folder_mode_refuses_names_that_would_overwrite_each_other(tmp_path, folder_cfg):
    (tmp_path / "photos").mkdir()
    save_rgb_png(tmp_path / "photos" / "a.png", np.zeros((8, 8, 3), np.uint8))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photos" / "a.jpg")
    with pytest.raises(StageError, match=r"a.jpg and a.png|a.png and a.jpg"):
        run(folder_cfg(tmp_path / "photos"))
