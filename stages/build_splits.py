"""build_splits: seeded, disjoint train/val/test lists in PaddleSeg's format, stratified by class presence.

Reads convert_json's manifest; writes <data.splits_dir>/{train,val,test}.txt (lines relative to
data.processed_dir) and summary.json (counts and class pixel share per split).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from stages.common.config import StageError, stage_main
from stages.common.outputs import atomic_dir
from stages.data.labels import BACKGROUND_NAME, IGNORE_NAME
from stages.data.split_lists import SPLIT_NAMES, format_line, image_file_names

MANIFEST_NAME = "manifest.json"


def read_manifest(processed_dir: Path) -> dict[str, dict[str, int]]:
    """stem -> {class name: pixel count} from convert_json's manifest."""
    path = processed_dir / MANIFEST_NAME
    if not path.is_file():
        raise StageError(f"{path}: manifest not found; run convert_json first")
    try:
        samples = json.loads(path.read_text(encoding="utf-8"))["samples"]
        return {s["stem"]: {k: int(v) for k, v in s["class_pixels"].items()} for s in samples}
    except (ValueError, KeyError, TypeError) as err:
        raise StageError(f"{path}: not a convert_json manifest ({err})") from None


def check_ratios(ratios: dict[str, float]) -> None:
    if any(r < 0 for r in ratios.values()) or abs(sum(ratios.values()) - 1) > 1e-6:
        raise StageError(f"build_splits ratios must be >= 0 and sum to 1, got {ratios}")


def assign_splits(strata: dict[str, list[str]], ratios: dict[str, float], seed: int) -> dict[str, list[str]]:
    """Shuffle each stratum, then deal samples out one by one to the split furthest behind its ratio.

    Dealing over the strata in turn keeps every stratum's share close to the ratios, and the totals
    within one sample of them.
    """
    rng = random.Random(seed)
    ordered = []
    for key in sorted(strata):
        members = sorted(strata[key])
        rng.shuffle(members)
        ordered.extend(members)
    splits = {name: [] for name in ratios}
    for dealt, stem in enumerate(ordered, start=1):
        behind = max(ratios, key=lambda name: ratios[name] * dealt - len(splits[name]))
        splits[behind].append(stem)
    return {name: sorted(stems) for name, stems in splits.items()}


def pixel_share(stems: list[str], class_pixels: dict[str, dict[str, int]]) -> dict[str, float]:
    totals: dict[str, int] = {}
    for stem in stems:
        for name, count in class_pixels[stem].items():
            totals[name] = totals.get(name, 0) + count
    grand = sum(totals.values()) or 1
    return {name: round(count / grand, 6) for name, count in sorted(totals.items())}


def run(cfg) -> dict:
    processed_dir = Path(cfg.data.processed_dir)
    splits_dir = Path(cfg.data.splits_dir)
    options = cfg.build_splits
    ratios = {name: float(options[name]) for name in SPLIT_NAMES}
    check_ratios(ratios)
    class_pixels = read_manifest(processed_dir)
    image_files = image_file_names(json.loads((processed_dir / MANIFEST_NAME).read_text(encoding="utf-8")))
    lines = {stem: format_line(stem, options.separator, image_files[stem]) for stem in class_pixels}

    strata: dict[str, list[str]] = {}
    for stem, pixels in class_pixels.items():
        present = sorted(n for n, c in pixels.items() if c > 0 and n not in (BACKGROUND_NAME, IGNORE_NAME))
        strata.setdefault("+".join(present) or "(background only)", []).append(stem)
    splits = assign_splits(strata, ratios, int(options.seed))
    empty = [name for name, stems in splits.items() if not stems]
    if empty:
        raise StageError(f"{len(class_pixels)} samples in {processed_dir} with ratios {ratios} leave the "
                         f"{', '.join(empty)} split(s) empty; add samples or change the ratios")

    summary = {
        "root": str(processed_dir),
        "separator": options.separator,
        "seed": int(options.seed),
        "ratios": ratios,
        "strata": {key: len(stems) for key, stems in sorted(strata.items())},
        "counts": {name: len(stems) for name, stems in splits.items()},
        "class_pixel_share": {name: pixel_share(stems, class_pixels) for name, stems in splits.items()},
    }
    with atomic_dir(splits_dir) as tmp:
        for name, stems in splits.items():
            (tmp / f"{name}.txt").write_text("".join(lines[s] + "\n" for s in stems), encoding="utf-8")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return {"splits_dir": str(splits_dir), **{k: summary[k] for k in ("counts", "strata")}}


if __name__ == "__main__":
    stage_main(run)
