"""train_paddle's checkpoint: the training state after every epoch, in checkpoints/paddle/, so a killed run,
rerun with the same inputs, continues where it stopped.

``state.json`` holds the history, the best validation so far, timings, the MLflow run id and the
fingerprint of the inputs (stages.training.dovenet_inputs); beside it the weights, the optimizer (with its
LR schedule), the best weights and the weight average.
"""

from __future__ import annotations

import json
from pathlib import Path

import paddle

from stages.common.outputs import atomic_dir, write_json_atomic
from stages.training.weight_average import WeightAverage

STATE_NAME = "state.json"


def new_state(fingerprint_: str, run_id: str) -> dict:
    return {
        "fingerprint": fingerprint_,
        "run_id": run_id,
        "history": [],
        "best_val_mIoU": -1.0,
        "best_epoch": 0,
        "train_seconds": 0.0,
        "train_step_seconds": 0.0,
        "train_images": 0,
        "completed": False,
    }


def load_checkpoint(checkpoint_dir: Path, expected_fingerprint: str) -> dict | None:
    """The saved training state when it is unfinished and made from the same inputs, else None."""
    state_file = checkpoint_dir / STATE_NAME
    if not state_file.is_file():
        return None
    try:
        state = json.loads(state_file.read_text())
    except ValueError:
        print(f"{state_file}: unreadable checkpoint state; training from scratch")
        return None
    if state.get("fingerprint") != expected_fingerprint:
        print(f"{checkpoint_dir}: checkpoint made from other params/data/code; training from scratch")
        return None
    if state.get("completed"):
        return None
    return state


def save_checkpoint(
    checkpoint_dir: Path, weights: dict, optimizer, best_weights: dict | None, average: dict | None, state: dict
) -> None:
    """Everything needed to continue, replaced in one rename so a kill never leaves half a checkpoint."""
    with atomic_dir(checkpoint_dir) as tmp:
        paddle.save(weights, str(tmp / "model.pdparams"))
        paddle.save(optimizer.state_dict(), str(tmp / "optimizer.pdopt"))  # includes the LR schedule
        for name, saved in (("best", best_weights), ("average", average)):
            if saved is not None:
                paddle.save(saved, str(tmp / f"{name}.pdparams"))
        write_json_atomic(tmp / STATE_NAME, state)


def restore(checkpoint_dir: Path, net, optimizer, state: dict, average: WeightAverage) -> WeightAverage:
    """Load the checkpoint into ``net`` and ``optimizer``, its best weights into ``state["_best_weights"]``;
    returns the weight average to continue (``average`` when the checkpoint holds none)."""
    net.set_state_dict(paddle.load(str(checkpoint_dir / "model.pdparams")))
    optimizer.set_state_dict(paddle.load(str(checkpoint_dir / "optimizer.pdopt")))
    state["_best_weights"] = paddle.load(str(checkpoint_dir / "best.pdparams"))
    if (checkpoint_dir / "average.pdparams").is_file():
        average = WeightAverage(
            average.decay, paddle.load(str(checkpoint_dir / "average.pdparams")), int(state.get("average_steps", 0))
        )
    return average


def mark_completed(checkpoint_dir: Path, state: dict) -> None:
    """A rerun now trains afresh instead of "resuming" a finished run."""
    state["completed"] = True
    write_json_atomic(checkpoint_dir / STATE_NAME, state)
