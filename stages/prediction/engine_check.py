"""The check every ONNX conversion passes before export writes it: Paddle Inference and onnxruntime on the
same photos must give close logits and the same class ids at each photo's full size (as predict makes them)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stages.models.inference_model import Predictor, preprocess
from stages.models.onnx_model import ONNX_NAME, OnnxPredictor, input_shape, opset_of
from stages.prediction.masks import predict_masks


def check_onnx(deploy_dir: Path, photos, params) -> dict:
    """The ONNX model's figures: what it is, and how it compares with Paddle Inference on ``photos``."""
    onnx_path = deploy_dir / ONNX_NAME
    check = compare_engines(deploy_dir, photos)
    return {
        "opset": opset_of(onnx_path),
        "onnx_input_shape": input_shape(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
        **check,
        "logit_tolerance": float(params.check.max_logit_diff) * max(1.0, check["max_abs_logit"]),
        "min_mask_agreement": float(params.check.min_mask_agreement),
    }


def disagreements(figures: dict, params) -> list[str]:
    failures = []
    if not figures["max_logit_diff"] <= figures["logit_tolerance"]:
        failures.append(
            f"max logit difference {figures['max_logit_diff']:.3g} > {figures['logit_tolerance']:.3g} "
            f"(export.check.max_logit_diff {params.check.max_logit_diff} x max(1, largest logit "
            f"{figures['max_abs_logit']:.3g}))"
        )
    if not figures["mask_agreement"] >= figures["min_mask_agreement"]:
        failures.append(
            f"class ids agree on {figures['mask_agreement']:.4%} of the pixels < "
            f"export.check.min_mask_agreement {figures['min_mask_agreement']:.4%}"
        )
    return failures


def compare_engines(deploy_dir: Path, photos) -> dict:
    """Paddle Inference against onnxruntime on the same photos: largest logit difference, class-id agreement."""
    threads = os.cpu_count() or 1
    engines = {
        "paddle": Predictor(deploy_dir, use_gpu=False, cpu_threads=threads),
        "onnxruntime": OnnxPredictor(deploy_dir, cpu_threads=threads),
    }
    meta = engines["paddle"].meta
    images = [rgb for _, rgb in photos]
    batch = np.stack([preprocess(rgb, meta) for rgb in images])
    logits = {engine: predictor.logits(batch) for engine, predictor in engines.items()}
    masks = {engine: predict_masks(predictor, images) for engine, predictor in engines.items()}
    agree = sum(int((a == b).sum()) for a, b in zip(masks["paddle"], masks["onnxruntime"]))
    total = sum(mask.size for mask in masks["paddle"])
    return {
        "check_images": [stem for stem, _ in photos],
        "max_logit_diff": float(np.abs(logits["paddle"] - logits["onnxruntime"]).max()),
        "max_abs_logit": float(np.abs(logits["paddle"]).max()),
        "mask_agreement": agree / total,
    }
