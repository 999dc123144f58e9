import json

import pytest

from stages.build_splits import assign_splits, run
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
        return make_cfg(f"data.processed_dir={tmp_path / 'processed'}", f"data.splits_dir={tmp_path / 'splits'}",
                        *extra)
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
    assert result["counts"] == {"train": 35, "val": 8, "test": 7} or result["counts"] == {"train": 35, "val": 7, "test": 8}


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
    with pytest.raises(StageError, match="test.* empty|empty"):
        run(split_cfg())
    assert not (tmp_path / "splits").exists()
    with pytest.raises(StageError, match="val.*empty"):
        run(split_cfg("build_splits.train=0.85", "build_splits.val=0", "build_splits.test=0.15"))


def test_ratios_must_sum_to_one(tmp_path, split_cfg):
    write_manifest(tmp_path / "processed", demo_like())
    with pytest.raises(StageError, match="sum to 1"):
        run(split_cfg("build_splits.train=0.9"))


def test_a_stem_containing_the_separator_is_refused(tmp_path, split_cfg):
    pixels = demo_like(10, 0)
    pixels["my dove"] = {"_background_": 1, "dove": 1}
    write_manifest(tmp_path / "processed", pixels)
    with pytest.raises(StageError, match="my dove.*separator"):
        run(split_cfg())
    assert not (tmp_path / "splits").exists()


def test_missing_manifest_is_a_clear_error(tmp_path, split_cfg):
    with pytest.raises(StageError, match="manifest.json.*convert_json"):
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
