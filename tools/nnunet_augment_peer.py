"""nnU-Net peer of bench_augment: nnU-Net 2.8.1's own training transforms, timed as it ships them.

Run it INSIDE the nnU-Net venv (built by ``bash tools/nnunet_venv.sh``). One stage, one shot::

    .venv-nnunet/bin/python tools/nnunet_augment_peer.py --patch 16 32 32 --batch 250 \
        --modes direct shipped --seconds 4

or as the benchmark drives it (``--serve``): one JSON request per stdin line, one JSON answer
per request on file descriptor ``--ack-fd`` (so the caller can interleave its own cells
between ours), and at stdin's end everything on stdout. Requests::

    {"cmd": "setup", "patch": [Z, Y, X], "batch": B, "channels": C, "seed": S, "kernels": [[1,1,1], ...]}
    {"cmd": "cell", "mode": "direct" | "shipped", "seconds": T, "warmup": 3, "processes": 2}

The transforms are ``nnUNetTrainer.get_training_transforms`` called with the rotation,
dummy-2D flag, initial patch and mirror axes that nnU-Net's own
``configure_rotation_dummyDA_mirroring_and_inital_patch_size`` gives for the patch, and the
deep-supervision scales ``_get_deep_supervision_scales`` gives for the pooling kernels. They
are applied per sample into a preallocated batch as ``nnUNetDataLoader.generate_train_batch``
does (``torch.no_grad``, ``threadpool_limits(1)``, one torch thread), the case read replaced
by a copy of a pre-generated box (crop_and_pad_nd's fresh array). "direct": in this process
(nnU-Net with ``nnUNet_n_proc_DA=0``); "shipped": ``NonDetMultiThreadedAugmenter`` with
``transform=None`` over that loader, as ``nnUNetTrainer.get_dataloaders`` wires it.

The inputs come from :func:`synthetic_inputs` (numpy only): bench_augment imports this file
for the same function, so both sides build the same arrays, and both print their checksum.
Exactly one JSON object goes to stdout; everything else goes to stderr. This file never
imports pgps (it lives in another venv) and pgps never imports nnU-Net.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from types import SimpleNamespace

import numpy as np

MODES = ("direct", "shipped")


def log(*args) -> None:
    print("[nnunet_augment_peer]", *args, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ inputs
def synthetic_inputs(box, batch: int, channels: int, seed: int):
    """``batch`` smooth synthetic boxes of shape ``box`` (Z, Y, X), numpy only, deterministic.

    Returns (image float32 (N, C, *box), seg int16 (N, 1, *box), checksum). Each image is a
    sum of three separable Gaussian blobs plus a slow ramp; the seg is {0, 1, 2} (1 and 2 where
    the first two blobs are high) and -1 in a border slab on the high-X and low-Y sides of
    random width (the box leaving the case, where nnU-Net's loader pads seg -1, image 0).
    """
    box = tuple(int(v) for v in box)
    rng = np.random.default_rng([int(seed), *box, int(batch), int(channels)])
    axes = [np.linspace(0.0, 1.0, n) for n in box]
    image = np.empty((batch, channels, *box), np.float32)
    seg = np.zeros((batch, 1, *box), np.int16)
    for n in range(batch):
        blobs = []
        for _ in range(3):
            centre, sigma = rng.uniform(0.25, 0.75, 3), rng.uniform(0.08, 0.25, 3)
            parts = [np.exp(-((a - c) ** 2) / (2 * s * s)) for a, c, s in zip(axes, centre, sigma)]
            blobs.append(np.einsum("i,j,k->ijk", *parts))
        ramp = np.add.outer(np.add.outer(axes[0], axes[1]), axes[2]) / 3.0
        for c in range(channels):
            w = rng.uniform(0.5, 1.5, 3)
            image[n, c] = w[0] * blobs[0] + w[1] * blobs[1] + w[2] * blobs[2] + 0.3 * ramp - 0.5
        s = seg[n, 0]
        s[blobs[0] > 0.5] = 1
        s[blobs[1] > 0.6] = 2
        wx = int(rng.integers(1, max(2, box[2] // 6 + 1)))
        wy = int(rng.integers(0, max(1, box[1] // 8 + 1)))
        s[:, :, box[2] - wx:] = -1
        s[:, :wy, :] = -1
        image[n][:, s == -1] = 0.0
    return image, seg, checksum(image, seg)


def checksum(image: np.ndarray, seg: np.ndarray) -> str:
    """16 hex digits of SHA-256 over the image and seg bytes (seg as int16, -1 outside)."""
    h = hashlib.sha256(np.ascontiguousarray(image, np.float32).tobytes())
    h.update(np.ascontiguousarray(seg, np.int16).tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- nnU-Net
def nnunet_configuration(patch, kernels):
    """What nnU-Net derives from the patch and the plan's pooling kernels, by its own code:
    rotation, dummy 2D, initial patch and mirror axes
    (``configure_rotation_dummyDA_mirroring_and_inital_patch_size``, called on a stand-in
    trainer that holds only a configuration manager) and the deep-supervision scales
    (``_get_deep_supervision_scales``)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    cm = SimpleNamespace(patch_size=list(patch), pool_op_kernel_sizes=[list(k) for k in kernels])
    fake = SimpleNamespace(configuration_manager=cm, enable_deep_supervision=True,
                           print_to_log_file=lambda *a, **k: None)
    rot, dummy, initial, mirror = \
        nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size(fake)
    ds = nnUNetTrainer._get_deep_supervision_scales(fake)
    return rot, bool(dummy), tuple(int(v) for v in initial), tuple(mirror), ds


def make_loader(images, segs, patch, transforms):
    """A batchgenerators DataLoader whose generate_train_batch is nnUNetDataLoader's, the
    case read replaced by a copy of pre-generated box ``i`` for slot ``i``."""
    import torch
    from batchgenerators.dataloading.data_loader import DataLoader
    from threadpoolctl import threadpool_limits

    class PoolLoader(DataLoader):
        def __init__(self):
            # the arguments nnUNetDataLoader passes: infinite, no shuffle, incomplete allowed
            super().__init__(list(range(len(images))), len(images), 1, None, True, False, True, None)
            self.indices = list(range(len(images)))
            self.final_patch_size = tuple(patch)
            self.transforms = transforms

        def generate_train_batch(self):
            selected_keys = self.indices  # slot i gets box i: the same inputs as ours
            data_all = None
            seg_all = None
            with torch.no_grad():
                with threadpool_limits(limits=1, user_api=None):
                    for j, i in enumerate(selected_keys):
                        data_cropped = torch.from_numpy(images[i].copy()).float()
                        seg_cropped = torch.from_numpy(segs[i].copy()).to(torch.int16)
                        transformed = self.transforms(**{'image': data_cropped, 'segmentation': seg_cropped})
                        data_sample = transformed['image']
                        seg_sample = transformed['segmentation']
                        if data_all is None:
                            data_all = torch.empty((self.batch_size, *data_sample.shape), dtype=torch.float32)
                        data_all[j] = data_sample
                        if isinstance(seg_sample, list):
                            if seg_all is None:
                                seg_all = [torch.empty((self.batch_size, *s.shape), dtype=s.dtype)
                                           for s in seg_sample]
                            for s_idx, s in enumerate(seg_sample):
                                seg_all[s_idx][j] = s
                        else:
                            if seg_all is None:
                                seg_all = torch.empty((self.batch_size, *seg_sample.shape), dtype=seg_sample.dtype)
                            seg_all[j] = seg_sample
            return {'data': data_all, 'target': seg_all, 'keys': selected_keys}

    return PoolLoader()


def _finish_quietly(gen) -> None:
    """gen._finish(); its results thread may die of a batch whose worker already exited
    (batchgenerators' shutdown race, harmless): one log line instead of a traceback."""
    import threading

    hook = threading.excepthook
    threading.excepthook = lambda a: log(f"augmenter shutdown: {a.exc_type.__name__} in {a.thread.name}")
    try:
        gen._finish()
    finally:
        threading.excepthook = hook


def cpu_seconds(pids) -> float:
    """User + system CPU seconds of the processes ``pids`` (all their threads; gone ones skipped)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / tick


class Peer:
    """One stage's inputs and transforms; runs timed cells on them."""

    def __init__(self):
        self.stage = None

    def setup(self, patch, batch, channels=1, seed=0, kernels=None, inputs=None) -> dict:
        import torch
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        torch.set_num_threads(1)  # nnU-Net's run_training does this when training on a GPU
        kernels = kernels or [[1, 1, 1]] + [[2, 2, 2]] * 4
        rot, dummy, initial, mirror, ds = nnunet_configuration(patch, kernels)
        t0 = time.perf_counter()
        if inputs:  # the caller's arrays (used only when the two venvs' numpy disagree)
            with np.load(inputs) as z:
                images, segs = z["image"], z["seg"]
            digest = checksum(images, segs)
        else:
            images, segs, digest = synthetic_inputs(initial, batch, channels, seed)
        transforms = nnUNetTrainer.get_training_transforms(
            tuple(patch), rot, ds, mirror, dummy, use_mask_for_norm=None, is_cascaded=False,
            foreground_labels=[1, 2], regions=None, ignore_label=None)
        self.stage = SimpleNamespace(patch=tuple(patch), batch=int(batch), channels=int(channels),
                                     loader=make_loader(images, segs, patch, transforms))
        return {"patch": list(patch), "batch": batch, "channels": channels, "initial": list(initial),
                "dummy_2d": dummy, "rotation": [float(r) for r in rot], "mirror_axes": list(mirror),
                "ds_scales": [[float(v) for v in s] for s in ds], "checksum": digest,
                "seconds_inputs": round(time.perf_counter() - t0, 3)}

    def cell(self, mode: str, seconds: float, warmup: int = 3, processes: int = 2) -> dict:
        """Warm-up ``warmup`` batches (discarded), then whole batches for >= ``seconds``."""
        if mode not in MODES:
            raise SystemExit(f"unknown mode {mode!r}; use one of {MODES}")
        st = self.stage
        gen, pids = st.loader, [os.getpid()]
        if mode == "shipped":
            from batchgenerators.dataloading.nondet_multi_threaded_augmenter import (
                NonDetMultiThreadedAugmenter,
            )
            # as nnUNetTrainer.get_dataloaders (pin_memory there is device.type == 'cuda')
            gen = NonDetMultiThreadedAugmenter(data_loader=st.loader, transform=None,
                                               num_processes=processes,
                                               num_cached=max(6, processes // 2), seeds=None,
                                               pin_memory=False, wait_time=0.002)
        try:
            for _ in range(max(1, warmup)):
                batch = next(gen)
            if mode == "shipped":
                pids += [p.pid for p in gen._processes]
            shape = list(batch["data"].shape)
            targets = [list(t.shape) for t in batch["target"]] if isinstance(batch["target"], list) \
                else [list(batch["target"].shape)]
            n, c0, t0 = 0, cpu_seconds(pids), time.perf_counter()
            while True:
                batch = next(gen)
                n += 1
                dt = time.perf_counter() - t0
                if dt >= seconds:
                    break
            cpu = cpu_seconds(pids) - c0
        finally:
            if mode == "shipped":
                _finish_quietly(gen)
        samples = n * st.batch
        vox = samples * int(np.prod(shape[1:]))
        res = {"mode": mode, "processes": processes if mode == "shipped" else 1, "batches": n,
               "samples": samples, "seconds": round(dt, 4),
               "samples_per_s": samples / dt, "mvox_per_s": vox / dt / 1e6,
               "cpu_s_per_sample": cpu / samples, "ms_per_batch": dt / n * 1e3,
               "batch_data_shape": shape, "target_shapes": targets}
        log(f"{mode} {st.patch} b{st.batch}: {n} batches in {dt:.2f} s -> "
            f"{res['samples_per_s']:.1f} samples/s, {res['cpu_s_per_sample'] * 1e3:.1f} ms CPU/sample")
        return res


def versions() -> dict:
    import importlib.metadata as md

    import torch

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__}
    for name in ("nnunetv2", "batchgeneratorsv2", "batchgenerators"):
        out[name] = md.version(name)
    return out


def serve(ack_fd: int) -> dict:
    """Answer JSON requests from stdin on ``ack_fd``; all answers at stdin's end."""
    peer, answers = Peer(), []
    with os.fdopen(ack_fd, "w") as ack:
        ack.write(json.dumps({"ready": True, "versions": versions()}) + "\n")
        ack.flush()
        for line in sys.stdin:
            if not line.strip():
                continue
            req = json.loads(line)
            cmd = req.pop("cmd")
            try:
                res = peer.setup(**req) if cmd == "setup" else peer.cell(**req)
            except Exception as exc:  # answered, not fatal: the caller reports the row as failed
                log(f"{cmd} failed: {exc!r}")
                res = {"error": repr(exc)}
            answers.append({"cmd": cmd, **res})
            ack.write(json.dumps(res) + "\n")
            ack.flush()
    return {"versions": versions(), "answers": answers}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", action="store_true", help="answer JSON requests from stdin (bench_augment)")
    ap.add_argument("--ack-fd", type=int, default=None, help="--serve: the descriptor for the answers")
    ap.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"), default=(16, 32, 32))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--seconds", type=float, default=4.0, help="timed seconds per cell (whole batches)")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up batches per cell (discarded)")
    ap.add_argument("--processes", type=int, default=2, help="shipped: augmenter processes")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):  # quiet nnunetv2.paths
        os.environ.setdefault(var, "/tmp")
    # nnU-Net (and its worker processes) print on stdout: point fd 1 at stderr while working and
    # keep the real stdout for the one JSON object.
    sys.stdout.flush()
    real_stdout = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    with contextlib.redirect_stdout(sys.stderr):
        if args.serve:
            if args.ack_fd is None:
                raise SystemExit("--serve needs --ack-fd")
            result = serve(args.ack_fd)
        else:
            peer = Peer()
            setup = peer.setup(args.patch, args.batch, args.channels, args.seed)
            result = {"versions": versions(), "setup": setup,
                      "cells": [peer.cell(m, args.seconds, args.warmup, args.processes)
                                for m in args.modes]}
    real_stdout.write(json.dumps(result) + "\n")
    real_stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
