"""build_splits: seeded, disjoint train/val/test lists in PaddleSeg's format, stratified by class presence.

Reads convert_json's manifest; writes <data.splits_dir>/{train,val,test}.txt (lines relative to
data.processed_dir) and summary.json (counts and class pixel share per split).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from stages.common.config import StageError, stage_main
from stages.common.outputs import atomic_dir
from stages.data.labels import BACKGROUND_NAME, IGNORE_NAME
from stages.data.split_lists import SPLIT_NAMES, format_line, image_file_names

MANIFEST_NAME = "manifest.json"


def read_manifest(processed_dir: Path) -> tuple[dict[str, dict[str, int]], list[str]]:
    """(stem -> {class name: pixel count}, the labels file's class names) from convert_json's manifest."""
    path = processed_dir / MANIFEST_NAME
    if not path.is_file():
        raise StageError(f"{path}: manifest not found; run convert_json first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        class_pixels = {s["stem"]: {k: int(v) for k, v in s["class_pixels"].items()} for s in manifest["samples"]}
    except (ValueError, KeyError, TypeError) as err:
        raise StageError(f"{path}: not a convert_json manifest ({err})") from None
    names = manifest.get("class_names") or sorted({name for pixels in class_pixels.values() for name in pixels})
    return class_pixels, list(names)


def check_ratios(ratios: dict[str, float]) -> None:
    if any(r < 0 for r in ratios.values()) or abs(sum(ratios.values()) - 1) > 1e-6:
        raise StageError(f"build_splits ratios must be >= 0 and sum to 1, got {ratios}")
    empty = [name for name, ratio in ratios.items() if ratio == 0]
    if empty:  # the trainers validate on val, predict and report score test
        raise StageError(
            f"build_splits.{empty[0]}=0 would leave the {empty[0]} split empty, and every stage "
            f"after build_splits needs all three; give it a share, e.g. build_splits.{empty[0]}=0.15 "
            "(and lower the others so they sum to 1)"
        )


def check_enough_samples(count: int, ratios: dict[str, float], processed_dir: Path) -> None:
    if count < len(ratios):
        raise StageError(
            f"{processed_dir}: {count} annotated photo(s), but the {', '.join(ratios)} splits need "
            f"at least one each: annotate {len(ratios) - count} more"
        )


def assign_splits(strata: dict[str, list[str]], ratios: dict[str, float], seed: int) -> dict[str, list[str]]:
    """Shuffle each stratum, then deal samples out one by one to the split furthest behind its ratio.

    Dealing over the strata in turn keeps every stratum's share close to the ratios, and the totals
    within one sample of them. When only as many samples are left as splits with a ratio > 0 still
    empty, they go to those splits: 3 samples at 0.7/0.15/0.15 make 1/1/1, not 2/1/0.
    """
    rng = random.Random(seed)
    ordered = []
    for key in sorted(strata):
        members = sorted(strata[key])
        rng.shuffle(members)
        ordered.extend(members)
    splits = {name: [] for name in ratios}
    for dealt, stem in enumerate(ordered, start=1):
        waiting = [name for name in ratios if ratios[name] > 0 and not splits[name]]
        candidates = waiting if len(ordered) - dealt + 1 <= len(waiting) else list(ratios)
        behind = max(candidates, key=lambda name: ratios[name] * dealt - len(splits[name]))
        splits[behind].append(stem)
    return {name: sorted(stems) for name, stems in splits.items()}


def classes_not_in_train(
    splits: dict[str, list[str]], class_pixels: dict[str, dict[str, int]], class_names: list[str]
) -> dict[str, list[str]]:
    """Class name -> the splits that hold its pixels, for every class with no pixels in the train split."""
    unseen = {}
    for name in class_names:
        if name in (BACKGROUND_NAME, IGNORE_NAME):
            continue
        holding = [
            split for split, stems in splits.items() if any(class_pixels[stem].get(name, 0) > 0 for stem in stems)
        ]
        if "train" not in holding:
            unseen[name] = holding
    return unseen


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
    class_pixels, class_names = read_manifest(processed_dir)
    check_enough_samples(len(class_pixels), ratios, processed_dir)
    image_files = image_file_names(json.loads((processed_dir / MANIFEST_NAME).read_text(encoding="utf-8")))
    lines = {stem: format_line(stem, options.separator, image_files[stem]) for stem in class_pixels}

    strata: dict[str, list[str]] = {}
    for stem, pixels in class_pixels.items():
        present = sorted(n for n, c in pixels.items() if c > 0 and n not in (BACKGROUND_NAME, IGNORE_NAME))
        strata.setdefault("+".join(present) or "(background only)", []).append(stem)
    splits = assign_splits(strata, ratios, int(options.seed))
    unseen = classes_not_in_train(splits, class_pixels, class_names)
    if unseen:
        where = [f"{name} ({'only in ' + '/'.join(held) if held else 'in no photo'})" for name, held in unseen.items()]
        print(
            f"build_splits: warning: {len(unseen)} class(es) have no pixels in the train split, so the models "
            f"cannot learn them: {', '.join(where)}",
            file=sys.stderr,
        )

    summary = {
        "root": str(processed_dir),
        "separator": options.separator,
        "seed": int(options.seed),
        "ratios": ratios,
        "strata": {key: len(stems) for key, stems in sorted(strata.items())},
        "counts": {name: len(stems) for name, stems in splits.items()},
        "class_pixel_share": {name: pixel_share(stems, class_pixels) for name, stems in splits.items()},
        "classes_not_in_train": list(unseen),  # in the labels file's order
    }
    with atomic_dir(splits_dir) as tmp:
        for name, stems in splits.items():
            (tmp / f"{name}.txt").write_text("".join(lines[s] + "\n" for s in stems), encoding="utf-8")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return {"splits_dir": str(splits_dir), **{k: summary[k] for k in ("counts", "strata")}}


if __name__ == "__main__":
    stage_main(run)
