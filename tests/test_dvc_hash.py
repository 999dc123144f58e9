"""stages.data.dvc_hash against real `dvc add`: the same md5, size and file count DVC records."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from stages.data.dvc_hash import dvc_md5, lock_entry

from dvc_helpers import env


def test_folder_and_file_hashes_equal_dvcs(tmp_path):
    data = tmp_path / "data"
    (data / "sub" / "deeper").mkdir(parents=True)
    (data / "a.txt").write_bytes(b"windows\r\nline ends\r\n")  # DVC 3 hashes bytes as they are
    (data / "sub" / "Ü nicode.txt").write_text("é", encoding="utf-8")
    (data / "sub" / "deeper" / "big.bin").write_bytes(np.random.default_rng(0).bytes(3_000_000))
    (data / "sub" / "empty").write_bytes(b"")
    (data / "b.txt").write_text("b")
    (tmp_path / "one.txt").write_bytes(b"one\r\n")
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, env=env(), check=True)
    subprocess.run([dvc, "add", "-q", "data", "one.txt"], cwd=tmp_path, env=env(), check=True, capture_output=True)
    folder, file = (yaml.safe_load((tmp_path / f"{name}.dvc").read_text())["outs"][0] for name in ("data", "one.txt"))

    assert lock_entry(data) == {"md5": folder["md5"], "size": folder["size"], "nfiles": folder["nfiles"]}
    assert dvc_md5(data) == folder["md5"] and folder["md5"].endswith(".dir")
    assert lock_entry(tmp_path / "one.txt") == {"md5": file["md5"], "size": file["size"]}
