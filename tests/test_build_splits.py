import json

import pytest

from stages.build_splits import assign_splits, classes_not_in_train, run
from stages.common.config import StageError
from stages.data.split_lists import data_version, read_split


def write_manifest(processed, class_pixels: dict[str, dict[str, int]]):
    processed.mkdir(parents=True, exist_ok=True)
    samples = [{"stem": stem, "class_pixels": pixels} for stem, pixels in class_pixels.items()]
    (processed / "manifest.json").write_text(json.dumps({"samples": samples}))


def demo_like(n_doves=40, n_empty=10):
    pixels = {f"dove_{i:03d}": {"_background_": 900, "dove": 100} for i in range(n_doves)}
    pixels.update({f"empty_{i:03d}": {"_background_": 1000, "dove": 0} for i in range(n_empty)})
    return pixels


@pytest.fixture
def split_cfg(tmp_path, make_cfg):
    def _cfg(*extra):
        return make_cfg(
            f"data.processed_dir={tmp_path / 'processed'}", f"data.splits_dir={tmp_path / 'splits'}", *extra
        )

    return _cfg


def read_lists(splits_dir):
    return {name: (splits_dir / f"{name}.txt").read_text().splitlines() for name in ("train", "val", "test")}


def test_splits_are_disjoint_complete_and_near_the_ratios(tmp_path, split_cfg):
    write_manifest(tmp_path / "processed", demo_like())
    result = run(split_cfg())
    lists = read_lists(tmp_path / "splits")
    stems = {name: {line.split(" ")[0].split("/")[0] for line in lines} for name, lines in lists.items()}
    assert not (stems["train"] & stems["val"]) and not (stems["train"] & stems["test"])
    assert not (stems["val"] & stems["test"])
    assert set().union(*stems.values()) == set(demo_like())
    assert result["counts"] == {"train": 35, "val": 8, "test": 7} or result["counts"] == {
        "train": 35,
        "val": 7,
        "test": 8,
    }


def test_lines_are_paddleseg_pairs_relative_to_processed_dir(tmp_path, split_cfg):
    write_manifest(tmp_path / "processed", demo_like(10, 2))
    cfg = split_cfg()
    run(cfg)
    line = read_lists(tmp_path / "splits")["train"][0]
    image, label = line.split(" ")
    assert image.endswith("/img.png") and label.endswith("/label.png")
    assert image.split("/")[0] == label.split("/")[0]
    samples = read_split(cfg, "train")
    assert samples[0].image == tmp_path / "processed" / image


def test_each_stratum_reaches_every_split(tmp_path, split_cfg):
    write_manifest(tmp_path / "processed", demo_like(40, 20))
    run(split_cfg())
    lists = read_lists(tmp_path / "splits")
    for name, lines in lists.items():
        assert any(line.startswith("empty_") for line in lines), name
        assert any(line.startswith("dove_") for line in lines), name


def test_same_seed_same_lists_other_seed_other_lists(tmp_path, split_cfg):
    write_manifest(tmp_path / "processed", demo_like())
    run(split_cfg())
    first = read_lists(tmp_path / "splits")
    run(split_cfg())
    assert read_lists(tmp_path / "splits") == first
    run(split_cfg("build_splits.seed=7"))
    assert read_lists(tmp_path / "splits") != first


def test_summary_has_counts_and_pixel_share(tmp_path, split_cfg):
    write_manifest(tmp_path / "processed", demo_like())
    run(split_cfg())
    summary = json.loads((tmp_path / "splits" / "summary.json").read_text())
    assert sum(summary["counts"].values()) == 50
    share = summary["class_pixel_share"]["train"]
    assert share["dove"] == pytest.approx(35 * 100 / (35 * 1000 + 0), rel=0.5)
    assert sum(share.values()) == pytest.approx(1.0, abs=1e-4)


def test_an_empty_split_is_a_clear_error_and_writes_nothing(tmp_path, split_cfg):
    write_manifest(tmp_path / "processed", demo_like(2, 0))
    with pytest.raises(StageError, match=r"2 annotated photo.*at least one each: annotate 1 more"):
        run(split_cfg())
    assert not (tmp_path / "splits").exists()
    write_manifest(tmp_path / "processed", demo_like())
    with pytest.raises(StageError, match=r"build_splits.val=0 .*val split empty.*build_splits.val=0.15"):
        run(split_cfg("build_splits.train=0.85", "build_splits.val=0", "build_splits.test=0.15"))
    assert not (tmp_path / "splits").exists()


@pytest.mark.parametrize("count", [3, 4, 5, 8])
def test_few_photos_still_fill_every_split(tmp_path, split_cfg, count):
    write_manifest(tmp_path / "processed", demo_like(count, 0))
    counts = run(split_cfg())["counts"]
    assert all(counts[name] >= 1 for name in ("train", "val", "test")) and sum(counts.values()) == count
    assert counts["train"] == max(counts.values())
    if count == 8:
        assert counts == {"train": 6, "val": 1, "test": 1}


def test_classes_without_train_pixels_are_named_in_a_warning_and_the_summary(tmp_path, split_cfg, capsys):
    pixels = {f"dove_{i}": {"_background_": 900, "dove": 100, "rock": 0, "leaf": 0} for i in range(6)}
    pixels["rocky"] = {"_background_": 900, "dove": 0, "rock": 100, "leaf": 0}  # one photo: not in train
    write_manifest(tmp_path / "processed", pixels)
    manifest = json.loads((tmp_path / "processed" / "manifest.json").read_text())
    manifest["class_names"] = ["_background_", "dove", "rock", "leaf"]
    (tmp_path / "processed" / "manifest.json").write_text(json.dumps(manifest))
    run(split_cfg())
    lists = read_lists(tmp_path / "splits")
    where = next(name for name, lines in lists.items() if any(line.startswith("rocky/") for line in lines))
    summary = json.loads((tmp_path / "splits" / "summary.json").read_text())
    err = capsys.readouterr().err
    assert "leaf (in no photo)" in err
    if where == "train":
        assert summary["classes_not_in_train"] == ["leaf"] and "rock" not in err
    else:
        assert summary["classes_not_in_train"] == ["rock", "leaf"]
        assert f"rock (only in {where})" in err
    assert "dove" not in summary["classes_not_in_train"]


def test_ratios_must_sum_to_one(tmp_path, split_cfg):
    write_manifest(tmp_path / "processed", demo_like())
    with pytest.raises(StageError, match=r"sum to 1"):
        run(split_cfg("build_splits.train=0.9"))


def test_a_stem_containing_the_separator_is_refused(tmp_path, split_cfg):
    pixels = demo_like(10, 0)
    pixels["my dove"] = {"_background_": 1, "dove": 1}
    write_manifest(tmp_path / "processed", pixels)
    with pytest.raises(StageError, match=r"my dove.*separator"):
        run(split_cfg())
    assert not (tmp_path / "splits").exists()


def test_missing_manifest_is_a_clear_error(tmp_path, split_cfg):
    with pytest.raises(StageError, match=r"manifest.json.*convert_json"):
        run(split_cfg())


def test_data_version_follows_the_lists(tmp_path, split_cfg):
    write_manifest(tmp_path / "processed", demo_like())
    cfg = split_cfg()
    run(cfg)
    before = data_version(cfg)
    run(split_cfg("build_splits.seed=3"))
    assert data_version(cfg) != before


def test_dealing_keeps_totals_within_one_of_the_ratios():
    strata = {"a": [f"a{i}" for i in range(13)], "b": [f"b{i}" for i in range(31)], "c": ["c0"]}
    ratios = {"train": 0.7, "val": 0.15, "test": 0.15}
    splits = assign_splits(strata, ratios, seed=1)
    total = 45
    for name, stems in splits.items():
        assert abs(len(stems) - ratios[name] * total) <= 1


def test_classes_not_in_train_lists_where_each_class_is():
    pixels = {"a": {"dove": 5, "rock": 0}, "b": {"dove": 0, "rock": 3}, "c": {"dove": 1, "rock": 2}}
    splits = {"train": ["a"], "val": ["b"], "test": ["c"]}
    names = ["_background_", "dove", "rock", "leaf"]
    assert classes_not_in_train(splits, pixels, names) == {"rock": ["val", "test"], "leaf": []}
