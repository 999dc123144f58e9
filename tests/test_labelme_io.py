"""stages.labelme.annotations' pure parts: which files are annotations, and where an imagePath may point."""

from __future__ import annotations

import os

import pytest

from stages.labelme.annotations import find_annotation_files, resolve_image_path


@pytest.mark.parametrize(
    "image_path, expected",
    [
        ("a.jpg", "raw/sub/a.jpg"),
        ("photos\\a.jpg", "raw/sub/photos/a.jpg"),  # labelme on Windows
        ("../a.jpg", "raw/a.jpg"),  # up, but still inside raw
        ("..\\other\\鸽子_001.jpg", "raw/other/鸽子_001.jpg"),
        ("./x/../a.jpg", "raw/sub/a.jpg"),
    ],
)
def test_relative_paths_inside_raw_are_accepted(tmp_path, image_path, expected):
    path, problem = resolve_image_path(image_path, tmp_path / "raw" / "sub", tmp_path / "raw")
    assert problem is None and path == tmp_path / expected


@pytest.mark.parametrize(
    "image_path, phrase",
    [
        ("/etc/passwd", "is absolute"),
        ("C:\\Users\\me\\a.jpg", "is absolute"),
        ("C:a.jpg", "is absolute"),  # drive-relative: still tied to a drive
        ("\\\\server\\share\\a.jpg", "is absolute"),  # UNC
        ("\\a.jpg", "is absolute"),  # root of the current drive
        ("../../a.jpg", "points outside the raw data folder"),
        ("..\\..\\a.jpg", "points outside the raw data folder"),
        ("../../raw_evil/a.jpg", "points outside the raw data folder"),  # a sibling sharing the prefix
    ],
)
def test_absolute_and_escaping_paths_are_refused(tmp_path, image_path, phrase):
    path, problem = resolve_image_path(image_path, tmp_path / "raw" / "sub", tmp_path / "raw")
    assert path is None and phrase in problem and f"'{image_path}'" in problem


def test_relative_raw_dir_works_from_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, problem = resolve_image_path("..\\a.jpg", "data/raw/sub", "data/raw")
    assert problem is None and path == tmp_path / "data/raw/a.jpg"
    assert resolve_image_path("..\\..\\a.jpg", "data/raw/sub", "data/raw")[0] is None


def test_symlinked_images_inside_raw_are_fine(tmp_path):
    # DVC's symlink cache: the file lives elsewhere, the path the JSON names is inside raw.
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "blob").write_bytes(b"x")
    (tmp_path / "raw").mkdir()
    os.symlink(tmp_path / "cache" / "blob", tmp_path / "raw" / "a.jpg")
    path, problem = resolve_image_path("a.jpg", tmp_path / "raw", tmp_path / "raw")
    assert problem is None and path.read_bytes() == b"x"


def test_annotation_files_are_sorted_recursive_and_skip_hidden(tmp_path):
    for name in [
        "b.json",
        "a/z.JSON",
        "a/b/c.json",
        ".hidden.json",
        ".ipynb_checkpoints/b-checkpoint.json",
        "a/photo.jpg",
        "notes.txt",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    found = [path.relative_to(tmp_path).as_posix() for path in find_annotation_files(tmp_path)]
    assert found == ["a/b/c.json", "a/z.JSON", "b.json"]
