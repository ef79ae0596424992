"""bench_augment: pgps's batched augmentation (BatchAugmenter, CPU torch) vs nnU-Net's own, side by side.

    python tools/bench_augment.py [--seconds 4] [--rounds 3] [--json out.json] [--quick]

Same inputs on both sides: synthetic smooth boxes (``nnunet_augment_peer.synthetic_inputs``,
numpy only, run in each venv; both print the checksum) of the initial box nnU-Net reads
for the stage, C=1, labels {0, 1, 2} and -1 (our 255) in a border slab where the box
leaves the case. Per row, 3 rounds interleaved:

* ours: ``BatchAugmenter`` in this process with ``torch.set_num_threads(2)``, on batches
  built as the loader delivers them (``draw_spatial`` keyed by slot; warped slots: the
  box, the others: the centre crop floor(I/2) - F//2 of the box) plus the deep-supervision
  targets (``losses.downsample_targets``). The timed region includes building the batch.
* nnU-Net direct: ``get_training_transforms`` applied per sample as
  ``nnUNetDataLoader.generate_train_batch`` does, in the peer's process (1 core);
* nnU-Net shipped: the same loader under ``NonDetMultiThreadedAugmenter`` with 2
  processes, as ``nnUNetTrainer.get_dataloaders`` wires it (tools/nnunet_augment_peer.py).

Each cell: >= 3 warm-up batches discarded, then whole batches for >= T seconds. Reported:
samples/s, output Mvox/s, CPU-ms per sample (process CPU incl. worker processes), ours ms
per batch; medians over the rounds (min-max in the JSON). A parity gate runs first (our
warp and one intensity transform with injected parameters against batchgeneratorsv2 0.3.6):
a failed gate reports no speeds. Without .venv-nnunet only our side runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import pgps_train  # noqa: F401  (before torch loads: OpenMP waits passively, as in training)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

PEER = benchlib.ROOT / "tools" / "nnunet_augment_peer.py"
_spec = importlib.util.spec_from_file_location("nnunet_augment_peer", PEER)
peer_mod = importlib.util.module_from_spec(_spec)  # numpy-only at import: the shared inputs
_spec.loader.exec_module(peer_mod)  # type: ignore[union-attr]

# nnU-Net pooling kernels (pool_op_kernel_sizes) of the plans; DS scales = 1/cumprod[:-1]
K_80 = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]  # 80x160x160, pools (4,5,5)
K_40 = [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]  # 40x224x192, pools (3,5,5)
K_DEMO = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]  # demo tiny preset 24x48x48, steps (4,8,8)


@dataclass(frozen=True)
class Row:
    plan: str
    patch: tuple[int, int, int]
    batch: int
    kernels: list
    goal: float  # ours / nnU-Net shipped, samples/s
    channels: int = 1


# Batches: efficiency 2, performance int(2 V_final / V) (pgps Curriculum, journal-2025 rules).
ROWS = [
    Row("80x160x160", (16, 32, 32), 2, K_80, 2.0),
    Row("80x160x160", (16, 32, 32), 250, K_80, 5.0),
    Row("80x160x160", (32, 64, 64), 31, K_80, 2.0),  # V of the journal stage 64x64x32, b 31
    Row("80x160x160", (80, 160, 160), 2, K_80, 2.0),
    Row("40x224x192 (dummy 2D)", (8, 32, 32), 420, K_40, 2.0),
    Row("40x224x192 (dummy 2D)", (40, 224, 192), 2, K_40, 2.0),
    Row("demo performance stage 0", (4, 8, 8), 432, K_DEMO, 2.0),
]
C4_ROW = Row("80x160x160, C=4", (32, 64, 64), 31, K_80, 2.0, channels=4)
QUICK_ROWS = [
    Row("quick", (8, 16, 16), 2, K_DEMO, 2.0),
    Row("quick", (8, 16, 16), 40, K_DEMO, 5.0),
    Row("quick (dummy 2D)", (4, 16, 16), 8, K_DEMO, 2.0),
]


def ds_scales(kernels) -> list[list[float]]:
    """nnU-Net's _get_deep_supervision_scales for the pooling kernels (1 / cumprod, last dropped)."""
    return [list(map(float, s)) for s in 1 / np.cumprod(np.vstack(kernels), axis=0)][:-1]


# ------------------------------------------------------------------------------- parity
def parity_gate() -> dict:
    """Our warp (3D and dummy 2D, rotated + scaled) and inverted gamma against bgv2 0.3.6 as
    nnU-Net configures it, parameters injected (bgv2's own get_parameters builds its grid
    from callables returning our angles and factor). ok: image within 1e-4 of the data's
    scale, >= 99.9 % equal labels."""
    import torch

    from pgps_data.schedule.augment_geometry import geometry_of
    from pgps_train.augment import intensity, spatial

    try:
        from batchgeneratorsv2.transforms.intensity.contrast import BGContrast
        from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
        from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
        from batchgeneratorsv2.transforms.utils.pseudo2d import (
            Convert2DTo3DTransform,
            Convert3DTo2DTransform,
        )
    except ImportError as exc:
        return {"ok": False, "reason": f"batchgeneratorsv2 missing in this venv: {exc}"}
    checks = []
    for patch, angles, scale in (((16, 32, 32), (0.31, -0.22, 0.4), 1.21),
                                 ((8, 32, 32), (1.1, 0.0, 0.0), 0.83)):
        g = geometry_of(patch)
        img, seg, _ = peer_mod.synthetic_inputs(g.initial, 1, 1, seed=7)
        img, seg = torch.from_numpy(img), torch.from_numpy(seg)
        u8 = torch.where(seg == -1, 255, seg).to(torch.uint8)
        scales = (1.0, scale, scale) if g.dummy_2d else (scale,) * 3
        mats = spatial.affine_matrices(torch.tensor([angles]), torch.tensor([scales]), g.dummy_2d)
        ours_img, ours_lab = spatial.warp(img, u8, mats, patch, g.dummy_2d)
        rot = (lambda image, dim, a=angles: a[0]) if g.dummy_2d else (lambda image, dim, a=angles: a[dim])
        t = SpatialTransform(patch[1:] if g.dummy_2d else patch, patch_center_dist_from_border=0,
                             random_crop=False, p_elastic_deform=0, p_rotation=1, rotation=rot,
                             p_scaling=1, scaling=lambda image, dim, f=scale: f,
                             p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False,
                             border_mode_seg="constant", padding_value_seg=-1)
        d = {"image": img[0].clone(), "segmentation": seg[0].clone()}
        if g.dummy_2d:
            d = Convert3DTo2DTransform()(**d)
        d = t.apply(d, **t.get_parameters(**d))
        if g.dummy_2d:
            d = Convert2DTo3DTransform()(**d)
        ref_lab = torch.where(d["segmentation"] == -1, 255, d["segmentation"]).to(torch.uint8)
        scale_of = float(img.abs().max())
        gm = GammaTransform(BGContrast((0.7, 1.5)), p_invert_image=1, synchronize_channels=False,
                            p_per_channel=1, p_retain_stats=1)
        ref_g = gm._apply_to_image(d["image"].clone(), apply_to_channel=torch.tensor([0]),
                                   retain_stats=torch.ones(1, dtype=torch.bool),
                                   invert_image=torch.ones(1, dtype=torch.bool),
                                   gamma=torch.tensor([0.8]))
        ours_g = intensity.gamma(d["image"][None].clone(), torch.ones(1, 1, dtype=torch.bool),
                                 torch.tensor([[0.8]]), invert=True)[0]
        checks.append({
            "patch": list(patch), "dummy_2d": g.dummy_2d,
            "warp_image_maxdiff": float((ours_img[0] - d["image"]).abs().max()) / scale_of,
            "warp_label_agreement": float((ours_lab[0] == ref_lab).float().mean()),
            "gamma_maxdiff": float((ours_g - ref_g).abs().max()) / scale_of})
    ok = all(c["warp_image_maxdiff"] <= 1e-4 and c["warp_label_agreement"] >= 0.999
             and c["gamma_maxdiff"] <= 1e-4 for c in checks)
    return {"ok": ok, "checks": checks}


# ---------------------------------------------------------------------------------- ours
class Ours:
    """One stage's pool of boxes and our side's timed cells."""

    def __init__(self, row: Row, seed: int, ds: list):
        import torch

        from pgps_data.schedule.augment_geometry import geometry_of
        from pgps_train.augment.pipeline import BatchAugmenter

        self.row, self.seed, self.ds = row, seed, ds
        self.geometry = geometry_of(row.patch)
        img, seg, self.checksum = peer_mod.synthetic_inputs(self.geometry.initial, row.batch,
                                                            row.channels, seed)
        self.arrays = (img, seg)
        self.image = torch.from_numpy(img)
        self.label = torch.from_numpy(np.where(seg == -1, 255, seg).astype(np.uint8))
        self.augmenter = BatchAugmenter(channels=row.channels, seed=seed)
        try:
            from pgps_data.loader.sampling import _SPATIAL_STREAM as stream
        except ImportError:
            stream = 0x5BA7
        self.stream = stream

    def batch(self, step: int) -> tuple[dict, object, object]:
        """Step ``step``'s batch as the loader delivers it (contract: warp_* keys)."""
        import torch

        from pgps_data.schedule.augment_geometry import draw_spatial
        from pgps_train.augment.spatial import centre_crop

        g, b = self.geometry, self.row.batch
        draws = [draw_spatial(np.random.default_rng([self.seed, 0, step, j, self.stream]), g)
                 for j in range(b)]
        warped = [j for j, d in enumerate(draws) if d.warped]
        idx = torch.tensor(warped, dtype=torch.int64)
        image = centre_crop(self.image, g.patch).clone()  # rows of warped slots: overwritten
        label = centre_crop(self.label, g.patch).clone()
        batch = {"step": step, "image": image, "label": label, "warp_slots": idx,
                 "warp_image": self.image.index_select(0, idx),
                 "warp_label": self.label.index_select(0, idx),
                 "warp_angles": torch.tensor([draws[j].angles for j in warped], dtype=torch.float32).reshape(-1, 3),
                 "warp_scales": torch.tensor([draws[j].scales for j in warped], dtype=torch.float32).reshape(-1, 3),
                 "dummy_2d": g.dummy_2d, "initial_size": g.initial}
        return batch, image, label

    def step(self, step: int) -> float:
        """One batch: build, augment, deep-supervision targets; seconds in the augmenter."""
        from pgps_train.losses import downsample_targets

        batch, image, label = self.batch(step)
        t0 = time.perf_counter()
        image, label = self.augmenter(batch, image, label)
        targets = downsample_targets(label, self.ds)
        dt = time.perf_counter() - t0
        self.last = (step, image, targets)
        return dt

    def cell(self, seconds: float, warmup: int, step0: int, threads: int = 2) -> dict:
        import torch

        torch.set_num_threads(threads)
        step = step0
        for _ in range(max(1, warmup)):
            self.step(step)
            step += 1
        n, aug, c0, t0 = 0, 0.0, time.process_time(), time.perf_counter()
        while True:
            aug += self.step(step)
            step, n = step + 1, n + 1
            dt = time.perf_counter() - t0
            if dt >= seconds:
                break
        cpu = time.process_time() - c0
        samples = n * self.row.batch
        last, image, targets = self.last
        if not torch.isfinite(image).all():  # a fast wrong augmenter is not a result
            raise RuntimeError(f"non-finite augmented image at step {last}")
        return {"mode": "ours", "threads": threads, "batches": n, "samples": samples, "seconds": round(dt, 4),
                "samples_per_s": samples / dt, "mvox_per_s": samples * image[0].numel() / dt / 1e6,
                "cpu_s_per_sample": cpu / samples, "ms_per_batch": dt / n * 1e3,
                "augment_ms_per_batch": aug / n * 1e3, "batch_data_shape": list(image.shape),
                "target_shapes": [list(t.shape) for t in targets]}


# ---------------------------------------------------------------------------------- peer
class PeerProcess:
    """tools/nnunet_augment_peer.py --serve in .venv-nnunet: one request, one answer."""

    def __init__(self, python: Path):
        r, w = os.pipe()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([str(python), str(PEER), "--serve", "--ack-fd", str(w)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     pass_fds=(w,), text=True, env=env)
        os.close(w)
        self.ack = os.fdopen(r)
        self.ready: dict | None = None

    def wait_ready(self) -> dict:
        if self.ready is None:
            self.ready = self._answer()
        return self.ready

    def _answer(self) -> dict:
        line = self.ack.readline()
        if not line:
            raise RuntimeError(f"nnunet_augment_peer exited ({self.proc.wait()}); see stderr above")
        return json.loads(line)

    def request(self, **req) -> dict:
        self.wait_ready()
        self.proc.stdin.write(json.dumps(req) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self._answer()

    def close(self) -> dict | None:
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
            out = self.proc.stdout.read()  # type: ignore[union-attr]
            self.proc.wait(timeout=60)
            return json.loads(out.strip().splitlines()[-1]) if out.strip() else None
        finally:
            self.ack.close()


# ----------------------------------------------------------------------------- protocol
def summary(cells: list[dict]) -> dict:
    """Median and min-max of each metric over the rounds."""
    out = {}
    for key in ("samples_per_s", "mvox_per_s", "cpu_s_per_sample", "ms_per_batch", "augment_ms_per_batch"):
        vals = [c[key] for c in cells if key in c]
        if vals:
            out[key] = statistics.median(vals)
            out[key + "_range"] = [min(vals), max(vals)]
    return out


def run_row(row: Row, args, peer: PeerProcess | None, gate_ok: bool) -> dict:
    ds = ds_scales(row.kernels)
    ours = Ours(row, args.seed, ds)
    res = {"plan": row.plan, "stage": "x".join(map(str, row.patch)), "patch": list(row.patch),
           "batch": row.batch, "channels": row.channels, "goal": row.goal,
           "initial": list(ours.geometry.initial), "dummy_2d": ours.geometry.dummy_2d,
           "ds_scales": ds, "checksum_ours": ours.checksum}
    if peer is not None:
        req = dict(cmd="setup", patch=list(row.patch), batch=row.batch, channels=row.channels,
                   seed=args.seed, kernels=row.kernels)
        setup = peer.request(**req)
        if setup.get("checksum") != ours.checksum and "error" not in setup:
            benchlib.log(f"{res['stage']}: inputs differ between venvs; sending ours as .npz")
            path = Path(args.tmp) / "bench_augment_inputs.npz"
            np.savez(path, image=ours.arrays[0], seg=ours.arrays[1])
            setup = peer.request(**req, inputs=str(path))
        res["checksum_nnunet"] = setup.get("checksum")
        res["nnunet_setup"] = setup
        same = (setup.get("initial") == res["initial"] and setup.get("ds_scales") == ds
                and setup.get("dummy_2d") == res["dummy_2d"])
        res["same_inputs"] = setup.get("checksum") == ours.checksum and same
        if not res["same_inputs"]:
            benchlib.log(f"{res['stage']}: nnU-Net's setup differs from ours: {setup}")
    if not gate_ok:
        return res
    extra = [f"ours_{t}t" for t in args.threads[1:]]
    cells: dict[str, list[dict]] = {"ours": [], **{k: [] for k in extra}, "direct": [], "shipped": []}
    for r in range(args.rounds):
        for key, t in zip(["ours", *extra], args.threads):
            cells[key].append(ours.cell(args.seconds, args.warmup, step0=1000 * r, threads=t))
        if peer is not None and res.get("same_inputs"):
            for mode in ("direct", "shipped"):
                cells[mode].append(peer.request(cmd="cell", mode=mode, seconds=args.seconds,
                                                warmup=args.warmup, processes=args.processes))
        benchlib.log(f"{res['stage']} b{row.batch} round {r}: ours "
                     f"{cells['ours'][-1]['samples_per_s']:.1f} samples/s" +
                     "".join(f", {m} {cells[m][-1].get('samples_per_s', float('nan')):.1f}"
                             for m in (*extra, "direct", "shipped") if cells[m]))
    res["cells"] = cells
    for side, cs in cells.items():
        if cs and not any("error" in c for c in cs):
            res[side] = summary(cs)
    o, d, s = (res.get(k, {}).get("samples_per_s") for k in ("ours", "direct", "shipped"))
    res["ratio_shipped"], res["ratio_direct"] = benchlib.ratio(o, s), benchlib.ratio(o, d)
    res["goal_met"] = None if res["ratio_shipped"] is None else res["ratio_shipped"] >= row.goal
    return res


def flat(row: dict) -> dict:
    """One table line of a row result."""
    get = lambda side, key, k=1.0: (row.get(side, {}).get(key) * k  # noqa: E731
                                    if row.get(side, {}).get(key) is not None else None)
    goal = row.get("goal_met")
    return {"stage": row["stage"] + (f"C{row['channels']}" if row["channels"] > 1 else "")
            + ("(2D)" if row["dummy_2d"] else ""), "batch": row["batch"],
            "o_s": get("ours", "samples_per_s"), "d_s": get("direct", "samples_per_s"),
            "s_s": get("shipped", "samples_per_s"), "o1_s": get("ours_1t", "samples_per_s"), "r_s": row.get("ratio_shipped"),
            "r_d": row.get("ratio_direct"), "o_v": get("ours", "mvox_per_s"),
            "d_v": get("direct", "mvox_per_s"), "s_v": get("shipped", "mvox_per_s"),
            "o_c": get("ours", "cpu_s_per_sample", 1e3), "d_c": get("direct", "cpu_s_per_sample", 1e3),
            "s_c": get("shipped", "cpu_s_per_sample", 1e3), "o_ms": get("ours", "ms_per_batch"),
            "goal": "-" if goal is None else f"{'yes' if goal else 'NO'} (>={row['goal']:g}x)"}


COLUMNS = [("stage", "stage", 18), ("batch", "batch", 5), ("o_s", "ours/s", 8),
           ("o1_s", "ours1t/s", 8), ("d_s", "nn1/s", 7), ("s_s", "nn2/s", 7), ("r_s", "x nn2", 6), ("r_d", "x nn1", 6),
           ("o_v", "ours Mv/s", 9), ("d_v", "nn1 Mv/s", 8), ("s_v", "nn2 Mv/s", 8),
           ("o_c", "ours cpu ms", 11), ("d_c", "nn1 cpu ms", 10), ("s_c", "nn2 cpu ms", 10),
           ("o_ms", "ours ms/b", 9), ("goal", "goal met", 13)]


def machine() -> dict:
    """CPU model, cores and versions of this side."""
    import importlib.metadata as md

    import torch

    model = platform.processor()
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "numpy": np.__version__,
           "python": platform.python_version()}
    for name in ("pgps", "batchgeneratorsv2"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per cell (4; --quick 0.5)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (3; --quick 2)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up batches per cell, discarded")
    p.add_argument("--processes", type=int, default=2, help="nnU-Net shipped: augmenter processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, nargs="+", default=[2],
                   help="torch threads of our side: the first is 'ours'; more add cells (e.g. 2 1)")
    p.add_argument("--quick", action="store_true", help="tiny shapes, 0.5-s cells (smoke test)")
    p.add_argument("--c4", action="store_true", help="add a C=4 row (32x64x64, b 31)")
    p.add_argument("--rows", type=int, nargs="+", default=None, help="only these row indices")
    p.add_argument("--no-nnunet", action="store_true", help="ours only")
    p.add_argument("--json", nargs="?", const="-", default=None,
                   help="write the JSON result to PATH (no PATH: to stdout instead of the table)")
    p.add_argument("--tmp", default="/tmp", help="where inputs go if the venvs' numpy disagree")
    args = p.parse_args(argv)
    args.seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 4.0)
    args.rounds = args.rounds if args.rounds is not None else (2 if args.quick else 3)
    rows = list(QUICK_ROWS if args.quick else ROWS) + ([C4_ROW] if args.c4 else [])
    if args.rows:
        rows = [rows[i] for i in args.rows]
    py = None if args.no_nnunet else benchlib.nnunet_python()
    peer = PeerProcess(py) if py is not None else None  # imports nnU-Net while we gate
    load0 = benchlib.machine_load()
    gate = parity_gate()
    benchlib.log(f"parity: {'ok' if gate['ok'] else 'failed'} {gate.get('checks', gate.get('reason'))}")
    result = {"parity": "ok" if gate["ok"] else "failed", "parity_checks": gate,
              "nnunet": peer is not None, "seconds": args.seconds, "rounds": args.rounds,
              "warmup_batches": args.warmup, "processes": args.processes, "machine": machine(),
              "load_start": load0, "rows": []}
    try:
        if peer is not None:
            result["nnunet_versions"] = peer.wait_ready()["versions"]
        for row in rows:
            result["rows"].append(run_row(row, args, peer, gate["ok"]))
    finally:
        if peer is not None:
            peer.close()
    result["load_end"] = benchlib.machine_load()
    text = json.dumps(result, indent=1)
    if args.json not in (None, "-"):
        Path(args.json).write_text(text)
    if args.json == "-":
        print(text)
        return 0 if gate["ok"] else 1
    print(f"parity: {result['parity']}")
    if peer is None:
        why = "--no-nnunet" if args.no_nnunet else "no .venv-nnunet (bash tools/nnunet_venv.sh builds it)"
        print(f"nnU-Net side skipped ({why}): ours only")
    m = result["machine"]
    print(f"{m['cpu']}, {m['cores']} cores; torch {m['torch']}; nnU-Net "
          f"{result.get('nnunet_versions', {}).get('nnunetv2', '-')}, bgv2 "
          f"{result.get('nnunet_versions', {}).get('batchgeneratorsv2', '-')}; {load0} -> {result['load_end']}")
    benchlib.table(f"augmentation, samples/s etc.: median of {args.rounds} interleaved rounds of "
                   f">= {args.seconds:g} s; ours: CPU torch {args.threads[0]} threads (ours1t: 1); nn1: nnU-Net direct (1 process); "
                   f"nn2: nnU-Net as shipped ({args.processes} processes); cpu ms = CPU-ms per sample",
                   COLUMNS, [flat(r) for r in result["rows"]])
    return 0 if gate["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
