"""Benchmark the preannotate stage: photos/s, and what tracing + writing the polygons costs next to predicting.

Fresh demo photos (the demo generator with another seed, their JSONs removed) are pre-annotated by each
trained model in paths.models_dir, through the stage's own run(). The stage times its parts; the figure that
matters is the ratio of tracing + writing JSON to the model's predict time (preprocess, forward pass,
full-size mask), both measured in the same run (budget: <= 25%). It also checks the drafts: their polygons,
rasterised as convert_json does, against the model's masks (worst per-class IoU), and counts vertices.

    .venv/bin/python bench/preannotate.py                       # after `make demo` (needs trained models)
    .venv/bin/python bench/preannotate.py --photos 24 --models paddle
    .venv/bin/python bench/preannotate.py paths.models_dir=/tmp/models   # any params override after the flags
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from demo_data.doves import write_dataset  # noqa: E402
from stages import preannotate  # noqa: E402
from stages.common.config import load_params  # noqa: E402
from stages.data.images import read_rgb  # noqa: E402
from stages.data.labels import read_labels  # noqa: E402
from stages.labelme.polygons import worst_iou  # noqa: E402
from stages.labelme.shapes import shapes_to_label  # noqa: E402
from stages.models.inference_model import Predictor  # noqa: E402
from stages.prediction.masks import predict_masks  # noqa: E402


def check_drafts(photos: Path, model_dir: Path, labels) -> tuple[float, float]:
    """(worst per-class IoU of the drafts rasterised vs the model's masks, mean vertices per photo)."""
    predictor = Predictor(model_dir, cpu_threads=1)
    worst, vertices, count = 1.0, 0, 0
    for json_path in sorted(photos.glob("*.json")):
        shapes = json.loads(json_path.read_text())["shapes"]
        rgb = read_rgb(json_path.with_suffix(".jpg"))
        mask = predict_masks(predictor, [rgb])[0]
        worst = min(worst, worst_iou(shapes_to_label(mask.shape, shapes, labels.id_of), mask))
        vertices += sum(len(shape["points"]) for shape in shapes)
        count += 1
    return worst, vertices / max(count, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=24, help="fresh demo photos (default 24)")
    parser.add_argument("--seed", type=int, default=7, help="demo generator seed (the bundled set is seed 0)")
    parser.add_argument("--models", nargs="*", help="model folders (default: every one in paths.models_dir)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per model; the fastest counts")
    parser.add_argument("overrides", nargs="*", help="params overrides, e.g. paths.models_dir=/tmp/models")
    args = parser.parse_args()
    base = load_params(args.overrides, REPO_ROOT)
    models_dir = Path(base.paths.models_dir)
    names = (
        args.models or sorted(p.name for p in models_dir.iterdir() if (p / "meta.json").is_file())
        if models_dir.is_dir()
        else []
    )
    if not names:
        sys.exit(f"no trained model in {models_dir}: run `make demo` (or pass paths.models_dir=...) first")
    labels = read_labels(base.data.labels)

    with tempfile.TemporaryDirectory() as work:
        photos = Path(work) / "photos"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            write_dataset(photos, args.photos, args.seed)
        for path in photos.glob("*.json"):
            path.unlink()  # the generator's own annotations: a person's, which preannotate leaves alone
        sizes = [read_rgb(path).shape[:2] for path in sorted(photos.glob("*.jpg"))]
        print(f"{len(sizes)} fresh demo photos (seed {args.seed}), {min(sizes)[0]}-{max(sizes)[0]} px high")
        for name in names:
            best = None
            for _ in range(args.repeat):
                cfg = load_params(
                    [
                        *args.overrides,
                        f"preannotate.input_dir={photos}",
                        f"preannotate.model={name}",
                        f"preannotate.output_dir={Path(work) / 'out'}",
                        "preannotate.overwrite=true",
                        "preannotate.page_photos=0",
                    ],
                    REPO_ROOT,
                )
                started = time.perf_counter()
                with contextlib.redirect_stderr(io.StringIO()):
                    result = preannotate.run(cfg)
                wall = time.perf_counter() - started
                if best is None or wall < best[0]:
                    best = (wall, result["seconds"])
            wall, seconds = best
            worst, vertices = check_drafts(photos, models_dir / name, labels)
            count = len(sizes)
            print(
                f"model {name}: {count / wall:5.2f} photos/s over the whole command (model loading included), "
                f"{count / (seconds['predict'] + seconds['score'] + seconds['trace_and_write']):5.2f} photos/s "
                f"in the loop"
            )
            print(
                f"  predict {seconds['predict']:6.2f} s   score {seconds['score']:5.2f} s   trace + write JSON "
                f"{seconds['trace_and_write']:5.2f} s   ratio trace/predict: "
                f"{seconds['trace_and_write'] / seconds['predict']:.1%} (budget 25%)"
            )
            print(
                f"  drafts vs the model's masks: worst per-class IoU {worst:.4f} (bound "
                f"{float(cfg.preannotate.min_iou)}), {vertices:.0f} vertices per photo at tolerance "
                f"{float(cfg.preannotate.tolerance_px)} px"
            )


if __name__ == "__main__":
    main()
