"""train_paddleseg's checkpoints, in PaddleSeg's layout under checkpoints/paddleseg/: ``iter_<N>/model.pdparams``
+ ``model.pdopt`` and ``best_model/``, so ``paddleseg.utils.resume`` and ``load_entire_model`` read them
too; ``state.json`` beside them holds what the loop needs to continue (stages.training.paddleseg_loop),
and ``average.pdparams`` the weight average. A killed run, rerun with the same inputs, continues from its
last checkpoint; one made from other inputs is cleared.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import paddle

from stages.common.outputs import atomic_dir, write_json_atomic
from stages.training.paddleseg_config import STAGE, Parts, build
from stages.training.weight_average import WeightAverage

STATE_NAME = "state.json"
AVERAGE_NAME = "average.pdparams"  # the weight average, beside an iteration's model.pdparams
BEST_DIR = "best_model"
ITER_PREFIX = "iter_"


def new_state(**extra) -> dict:
    return {
        "iter": 0,
        "history": [],
        "best_val_mIoU": -1.0,
        "best_iter": 0,
        "best_scores": None,
        "train_seconds": 0.0,
        "train_step_seconds": 0.0,
        "train_images": 0,
        "completed": False,
        **extra,
    }


def checkpoint_iters(checkpoint_dir: Path) -> list[int]:
    """Iterations of the complete checkpoints in ``checkpoint_dir``, oldest first."""
    found = []
    for folder in checkpoint_dir.glob(f"{ITER_PREFIX}*"):
        suffix = folder.name[len(ITER_PREFIX) :]
        if suffix.isdigit() and (folder / STATE_NAME).is_file():
            found.append(int(suffix))
    return sorted(found)


def latest_state(checkpoint_dir: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint folder and its state, or None."""
    iters = checkpoint_iters(checkpoint_dir)
    if not iters:
        return None
    folder = checkpoint_dir / f"{ITER_PREFIX}{iters[-1]}"
    try:
        return folder, json.loads((folder / STATE_NAME).read_text())
    except ValueError:
        return None


def resumable_state(checkpoint_dir: Path, expected_fingerprint: str, clear: bool = True) -> tuple[Path, dict] | None:
    """The newest checkpoint when it is unfinished and made from the same inputs; else None, and with
    ``clear`` the folder is emptied (stale iterations would break keep_checkpoint_max and the best model)."""
    found = latest_state(checkpoint_dir)
    if found is not None:
        folder, state = found
        if state.get("fingerprint") == expected_fingerprint and not state.get("completed"):
            return folder, state
        if clear:
            reason = (
                "finished" if state.get("fingerprint") == expected_fingerprint else "made from other params/data/code"
            )
            print(f"{STAGE}: {checkpoint_dir} holds a {reason} run; training from scratch")
    if clear and checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)
    return None


def build_resumed(document: dict, resumed: tuple[Path, dict] | None, cache_bytes: int) -> Parts:
    """PaddleSeg's parts built from the config, with the checkpoint's weights and optimizer state if resuming."""
    parts = build(document, cache_bytes)
    if resumed:
        folder, state = resumed
        restore(parts, folder, state["param_names"])
        print(f"{STAGE}: resuming after iteration {state['iter']} of {parts.config.iters} from {folder}")
    return parts


def save_checkpoint(
    checkpoint_dir: Path, parts: Parts, state: dict, keep: int, average: WeightAverage | None = None
) -> Path:
    """Write iter_<N>/ in one rename (a kill never leaves half of one), then drop all but the newest ``keep``."""
    folder = checkpoint_dir / f"{ITER_PREFIX}{state['iter']}"
    state["param_names"] = parameter_names(parts.model)
    with atomic_dir(folder) as tmp:
        paddle.save(parts.model.state_dict(), str(tmp / "model.pdparams"))
        paddle.save(parts.optimizer.state_dict(), str(tmp / "model.pdopt"))  # includes the LR schedule
        if average is not None and average.average is not None:
            paddle.save(average.average, str(tmp / AVERAGE_NAME))
            state["average_steps"] = average.steps
        write_json_atomic(tmp / STATE_NAME, state)
    if keep > 0:
        for old in checkpoint_iters(checkpoint_dir)[:-keep]:
            shutil.rmtree(checkpoint_dir / f"{ITER_PREFIX}{old}", ignore_errors=True)
    return folder


def save_best(checkpoint_dir: Path, parts: Parts, scores: dict, iteration: int) -> None:
    with atomic_dir(checkpoint_dir / BEST_DIR) as tmp:
        paddle.save(parts.model.state_dict(), str(tmp / "model.pdparams"))
        write_json_atomic(tmp / "score.json", {"iter": iteration, **scores})


def parameter_names(model: paddle.nn.Layer) -> dict[str, str]:
    """Structured name -> Paddle's unique name of each parameter (optimizer states are keyed by the latter)."""
    return {structured: param.name for structured, param in model.named_parameters()}


def rename_optimizer_state(state: dict, renames: dict[str, str]) -> dict:
    """Optimizer state keyed by other unique parameter names: ``<name>_moment1_0`` etc. get the new name."""
    old_names = sorted(renames, key=len, reverse=True)  # "conv2d_57.w_0" before "conv2d_5.w_0"

    def new_key(key: str) -> str:
        for old in old_names:
            if key == old or key.startswith(old + "_"):
                return renames[old] + key[len(old) :]
        return key

    return {
        new_key(key): rename_optimizer_state(value, renames) if isinstance(value, dict) else value
        for key, value in state.items()
    }


def restore(parts: Parts, folder: Path, saved_names: dict[str, str]) -> None:
    """Load a checkpoint into freshly built parts. Paddle names parameters by a per-process counter, so
    the optimizer state is matched to the parameters through their structured names."""
    parts.model.set_state_dict(paddle.load(str(folder / "model.pdparams")))
    current = parameter_names(parts.model)
    renames = {saved_names[key]: name for key, name in current.items() if key in saved_names}
    parts.optimizer.set_state_dict(rename_optimizer_state(paddle.load(str(folder / "model.pdopt")), renames))


def resumed_average(checkpoint_dir: Path, state: dict, decay: float) -> WeightAverage:
    """The weight average saved with the checkpoint the run resumes from (a fresh one when there is none)."""
    saved = checkpoint_dir / f"{ITER_PREFIX}{state['iter']}" / AVERAGE_NAME
    if decay and state.get("average_steps") and saved.is_file():
        return WeightAverage(decay, paddle.load(str(saved)), int(state["average_steps"]))
    return WeightAverage(decay)


def best_weights_file(checkpoint_dir: Path) -> Path:
    return checkpoint_dir / BEST_DIR / "model.pdparams"


def mark_completed(checkpoint_dir: Path, state: dict) -> None:
    """A rerun now trains afresh instead of "resuming" a finished run."""
    state["completed"] = True
    write_json_atomic(checkpoint_dir / f"{ITER_PREFIX}{state['iter']}" / STATE_NAME, state)
