"""docs/scale.md's batch prediction on Spark, run as written on local[*] (two cores: local[2] in CI) and again on
local[2]: 20 photos, four of them bad, segmented with models:/doveseg-segmenter@champion from a real SQLite store.

The masks must be byte-identical to stages.predict's class_id/ PNGs of the same photos; the manifest has one
row per photo, the bad ones failed with the served model's reason; a rerun skips every photo done and redoes
exactly the ones that changed. Bad requests fail in one line before Spark starts or anything is written.
"""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spark_helpers import batch_env, docs_blocks, read_manifest, registered_project, run_bash

pytest.importorskip("pyspark", reason="the spark extra: pip install -e '.[spark]'")


def batch_lines(block: str) -> str:
    """The block's `python -m batch_segment` lines (what a person runs once the extra and Java are installed)."""
    return "\n".join(line for line in block.splitlines() if line.startswith("python -m batch_segment"))


def segment(cwd: Path, tracking_uri: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batch_segment", *args],
        cwd=cwd,
        env=batch_env(tracking_uri),
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """The served model registered (version 1, champion), a folder photos/ of 16 good photos and 4 bad ones,
    predict's masks of the good ones."""
    return registered_project(tmp_path_factory.mktemp("spark"))


@pytest.fixture(scope="module")
def project(registered):
    """The docs' command, as written, in the folder holding photos/."""
    root, tracking_uri = registered["root"], registered["uri"]
    [block] = [block for block in docs_blocks("Batch prediction on Spark") if "make setup-spark" in block]
    command = batch_lines(block)
    assert command == "python -m batch_segment photos/ out/", command
    started = time.perf_counter()
    done = run_bash(command, root, batch_env(tracking_uri))
    print(f"batch_segment, 20 photos, local[*]: {time.perf_counter() - started:.1f} s")
    assert done.returncode == 0, done.stderr[-4000:]
    return {**registered, "first": done}


def test_masks_are_byte_identical_to_predicts_and_each_bad_photo_is_a_row_with_its_reason(project):
    out, bad, predicted = project["root"] / "out", project["bad"], project["predicted"]
    rows = read_manifest(out)
    expected = sorted(path.relative_to(predicted).with_suffix("").as_posix() for path in predicted.rglob("*.png"))
    assert len(expected) == 16 and len(rows) == 20  # readme.txt and .hidden.png are not photos to segment
    ok = {photo: row for photo, row in rows.items() if row["status"] == "ok"}
    assert sorted(Path(photo).with_suffix("").as_posix() for photo in ok) == expected
    for photo, row in ok.items():
        name = Path(photo).with_suffix("").as_posix()
        assert row["mask"] == f"class_id/{name}.png"
        assert (out / row["mask"]).read_bytes() == (predicted / f"{name}.png").read_bytes(), photo
        assert row["model"] == "models:/doveseg-segmenter/1" and row["reason"] is None
        assert sum(row["class_pixels"].values()) == row["width"] * row["height"]
    assert rows["phone/portrait.jpg"]["width"] == 52  # stored sideways, segmented upright (EXIF), as predict does
    assert any(row["class_pixels"].get("dove") for row in ok.values())
    failed = {photo: row for photo, row in rows.items() if row["status"] == "failed"}
    assert set(failed) == set(bad)
    for photo, reason in bad.items():
        assert failed[photo]["reason"].startswith(reason), failed[photo]["reason"]
        assert failed[photo]["mask"] is None
    assert sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and "class_id" not in p.parts
    ) == [
        "manifest.jsonl",
        "summary.json",
    ]  # no temp file, no manifest part left behind
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["photos"], summary["segmented"], summary["failed"], summary["skipped"]) == (20, 16, 4, 0)
    assert summary["model_version"] == "models:/doveseg-segmenter/1"
    last = project["first"].stdout.strip().splitlines()[-1]
    assert re.match(
        r"batch_segment: 20 photos: 16 segmented, 4 failed, 0 already done; [\d.]+ s \([\d.]+ photos/s\)", last
    )
    assert "batch_segment: " in project["first"].stderr  # the progress line


def test_a_rerun_skips_every_photo_done_and_redoes_only_what_changed_on_local_2(project, tmp_path):
    root, out = project["root"], project["root"] / "out"
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*.png")}
    again = segment(root, project["uri"], "photos/", "out/", "--master", "local[2]")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "20 photos: 0 segmented, 0 failed, 20 already done" in again.stdout and "(nothing to do)" in again.stdout
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*.png")} == before
    # a fixed photo, a lost mask, a new photo and a new one over --max-photo-mb: exactly those four are done
    shutil.copyfile(root / "photos" / "dove_00.png", root / "photos" / "empty.jpg")
    (out / "class_id" / "dove_02.png").unlink()
    shutil.copyfile(root / "photos" / "dove_04.png", root / "photos" / "new.png")
    shutil.copyfile(root / "photos" / "big.png", root / "photos" / "big2.png")
    third = segment(root, project["uri"], "photos/", "out/", "--master", "local[2]", "--max-photo-mb", "0.02")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "22 photos: 3 segmented, 1 failed, 18 already done" in third.stdout and "on local[2]" in third.stdout
    rows = read_manifest(out)
    assert len(rows) == 22 and rows["empty.jpg"]["status"] == "ok" and rows["big.png"]["status"] == "ok"
    assert re.fullmatch(r"too large: a file of [\d,]+ bytes; the limit is 20,000 bytes", rows["big2.png"]["reason"])
    assert (out / "class_id" / "empty.png").read_bytes() == (out / "class_id" / "dove_00.png").read_bytes()
    assert (out / "class_id" / "dove_02.png").read_bytes() == (project["predicted"] / "dove_02.png").read_bytes()
    unchanged = [path for path in before if path.name not in ("dove_02.png",)]
    assert all(path.stat().st_mtime_ns == before[path] for path in unchanged)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing/", "out/"], r"batch_segment: error: .*/missing: no such folder"),
        (["nothing/", "out/"], r"batch_segment: error: .*/nothing: no photos to segment \(looked for \.jpg, .*\)"),
        (
            ["clash/", "out/"],
            r"batch_segment: error: .*/clash: photos whose names differ only by suffix .*a\.jpg and a\.png",
        ),
        (
            ["photos/", "out/", "--model", "models:/no-such-model@champion"],
            r"batch_segment: error: model models:/no-such-model@champion: .*",
        ),
        (
            ["photos/", "out/", "--conf", "spark.ui.enabled"],
            r"batch_segment: error: --conf 'spark.ui.enabled': write KEY=VALUE",
        ),
        (["photos/", "out/", "--max-photo-mb", "0"], r"batch_segment: error: --max-photo-mb must be positive, not 0"),
    ],
)
def test_a_bad_request_is_one_line_and_writes_nothing(registered, tmp_path, monkeypatch, capsys, args, message):
    from batch_segment.__main__ import main

    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("no photo here")
    (tmp_path / "clash").mkdir()
    for name in ("a.jpg", "a.png"):
        shutil.copyfile(registered["root"] / "photos" / "dove_00.png", tmp_path / "clash" / name)
    shutil.copytree(registered["root"] / "photos", tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered["uri"])
    assert main(args) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.match(message, lines[0]), lines
    assert not (tmp_path / "out").exists()
