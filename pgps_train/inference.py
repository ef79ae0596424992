"""Inference: sliding-window prediction and export in the input file's own geometry.

A raw case goes through exactly the store's preprocessing (crop to non-zero → normalise
with the stored statistics → resample to the target spacing,
:func:`pgps_data.raw.preprocess.preprocess_case`), is predicted with MONAI's
``sliding_window_inference`` at the final patch (Gaussian blending, sigma 1/8 of the
patch and 50 % overlap, as nnU-Net), and is mapped back with
:func:`~pgps_data.raw.preprocess.restore_to_source`. As nnU-Net exports, the
*probabilities* are resampled back (spline order 1, nearest on a separately resampled
anisotropic axis) and only then turned into a label map; outside the crop box they are
background (softmax) or 0 (regions). The affine never changes, so the label map written
with the reference file's geometry overlays the input in 3D Slicer or ITK-SNAP.

Output channels, the nonlinearity and the label map are model.json's labels'
(:class:`pgps_data.labels.Labels`, nnU-Net's rules): softmax over background and each
foreground value, the label the value of the argmax; or, with regions, one sigmoid per
foreground region in label order, painted in ``regions_class_order`` (p > 0.5, later
regions overwriting).

The command line (``pgps-predict``) lives in :mod:`pgps_train.cli.predict`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgps_data.errors import PGPSInputError, read_json
from pgps_data.labels import Labels
from pgps_data.raw.cases import AFFINE_TOLERANCE
from pgps_data.raw.preprocess import preprocess_case, restore_to_source
from pgps_data.raw.readers import Volume, check_finite, geometry_dict, read_volume
from pgps_train.checkpoint import load_checkpoint  # the one loader: integrity check, no pickle

MODEL_JSON = "model.json"
CHECKPOINT = "checkpoint_final.pt"
SIGMA_SCALE = 0.125  # nnU-Net's Gaussian: sigma = patch / 8
REQUIRED_KEYS = ("network", "patch", "num_classes", "labels", "label_values", "channel_names",
                 "modalities", "target_spacing", "intensity_statistics")

Builder = Callable[..., torch.nn.Module]


def predict_volume(
    model: torch.nn.Module,
    image: np.ndarray,
    patch: Sequence[int],
    *,
    overlap: float = 0.5,
    mirror: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    nonlin: str = "softmax",
) -> np.ndarray:
    """Probabilities (K, Z, Y, X) float32 of a preprocessed image (C, Z, Y, X).

    Sliding windows of ``patch`` with Gaussian blending of the *logits* (MONAI
    ``mode="gaussian"``, ``sigma_scale=0.125``), then ``nonlin`` ("softmax" over
    channels, or "sigmoid" per channel for regions). An image smaller than the patch is
    zero-padded by MONAI and the result cropped back. ``mirror`` averages the logits of
    all 8 flips of each window over (Z, Y, X) (nnU-Net's mirroring TTA). Autocast (fp16)
    only on CUDA; the blended logits stay float32. The model is moved to ``device`` and
    put in eval mode for the call; its train/eval state is restored afterwards.
    """
    from monai.inferers import sliding_window_inference

    if image.ndim != 4:
        raise ValueError(f"expected a preprocessed image (C, Z, Y, X), got shape {image.shape}")
    if len(patch) != 3:
        raise ValueError(f"patch must have 3 sizes (Z, Y, X), got {patch}")
    if nonlin not in ("softmax", "sigmoid"):
        raise ValueError(f"nonlin must be 'softmax' or 'sigmoid', got {nonlin!r}")
    dev = torch.device(device)
    was_training = model.training
    model.to(dev).eval()
    predictor = _predictor(model, mirror)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(dev)
    try:
        with torch.inference_mode(), torch.autocast("cuda", enabled=dev.type == "cuda"):
            try:
                logits = _windows(sliding_window_inference, x, patch, predictor, overlap,
                                  batch_size, dev)
            except torch.cuda.OutOfMemoryError:  # blend on the host, windows still on device
                torch.cuda.empty_cache()
                logits = _windows(sliding_window_inference, x, patch, predictor, overlap,
                                  batch_size, torch.device("cpu"))
            logits = logits[0].float()
            probs = torch.softmax(logits, 0) if nonlin == "softmax" else torch.sigmoid(logits)
            return probs.cpu().numpy().astype(np.float32, copy=False)
    finally:
        model.train(was_training)


def load_model(
    model_dir: str | Path, *, device: str | torch.device = "cpu", builder: Builder | None = None,
    log: Callable[[str], Any] | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network of a MODEL_DIR (model.json + checkpoint_final.pt) and its config.

    ``builder(**config["network"])`` makes the module; by default
    :func:`pgps_train.networks.build_network` (imported only here). The checkpoint is
    read only through :func:`pgps_train.checkpoint.load_checkpoint` (``weights_only=True``,
    no pickle; its integrity check). PGPSInputError names the file that is missing or
    broken. ``log`` receives load_checkpoint's one-line warnings (an unverified older
    checkpoint); without it they are Python warnings.
    """
    folder = Path(model_dir)
    config = load_config(folder)
    ckpt = folder / CHECKPOINT
    if not ckpt.is_file():
        raise PGPSInputError(f"{ckpt}: missing (train a model with pgps-train first)")
    if builder is None:
        from pgps_train.networks import build_network as builder  # lazy: heavy, optional
    try:
        model = builder(**config["network"])
    except (TypeError, ValueError, KeyError) as exc:
        raise PGPSInputError(f"{folder / MODEL_JSON}: cannot build the network ({exc})") from exc
    try:
        extra = {} if log is None else {"log": log}
        state = load_checkpoint(ckpt, device=torch.device(device), **extra)
        model.load_state_dict(state["model"] if "model" in state else state)
    except PGPSInputError:  # already one line naming the checkpoint (damaged, checksum)
        raise
    except Exception as exc:  # unpickling refused, truncated file, wrong keys or shapes
        msg = " ".join(str(exc).split())[:200]
        raise PGPSInputError(f"{ckpt}: cannot load the weights ({type(exc).__name__}: {msg})") from exc
    return model.to(device).eval(), config


def load_config(model_dir: str | Path) -> dict[str, Any]:
    """Read and check MODEL_DIR/model.json (keys in :data:`REQUIRED_KEYS`)."""
    path = Path(model_dir) / MODEL_JSON
    config = read_json(path, f"is {model_dir} a pgps model directory?")
    missing = [k for k in REQUIRED_KEYS if not isinstance(config, dict) or k not in config]
    if missing:
        raise PGPSInputError(f"{path}: lacks {', '.join(missing)} (written by an older pgps?)")
    n_out = Labels.from_dict(config, where=path).num_outputs
    if int(config["num_classes"]) != n_out:
        raise PGPSInputError(f"{path}: num_classes {config['num_classes']} but the labels give "
                             f"{n_out} output channel(s)")
    return config


def config_from_store(
    meta: Mapping[str, Any], *, network: Mapping[str, Any], patch: Sequence[int],
    file_ending: str = ".nii.gz",
) -> dict[str, Any]:
    """A model.json dict from a store's attrs (``store.meta``), a network config and patch."""
    labels = Labels.from_dict(meta, where="store attrs")
    config = {
        "network": dict(network),
        "patch": [int(p) for p in patch],
        "num_classes": labels.num_outputs,
        **labels.to_dict(),
        "channel_names": list(meta["channel_names"]),
        "modalities": list(meta["modalities"]),
        "target_spacing": [float(s) for s in meta["target_spacing"]],
        "intensity_statistics": meta["intensity_statistics"],
        "use_mask_for_norm": bool(meta.get("plan", {}).get("use_mask_for_norm", False)),
        "file_ending": file_ending,
    }
    return config


def model_labels(config: Mapping[str, Any]) -> Labels:
    """The labels of a model.json dict: what its outputs mean and how they become labels."""
    return Labels.from_dict(config, where=MODEL_JSON)


def read_case_image(paths: Sequence[str | Path], channels: int) -> tuple[np.ndarray, Volume]:
    """A raw case as float32 (C, Z, Y, X) and its reference volume (the first file).

    One file holding all channels (3D for one, 4D channels-last for several), or one 3D
    file per channel sharing shape and affine: the store's reading rules
    (:func:`pgps_data.raw.cases.load_case`), with the model's channel count.
    """
    paths = [str(p) for p in paths]
    if len(paths) == 1:
        ref = read_volume(paths[0])
        check_finite(ref)
        image = ref.data if ref.data.ndim == 4 else ref.data[None]
    else:
        vols = []
        for p in paths:
            vol = read_volume(p)
            check_finite(vol)
            if vol.data.ndim != 3:
                raise PGPSInputError(f"{p}: is 4D {vol.data.shape}; one 3D file per channel expected")
            if vols and vol.data.shape != vols[0].data.shape:
                raise PGPSInputError(f"{p}: shape {vol.data.shape} differs from {paths[0]} "
                                     f"{vols[0].data.shape}; channel files must match")
            if vols and not np.allclose(vol.affine, vols[0].affine, atol=AFFINE_TOLERANCE):
                raise PGPSInputError(f"{p}: affine differs from {paths[0]}; channel files must "
                                     "share origin, spacing and direction")
            vols.append(vol)
        ref = vols[0]
        image = np.stack([v.data for v in vols])
    if image.shape[0] != channels:
        raise PGPSInputError(f"{paths[0]}: has {image.shape[0]} channel(s), the model expects "
                             f"{channels} (give one 4D file or one file per channel)")
    return np.asarray(image, dtype=np.float32), ref


def preprocess_for_model(
    image: np.ndarray, spacing: Sequence[float], config: Mapping[str, Any]
) -> tuple[np.ndarray, dict[str, Any]]:
    """The store's forward map with the model's recorded statistics: (image, props)."""
    out, _, props = preprocess_case(
        image, None, spacing=spacing, target_spacing=config["target_spacing"],
        modalities=config["modalities"], stats=config["intensity_statistics"],
        use_mask_for_norm=bool(config.get("use_mask_for_norm", False)),
    )
    return out, props


def predict_case(
    model: torch.nn.Module,
    config: Mapping[str, Any],
    image_paths: Sequence[str | Path],
    *,
    mirror: bool = False,
    device: str | torch.device = "cpu",
    overlap: float = 0.5,
    batch_size: int = 1,
    return_probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Predict one raw case: (label map, probabilities or None, geometry), source space.

    The label map is uint8 (Z, Y, X) of label values on the input's voxel grid; the
    probabilities (K, Z, Y, X) float32 likewise (returned only when asked: they are as big
    as K images); ``geometry`` is :func:`~pgps_data.raw.readers.geometry_dict` of the
    first input file, ready for :func:`~pgps_data.raw.readers.write_volume`.
    """
    image, ref = read_case_image(image_paths, len(config["channel_names"]))
    pre, props = preprocess_for_model(image, ref.spacing, config)
    del image
    labels = model_labels(config)
    probs = predict_volume(model, pre, config["patch"], overlap=overlap, mirror=mirror,
                           device=device, batch_size=batch_size, nonlin=labels.nonlinearity)
    if probs.shape[0] != int(config["num_classes"]):
        raise PGPSInputError(f"{MODEL_JSON}: the network gives {probs.shape[0]} channels, "
                             f"num_classes is {config['num_classes']}")
    # outside the crop box: no region (sigmoid), or background (softmax, restore's default)
    fill = [0.0] * probs.shape[0] if labels.has_regions else None
    source = restore_to_source(probs, props, order=1, fill=fill)
    label = labels.label_map(source)
    return label, (source if return_probabilities else None), geometry_dict(ref)


# ----------------------------------------------------------------------------- internals


def _predictor(model: torch.nn.Module, mirror: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    flips: list[tuple[int, ...]] = [()]
    if mirror:
        flips += [c for r in (1, 2, 3) for c in combinations((2, 3, 4), r)]

    def run(x: torch.Tensor) -> torch.Tensor:
        total = None
        for axes in flips:
            y = _logits(model(torch.flip(x, axes) if axes else x))
            y = torch.flip(y, axes) if axes else y
            total = y if total is None else total + y
        return total / len(flips)  # type: ignore[operator]

    return run


def _logits(out: Any) -> torch.Tensor:
    """The full-resolution logits of a forward pass (first output of deep supervision)."""
    if isinstance(out, list | tuple):
        out = out[0]
    if out.ndim == 6:  # MONAI DynUNet stacks deep-supervision heads on dim 1 in train mode
        out = out[:, 0]
    return out.float()


def _windows(swi: Callable[..., Any], x: torch.Tensor, patch: Sequence[int],
             predictor: Callable[[torch.Tensor], torch.Tensor], overlap: float,
             batch_size: int, blend_device: torch.device) -> torch.Tensor:
    return swi(x, roi_size=[int(p) for p in patch], sw_batch_size=int(batch_size),
               predictor=predictor, overlap=float(overlap), mode="gaussian",
               sigma_scale=SIGMA_SCALE, padding_mode="constant", cval=0.0,
               sw_device=x.device, device=blend_device)
