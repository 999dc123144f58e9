"""PaddleSeg's components, trained by doveseg's own loop.

PaddleSeg builds everything from its config (``paddleseg.cvlibs.Config`` + ``SegBuilder``): the model,
the datasets and their transforms, the loss, the optimizer and its LR schedule. This module only runs
them, instead of ``paddleseg.core.train``, because the stage needs what that function cannot give:
MLflow logging at each log interval and evaluation, every PaddleSeg metric on the shared confusion
matrix, the best model and ``keep_checkpoint_max`` honoured across a resume, and a resume that restores
the data order. It also skips work core.train does for nothing here (a FLOPs count and a 1 s sleep at
the end, a host sync per step for each loss).

PaddleSeg's datasets are wrapped (CachedDataset) so that a photo is read and resized to the model's input
size once per run, not once per iteration that draws it; the random transforms still run each time.

Checkpoints use PaddleSeg's layout (``iter_<N>/model.pdparams`` + ``model.pdopt``, ``best_model/``), so
``paddleseg.utils.resume`` and ``load_entire_model`` read them too; ``state.json`` beside them holds what
the loop needs to continue.
"""

from __future__ import annotations

import importlib
import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
import yaml
from omegaconf import OmegaConf
from PIL import Image
from tqdm import tqdm

from stages.common.config import StageError
from stages.common.outputs import atomic_dir, write_json_atomic
from stages.data.images import read_label_png, read_rgb
from stages.evaluation.metrics import ConfusionMatrix
from stages.training import distributed, paddleseg_compat
from stages.training.photo_cache import MB, PhotoCache
from stages.training.summary import epochs
from stages.training.weight_average import WeightAverage

paddleseg_compat.apply()
import paddleseg.transforms as paddleseg_transforms  # noqa: E402  (after the compatibility fixes)
import paddleseg.transforms.functional as paddleseg_functional  # noqa: E402
from paddleseg.core import infer  # noqa: E402
from paddleseg.cvlibs import Config, SegBuilder  # noqa: E402

paddleseg_train = importlib.import_module("paddleseg.core.train")

STATE_NAME = "state.json"
AVERAGE_NAME = "average.pdparams"  # the weight average, beside an iteration's model.pdparams
BEST_DIR = "best_model"
ITER_PREFIX = "iter_"
CACHE_MB = 1024  # default memory budget of a dataset's photo cache, per process
VAL_MAX_SIDE = 1024  # validation scores at each label's size, scaled down to at most this long side


# --- the PaddleSeg config -------------------------------------------------------------------------


def resolve_config(template: str | Path, cfg, extra: dict) -> dict:
    """The PaddleSeg config ``template`` with its ``${...}`` filled from ``cfg`` and ``extra`` (top-level keys)."""
    template = Path(template)
    if not template.is_file():
        raise StageError(f"{template}: PaddleSeg config template not found")
    try:
        document = yaml.safe_load(template.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise StageError(f"{template}: not valid YAML ({err})") from None
    values = OmegaConf.to_container(cfg, resolve=True)
    clash = set(extra) & set(values)
    if clash:
        raise StageError(f"params.yaml has top-level keys {sorted(clash)} that the template's values use")
    root = OmegaConf.create({**values, **extra, "_paddleseg": document})
    try:
        return OmegaConf.to_container(root._paddleseg, resolve=True)
    except Exception as err:  # noqa: BLE001 - omegaconf's interpolation errors share no useful base class
        raise StageError(f"{template}: cannot fill in its ${{...}} values: {err}") from None


def dump_config(document: dict) -> str:
    return yaml.safe_dump(document, sort_keys=False)


@dataclass
class Parts:
    """What SegBuilder makes from one PaddleSeg config."""

    config: Config
    model: paddle.nn.Layer
    train_dataset: paddle.io.Dataset
    val_dataset: paddle.io.Dataset
    optimizer: paddle.optimizer.Optimizer
    losses: dict

    @property
    def lr_scheduler(self):
        return self.optimizer._learning_rate


def build(document: dict, cache_bytes: int = CACHE_MB * MB) -> Parts:
    """Build PaddleSeg's components from a resolved config (Config needs a file, so one is written); its
    datasets cache their photos within ``cache_bytes`` each (see CachedDataset)."""
    with tempfile.TemporaryDirectory(prefix="paddleseg-config-") as folder:
        path = Path(folder) / "config.yml"
        path.write_text(dump_config(document), encoding="utf-8")
        try:
            config = Config(str(path))
            builder = SegBuilder(config)
            return Parts(
                config,
                builder.model,
                cached(builder.train_dataset, cache_bytes),
                cached(builder.val_dataset, cache_bytes),
                builder.optimizer,
                builder.loss,
            )
        except (AssertionError, RuntimeError, ValueError, FileNotFoundError, KeyError, TypeError) as err:
            raise StageError(f"PaddleSeg could not build from the config: {err}") from None


def normalisation(document: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the validation Normalize transform (PaddleSeg's default 0.5), as 3 channels."""
    for transform in document.get("val_dataset", {}).get("transforms", []):
        if transform.get("type") == "Normalize":
            mean, std = transform.get("mean", [0.5]), transform.get("std", [0.5])
            return tuple(float(v) for v in np.broadcast_to(mean, 3)), tuple(float(v) for v in np.broadcast_to(std, 3))
    return (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)  # no Normalize: the model sees raw 0..255


# --- data -----------------------------------------------------------------------------------------


def cached(dataset, cache_bytes: int):
    """``dataset`` as a CachedDataset when it is a PaddleSeg Dataset of RGB photos; anything else as it is."""
    if (
        isinstance(dataset, CachedDataset)
        or not hasattr(dataset, "file_list")
        or getattr(dataset, "img_channels", 3) != 3
        or not hasattr(dataset, "transforms")
    ):
        return dataset
    return CachedDataset(dataset, cache_bytes)


def is_fixed_resize(op) -> bool:
    return isinstance(op, paddleseg_transforms.Resize) and op.interp != "RANDOM"


class CachedDataset(paddle.io.Dataset):
    """A PaddleSeg Dataset whose leading Resize transforms run once per photo (stages.training.photo_cache);
    the transforms after them (random scaling, crops, flips, colour, Normalize) run on every use, as in
    PaddleSeg. Items are PaddleSeg's: ``img`` CHW float32, ``label``, ``trans_info``.

    Reading is ours: the photo as seen (RGB, EXIF applied, as PaddleSeg's cv2.imread gives it), a JPEG
    decoded at a reduced scale when a Resize is about to shrink it anyway; the resized photo is kept as
    bytes (rounded: PaddleSeg's RandomDistort truncates to bytes anyway). Validation labels stay at the
    photo's size, as PaddleSeg scores them, but at most VAL_MAX_SIDE on the long side: a 12 MP label is
    scaled down (nearest) to that, and the class scores are resized back to it instead of to 12 MP
    (C x 12 M floats, 1 GB with 21 classes, and seconds per photo). Small photos are scored as before.
    """

    def __init__(self, dataset, cache_bytes: int):
        super().__init__()
        self.dataset = dataset
        ops = list(dataset.transforms.transforms)
        fixed = 0
        while fixed < len(ops) and is_fixed_resize(ops[fixed]):
            fixed += 1
        self.fixed_ops, self.random_ops = ops[:fixed], ops[fixed:]
        self.validation = dataset.mode != "train"
        self.cache = PhotoCache(self.base_item, len(dataset), cache_bytes)

    def __getattr__(self, name):  # num_classes, ignore_index, file_list, mode... of the PaddleSeg dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)

    def base_item(self, index: int) -> tuple:
        """(image HxWx3 uint8 after the leading Resizes, label, trans_info) of one photo."""
        image_path, label_path = self.dataset.file_list[index]
        at_least = tuple(self.fixed_ops[0].target_size) if self.fixed_ops else None
        label = read_label_png(label_path)
        data = {
            "img": read_rgb(image_path, at_least).astype(np.float32),
            "label": label,
            "trans_info": [],
            "gt_fields": [] if self.validation else ["label"],
        }
        for op in self.fixed_ops:
            data = op(data)
        image = np.clip(np.rint(data["img"]), 0, 255).astype(np.uint8)
        trans_info = list(data["trans_info"])
        if self.validation and self.fixed_ops:
            if max(label.shape) > VAL_MAX_SIDE:
                scale = VAL_MAX_SIDE / max(label.shape)
                size = (max(1, round(label.shape[1] * scale)), max(1, round(label.shape[0] * scale)))
                label = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
            # scores go back to the label's size (the photo was maybe decoded smaller than it)
            trans_info[0] = (trans_info[0][0], tuple(label.shape))
        else:
            label = data["label"]
        return image, np.ascontiguousarray(label), tuple(trans_info)

    def fill_cache(self, what: str) -> dict:
        size = "x".join(str(side) for side in self.fixed_ops[-1].target_size) if self.fixed_ops else "full size"
        return self.cache.fill(f"{what} at {size}")

    def __getitem__(self, index: int) -> dict:
        image, label, trans_info = self.cache.get(index)
        data = {
            "img": image.astype(np.float32),
            "label": label.copy(),
            "trans_info": list(trans_info),
            "gt_fields": [] if self.validation else ["label"],
        }
        for op in self.random_ops:
            data = op(data)
        if data["img"].ndim == 2:
            data["img"] = data["img"][..., np.newaxis]
        data["img"] = np.transpose(data["img"], (2, 0, 1))
        if self.validation:
            data["label"] = data["label"][np.newaxis, :, :]
        elif self.dataset.edge:
            data["edge"] = paddleseg_functional.mask_to_binary_edge(
                data["label"], radius=2, num_classes=self.dataset.num_classes
            )
        return data


class IterationBatches(paddle.io.BatchSampler):
    """Sample indices for iterations ``start + 1 .. iters``: a fresh shuffle per epoch, seeded by
    (seed, epoch), full batches only (as PaddleSeg's drop_last). A resumed run sees the same batches as
    an uninterrupted one."""

    def __init__(self, num_samples: int, batch_size: int, iters: int, start: int = 0, seed: int = 0):
        self.num_samples, self.batch_size = num_samples, batch_size
        self.iters, self.start, self.seed = iters, start, seed
        self.per_epoch = num_samples // batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for iteration in range(self.start, self.iters):
            epoch, position = divmod(iteration, self.per_epoch)
            order = np.random.default_rng((self.seed, epoch)).permutation(self.num_samples)
            yield order[position * self.batch_size : (position + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        return max(0, self.iters - self.start)


def collate(items: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of PaddleSeg samples as two batches (its other keys are not needed to train)."""
    images = np.stack([item["img"] for item in items]).astype("float32")
    labels = np.stack([item["label"] for item in items]).astype("int64")
    return images, labels


# --- training -------------------------------------------------------------------------------------


def train_step(parts: Parts, images: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
    """One optimisation step as PaddleSeg's train does it; returns the (detached) loss, unsynced.
    ``parts.model`` may be wrapped in paddle.DataParallel (its gradients are averaged in backward())."""
    logits = parts.model(images)
    network = getattr(parts.model, "_layers", parts.model)
    if hasattr(network, "loss_computation"):  # models that combine their own losses
        loss_list = network.loss_computation(logits, parts.losses, {"img": images, "label": labels})
    else:
        loss_list = paddleseg_train.loss_computation(logits, labels, None, parts.losses)
    loss = sum(loss_list)
    loss.backward()
    parts.optimizer.step()
    scheduler = parts.lr_scheduler
    if isinstance(scheduler, paddle.optimizer.lr.ReduceOnPlateau):
        scheduler.step(loss)
    elif isinstance(scheduler, paddle.optimizer.lr.LRScheduler):
        scheduler.step()
    parts.model.clear_gradients()
    return loss.detach().reshape([])


def evaluate(model: paddle.nn.Layer, dataset, num_classes: int, ignore_index: int = 255) -> dict:
    """PaddleSeg's evaluation (core.infer.inference: prediction resized back to each label's size),
    scored with the shared confusion matrix (stages.evaluation.metrics: mIoU over the classes present)."""
    matrix = ConfusionMatrix(num_classes, ignore_index)
    model.eval()
    with paddle.no_grad():
        for index in range(len(dataset)):
            item = dataset[index]
            image = paddle.to_tensor(item["img"][np.newaxis])
            pred, _ = infer.inference(model, image, trans_info=item["trans_info"])
            matrix.update(pred.numpy(), item["label"])
    model.train()
    return matrix.scores()


# --- checkpoints ----------------------------------------------------------------------------------


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


def seed_everything(seed: int) -> None:
    """PaddleSeg's random transforms draw from Python's and NumPy's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    paddle.seed(seed)


# --- the loop -------------------------------------------------------------------------------------


@dataclass
class LoopSettings:
    iters: int
    batch_size: int
    eval_interval: int
    log_interval: int
    keep_checkpoint_max: int
    num_workers: int = 0
    seed: int = 0
    weight_average: float = 0.0  # decay of the moving average that is validated and kept (0: the raw weights)


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


def train(
    parts: Parts,
    settings: LoopSettings,
    checkpoint_dir: Path,
    state: dict,
    on_log: Callable[[int, dict], None] = lambda step, values: None,
    on_eval: Callable[[int, dict, dict], None] = lambda step, scores, row: None,
) -> dict:
    """Train from ``state['iter']`` to ``settings.iters``: validate, keep the best model and checkpoint every
    ``eval_interval`` iterations and at the end. ``on_log(iter, {"train/loss", "train/lr"})`` runs every
    ``log_interval``; ``on_eval(iter, scores, history_row)`` after each validation. Returns the state.

    Under Paddle's launcher (stages.training.distributed) every process runs this: each trains on its share of
    every global batch of ``settings.batch_size`` and DataParallel averages the gradients; only the main
    process keeps the weight average, validates, checkpoints and calls back (the others wait for it on the launcher's store, and
    return right after the last step)."""
    start = int(state["iter"])
    if start >= settings.iters:
        return state
    num_classes = parts.train_dataset.num_classes
    per_epoch = len(parts.train_dataset) // settings.batch_size
    main = distributed.is_main_process()
    # the augmentations of a resumed run (and of each process) differ, its batches do not
    seed_everything(settings.seed + start + 100_003 * distributed.rank())
    for dataset, what in ((parts.train_dataset, "training photos"), (parts.val_dataset, "validation photos")):
        if hasattr(dataset, "fill_cache") and (main or dataset is parts.train_dataset):  # the main one validates
            dataset.fill_cache(what)
    sampler = distributed.RankBatches(
        IterationBatches(len(parts.train_dataset), settings.batch_size, settings.iters, start, settings.seed)
    )
    loader = paddle.io.DataLoader(
        parts.train_dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=settings.num_workers,
        return_list=True,
        use_shared_memory=settings.num_workers > 0,
    )
    average = resumed_average(checkpoint_dir, state, settings.weight_average) if main else None
    model = parts.model
    if parts.config.to_static_training:
        model = paddle.jit.to_static(model)
    distributed.barrier()  # every process built and restored its parts before DataParallel syncs them
    model = distributed.data_parallel(model)
    train_parts = Parts(parts.config, model, parts.train_dataset, parts.val_dataset, parts.optimizer, parts.losses)
    model.train()

    log_sum, log_count = paddle.zeros([]), 0  # since the last log line
    eval_sum, eval_count = paddle.zeros([]), 0  # since the last validation
    step_seconds, images = 0.0, 0
    started = time.perf_counter()
    iteration = start
    bar = tqdm(total=settings.iters, initial=start, desc="train_paddleseg", unit="iter", disable=not main)
    for images_np, labels_np in loader:
        step_started = time.perf_counter()
        loss = train_step(train_parts, images_np, labels_np)
        iteration += 1
        log_sum, log_count = log_sum + loss, log_count + 1
        eval_sum, eval_count = eval_sum + loss, eval_count + 1
        step_seconds += time.perf_counter() - step_started
        images += settings.batch_size
        bar.update(1)

        if not main:
            if iteration % settings.eval_interval == 0 and iteration < settings.iters:
                distributed.barrier()  # while the main process validates and checkpoints
            continue
        if average.decay:
            average.update(parts.model)

        if iteration % settings.log_interval == 0 or iteration == settings.iters:
            mean_loss = float(log_sum) / log_count
            on_log(iteration, {"train/loss": mean_loss, "train/lr": float(parts.optimizer.get_lr())})
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            log_sum, log_count = paddle.zeros([]), 0

        if iteration % settings.eval_interval == 0 or iteration == settings.iters:
            average.swap_in(parts.model)  # validated, and kept when best, in place of the raw weights
            scores = evaluate(parts.model, parts.val_dataset, num_classes, parts.val_dataset.ignore_index)
            row = {
                "epoch": epochs(iteration, per_epoch),
                "iter": iteration,
                "train_loss": float(eval_sum) / eval_count,
                "val_mIoU": scores["mIoU"],
                "val_acc": scores["acc"],
            }  # summary.PLOT_COLUMNS
            eval_sum, eval_count = paddle.zeros([]), 0
            state["history"].append(row)
            if scores["mIoU"] > state["best_val_mIoU"]:
                state.update(best_val_mIoU=scores["mIoU"], best_iter=iteration, best_scores=scores)
                save_best(checkpoint_dir, parts, scores, iteration)
            average.swap_out(parts.model)
            now = time.perf_counter()
            state.update(
                iter=iteration,
                train_seconds=state["train_seconds"] + now - started,
                train_step_seconds=state["train_step_seconds"] + step_seconds,
                train_images=state["train_images"] + images,
            )
            started, step_seconds, images = now, 0.0, 0
            on_eval(iteration, scores, row)
            save_checkpoint(checkpoint_dir, parts, state, settings.keep_checkpoint_max, average)
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_mIoU=f"{scores['mIoU']:.4f}")
            if iteration < settings.iters:
                distributed.barrier()
    bar.close()
    return state
