"""The training loop: one readable function from store to checkpoints.

    cfg = TrainConfig(store="Task.zarr", out="runs/eff", mode="efficiency")
    result = train(cfg)

Everything the loop needs from the data comes from the store (channels, labels, spacing,
cases) and the curriculum (patch and batch per step); the loader streams the batches.
nnU-Net's optimisation recipe: SGD with Nesterov momentum 0.99, lr 1e-2, weight decay
3e-5, poly decay (exponent 0.9) over all iterations (not reset at stage changes),
gradient clipping at 12, autocast on CUDA, and nnU-Net's objective with deep supervision
(losses): Dice + cross-entropy over the label values, or, for a region dataset, one
sigmoid output per region with Dice + binary cross-entropy (the store's
:class:`~pgps_data.labels.Labels` decides, as nnU-Net's ``has_regions``).

What protects a run: an incomplete store is refused (unless ``allow_incomplete``); a
resume reloads the run's config.json and refuses other settings or another store
(run_config); checkpoints are atomic and carry their own sha256 (checkpoint); SIGINT and
SIGTERM end the current step, checkpoint and raise Interrupted, and a dead or failing
loader worker becomes one line after the same checkpoint (interrupts). Data wait is
only the time a step waited for its batch; validation, checkpoints and loader start-up
are timed apart (runlog); the voxels trained on and the label values fed to the loss are
counted per stage (run_records).
"""

from __future__ import annotations

import json
import signal
import time
from contextlib import ExitStack
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch

from pgps_data import Curriculum, make_loader, open_store
from pgps_data.errors import PGPSInputError
from pgps_data.labels import Labels
from pgps_data.loader.pipeline import make_validation_loader
from pgps_data.loader.watchdog import LoaderWorkerError
from pgps_data.store.splits import fold_cases, load_splits
from pgps_train.augment.pipeline import augmentation_for
from pgps_train.checkpoint import (
    FINAL,
    LATEST,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pgps_train.devices import choose_device
from pgps_train.distributed import (
    SINGLE,
    RankFailure,
    Ranks,
    any_rank,
    collectives,
    device_for,
    from_main,
    globalise,
    joined,
    ranks_from_env,
    sum_across,
)
from pgps_train.final_patch import resolve_patch
from pgps_train.interrupts import Interrupted, StopSignals, WorkerDataError, loader_batches
from pgps_train.losses import objective_for
from pgps_train.networks import build_network
from pgps_train.run_config import (
    TrainConfig,
    check_agrees,
    check_store,
    recorded_identity,
    saved_config,
    store_identity,
    write_json,
    write_model_json,
    write_run_record,
)
from pgps_train.run_dir import check_run_folder, clear_run, run_lock
from pgps_train.run_records import DeliveredCrops
from pgps_train.runlog import RunLog
from pgps_train.validation import validate


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,  # noqa: ANN001
          log=print, ranks: Ranks | None = None) -> dict[str, Any]:
    """Train one run; returns the run summary (times, last validation, final Dice).

    ``resume`` continues the run in ``cfg.out`` from its latest checkpoint: ``cfg`` must
    agree with the run's config.json and the store must be the one it trained on (see
    run_config). SIGINT/SIGTERM stop after the current step with a checkpoint and raise
    :class:`Interrupted`; a failed loader worker raises a one-line error after the same.
    A folder that already holds a run needs ``resume`` or ``overwrite``; the run holds the
    folder's lock throughout (see run_dir).

    ``ranks`` (default: torchrun's environment, see pgps_train.distributed): with more than
    one, the run is data-parallel (DistributedDataParallel): the curriculum's batch is the
    global batch, each rank trains on its share of every step's slots with the global
    loss, rank 0 alone holds the folder, writes checkpoints and logs; every rank stops on
    the same step. A dead or silent rank ends the others with :class:`RankFailure`.
    """
    ranks = ranks_from_env() if ranks is None else ranks
    # --device cuda without CUDA: one line before any folder is made
    device = device_for(choose_device(cfg.device), ranks)
    out = Path(cfg.out)
    with joined(ranks, device), ExitStack() as held:  # _train's DDP wrapper dies first
        def prepare() -> None:
            held.enter_context(run_lock(out))
            check_run_folder(out, resume=resume, overwrite=overwrite)
            if overwrite and not resume:
                clear_run(out)  # the old run's checkpoints must never be resumed by this one
            out.mkdir(parents=True, exist_ok=True)

        from_main(ranks, prepare, device=device)  # rank 0 holds the folder
        stop = held.enter_context(StopSignals())
        return _train(cfg, out, resume, log, stop, ranks, device)


def _train(cfg: TrainConfig, out: Path, resume: bool, log, stop: StopSignals,  # noqa: ANN001, C901, PLR0912, PLR0915
           ranks: Ranks = SINGLE, device_name: str | None = None) -> dict[str, Any]:
    device = torch.device(device_name or cfg.device)
    main = ranks.main
    if not main:
        log = _silent  # noqa: PLW0127 - rank 0 prints for the job
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
        if device.index is not None:  # cuda:K: memory statistics and new tensors on GPU K
            torch.cuda.set_device(device)

    # -- data ------------------------------------------------------------------------
    store = open_store(cfg.store)
    if not store.complete and not cfg.allow_incomplete:
        missing = store.missing_cases
        what = (f"{len(missing)} training case(s) missing ({', '.join(missing[:3])}"
                f"{' ...' if len(missing) > 3 else ''})" if missing else "it did not finish")
        raise PGPSInputError(
            f"{store.path}: conversion incomplete, {what}; rerun pgps-convert on the raw "
            "dataset to finish it, or pass --allow-incomplete to train on the "
            f"{len(store.case_ids)} complete case(s)")
    ckpt = None
    if resume:  # the same run on the same store, or a one-line refusal (run_config)
        def resumed() -> dict[str, Any] | None:
            check_agrees(asdict(cfg), saved_config(out), out)
            found = None
            if (out / LATEST).exists():
                found = load_checkpoint(out / LATEST, log=log)
            else:
                log(f"{out}: no checkpoint to resume from; starting at step 0")
            check_store(store, recorded_identity(out, found), out)
            return found

        ckpt = from_main(ranks, resumed, device=device)  # rank 0 reads it, sends it on
    identity = store_identity(store)
    splits = load_splits(cfg.splits, store.case_ids) if cfg.splits else None
    train_ids, val_ids = fold_cases(store.case_ids, cfg.fold, splits)
    labels = Labels.from_store(store)
    objective = objective_for(labels).to(device)  # softmax over values, or a sigmoid per region
    patch = resolve_patch(cfg, store)
    net = build_network(cfg.net, in_channels=store.channels, num_classes=labels.num_outputs,
                        patch=patch, spacing=store.spacing, **cfg.net_kwargs).to(device)
    grid = dict(patch=patch, steps=net.lattice.steps, min_size=net.lattice.minimum,
                iterations_per_epoch=cfg.iterations_per_epoch, batch=cfg.batch,
                rules=cfg.rules, seed=cfg.seed)
    epochs = cfg.epochs or len(Curriculum.from_steps(epochs=10**6, mode="efficiency",
                                                     **grid).patch_sizes)
    cur = Curriculum.from_steps(epochs=epochs, mode=cfg.mode, **grid)
    augment_spec, augmenter = augmentation_for(cfg, store, labels)
    try:  # data-parallel: each rank serves its share of the global batch's slots
        loader = make_loader(store, cur, workers=cfg.workers, seed=cfg.seed, cases=train_ids,
                             augment=augment_spec, rank=ranks.rank, world=ranks.world)
    except ValueError as exc:  # a stage whose global batch is smaller than the world
        raise PGPSInputError(f"--batch {cfg.batch} on {ranks.world} processes: {exc}") from None
    val_loader = make_validation_loader(store, cur, val_ids, batches=cfg.eval_batches,
                                        workers=min(cfg.workers, 2), seed=cfg.seed + 1)

    # -- optimisation ------------------------------------------------------------------
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=True, weight_decay=cfg.weight_decay)
    total = cur.total_iterations
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - min(s, total) / total) ** 0.9)
    amp_dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() \
        else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and amp_dtype == torch.float16)

    start = 0
    if ckpt is not None:
        _restore(ckpt, out / LATEST, net=net, optimizer=opt, scheduler=sched, scaler=scaler,
                 loader=loader)
        set_rng_state(ckpt["rng"])
        start = int(ckpt["step"])
    model, reduce = net, None
    if ranks.distributed:  # every rank now holds the same weights (the seed, or the checkpoint)
        with collectives(ranks, "starting data-parallel training"):
            # every parameter gets a gradient: the weight-0 deep-supervision head is a
            # slice of the stacked outputs (a zero gradient, as in one process)
            model = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None)
        reduce = partial(globalise, ranks)
    if main:
        write_model_json(out, net, store, patch, labels)
        write_run_record(out, asdict(cfg), identity)
        (out / "curriculum.json").write_text(json.dumps(cur.to_dict(), indent=1))
    runlog = RunLog(out, cur, resume_from=start, quiet=cfg.quiet, log=log, device=device,
                    labels=labels, write=main)
    runlog.schedule(cur)
    t_wait = t_compute = 0.0
    if ckpt is not None and "runlog" in ckpt:  # older checkpoints: totals since the resume
        t_compute, t_wait = runlog.load_state_dict(ckpt["runlog"])
        if not main:  # the delivered crops so far are global: rank 0 alone carries them on
            runlog.crops = DeliveredCrops()

    def crops_total() -> DeliveredCrops:
        """The delivered crops of the whole job (a collective: every rank calls it)."""
        if not ranks.distributed:
            return runlog.crops
        return runlog.crops.summed(len(cur.stages), partial(sum_across, ranks), device)

    saved_at = start if ckpt is not None else None

    def checkpoint(done: int) -> None:
        nonlocal saved_at
        with runlog.timers.timed("checkpoint"):
            runlog.flush()
            state = runlog.state_dict(t_compute, t_wait)
            state["crops"] = crops_total().state_dict()
            # The loader's state is its next step; `done` says it even when a batch beyond
            # it was already fetched (a stop between fetch and compute).
            if main:  # one writer; the others' state is the same (DDP keeps them equal)
                save_checkpoint(out / LATEST, {
                    "model": net.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                    "loader": {**loader.state_dict(), "next_step": done}, "rng": rng_state(),
                    "step": done, "store_identity": identity, "runlog": state,
                })
        saved_at = done

    # -- the loop --------------------------------------------------------------------------
    t_start = time.perf_counter()
    done, stopped, failure, signalled = start, None, None, False
    stop.graceful = True  # from here a signal ends the run after the current step
    net.train()
    try:
        t_prev = time.perf_counter()
        for batch in loader_batches(loader):
            t_got = time.perf_counter()
            # The first batch of a process waits for the workers to start: start-up, not
            # data wait. Later, wait is only the time next() took (t_prev is taken after
            # validation and checkpoints, which have their own columns).
            wait = t_got - t_prev if done > start else 0.0
            if done == start:
                runlog.timers.add("loader_startup", t_got - t_prev)
            t_wait += wait
            step, stage = batch["step"], cur.stage_at(batch["step"])
            runlog.enter(stage)
            x = batch["image"].to(device, non_blocking=True)
            values = batch["label"].to(device, non_blocking=True)
            augment = 0.0
            if augmenter is not None:  # float32, no grad, outside autocast; timed apart
                t_aug = time.perf_counter()
                x, values = augmenter(batch, x, values)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                augment = time.perf_counter() - t_aug
            runlog.delivered(stage, x, values)  # voxels and label histogram, on the device
            y = objective.target(values)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=device.type == "cuda"):
                outputs = model(x)
            loss = objective.loss(outputs, y, reduce)  # the global batch's, on every rank
            opt.zero_grad(set_to_none=True)
            with collectives(ranks, "averaging gradients"):
                # DDP averages the ranks' gradients: world × loss makes the average the
                # global batch's gradient (pgps_train.distributed)
                scaler.scale(loss * ranks.world if ranks.distributed else loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_value = float(loss.detach())  # synchronises CUDA: the step's compute ends here
            t_end = time.perf_counter()
            runlog.step(step, stage, loss_value, compute=t_end - t_got - augment, wait=wait,
                        augment=augment, fetched=batch.get("fetched", (0, 0)))
            t_compute += t_end - t_got - augment
            done = step + 1

            if done % cfg.eval_every == 0 or done == total:
                dice = validate(net, val_loader, objective, device, amp_dtype, runlog.timers)
                runlog.eval_row(step, stage, loss_value, dice, sched.get_last_lr()[0],
                                t_compute, t_wait)
                net.train()
            if done == stage.end_iter or done % cfg.save_every == 0 or done == total:
                checkpoint(done)
            # every rank stops on the same step: a signal or the time limit of any of them
            signalled, time_up = any_rank(
                ranks, stop.signum is not None, bool(
                    cfg.max_seconds and done < total
                    and time.perf_counter() - t_start >= cfg.max_seconds), device=device)
            if signalled:  # SIGINT/SIGTERM: the step is complete, stop here
                break
            if time_up:
                stopped = done
                if saved_at != done:
                    checkpoint(done)
                log(f"max_seconds {cfg.max_seconds:g} reached after {done} of {total} "
                    "iterations (checkpoint written; --resume continues)")
                break
            t_prev = time.perf_counter()
    except (LoaderWorkerError, WorkerDataError, RankFailure) as exc:
        failure = exc
    except BaseException:
        runlog.close()
        raise
    finally:
        loader.close()  # no worker outlives the loop, however it ended
        val_loader.close()

    # -- an early end: a signal, or a failed loader (whose workers may have had our signal)
    if isinstance(failure, RankFailure):  # the others are gone: no collective, no new file
        runlog.close()
        hint = "" if saved_at is None else f"; checkpoint at step {saved_at} (--resume continues)"
        raise RankFailure(f"{failure}{hint}") from None
    if failure is not None and stop.signum is None and not (
            isinstance(failure, LoaderWorkerError) and stop.wait_for_signal(0.5)):
        # keep the steps done: the state in memory is consistent; with other ranks the
        # checkpoint would need them (a collective), so the last one stands
        if done > start and saved_at != done and not ranks.distributed:
            checkpoint(done)
        runlog.close()
        hint = "" if saved_at is None else f"; checkpoint at step {saved_at} (--resume continues)"
        raise type(failure)(f"{failure}{hint}") from None
    if stop.signum is not None or signalled:
        if saved_at != done:
            checkpoint(done)  # a second signal here aborts the write: the old file stays
        runlog.close()
        raise Interrupted(stop.signum or signal.SIGTERM, done, checkpoint=True)
    stop.graceful = False

    if main:
        with runlog.timers.timed("checkpoint"):
            save_checkpoint(out / FINAL, {"model": net.state_dict(), "step": stopped or total})
    if ranks.distributed:  # the job's delivered crops (the last collective of the run)
        with collectives(ranks, "summing the delivered crops"):
            runlog.crops = crops_total()
    summary = runlog.finish(t_compute, t_wait)
    if ranks.distributed:
        summary["world_size"] = ranks.world
    if stopped is not None:
        summary["stopped_at_step"] = stopped
    if not main:
        return summary  # rank 0 evaluates and writes the summary
    if cfg.final_eval:
        from pgps_train.final_eval import evaluate_run  # noqa: PLC0415

        summary["final"] = evaluate_run(out, net, store, val_ids, device, log=log,
                                        quiet=cfg.quiet)
    write_json(out / "summary.json", summary)
    return summary


def _silent(*args: Any, **kwargs: Any) -> None:
    """A data-parallel follower's log: rank 0 prints for the job."""


def _restore(ckpt: dict[str, Any], path: Path, **parts: Any) -> None:
    """Load each part's state from ``ckpt``; a checkpoint of another network is one line."""
    for name, part in parts.items():
        try:
            part.load_state_dict(ckpt["model" if name == "net" else name])
        except PGPSInputError:
            raise
        except (KeyError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            raise PGPSInputError(
                f"{path}: its {name} state does not fit this run ({type(exc).__name__}: "
                f"{first}); resume with the settings the run was started with, or start a "
                "new run with another --out") from None
