"""The PGPS schedule against stage lists worked out by hand from the written rules.

Every expected list below is derived in the comment above it from DESIGN.md "The schedule":
journal-2025 starts at m = step, grows the axis with the smallest unclipped size + step
(ties: lowest axis); miccai-2024 starts at m = (2*step_z, step_y, step_x) and a counter from
1 picks axis counter % 3 (Y, X, Z, Y, ...), skipping axes at P. S = sum ceil((P-m)/step) + 1.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from itertools import pairwise

import pytest

from pgps_data.errors import PGPSInputError
from pgps_data.schedule.curriculum import (
    Curriculum,
    Stage,
    case_grouping,
    forced_slots,
    minimum_patch,
    random_patch_index,
    stage_count,
)
from pgps_train.cli.schedule import main

ANISO = {"patch": (80, 192, 160), "pools": (4, 5, 5)}  # steps (16, 32, 32)


def make(mode="performance", rules="journal-2025", *, patch=(80, 192, 160), pools=(4, 5, 5),
         epochs=1000, ipe=250, batch=2, **kw) -> Curriculum:
    return Curriculum.from_pools(patch=patch, pools=pools, epochs=epochs,
                                 iterations_per_epoch=ipe, batch=batch, mode=mode, rules=rules,
                                 **kw)


def make_steps(patch, steps, mode="efficiency", rules="journal-2025", *, epochs=100, ipe=10,
               batch=2, **kw) -> Curriculum:
    return Curriculum.from_steps(patch=patch, steps=steps, epochs=epochs,
                                 iterations_per_epoch=ipe, batch=batch, mode=mode, rules=rules,
                                 **kw)


def patches(cur: Curriculum) -> list[tuple[int, int, int]]:
    return [s.patch for s in cur.stages]


def assert_stage_count(cur: Curriculum) -> None:
    """The generated stage count equals S = sum_a ceil((P_a - m_a)/step_a) + 1."""
    S = sum(math.ceil((P - m) / st) for P, m, st in zip(cur.final_patch, cur.minimum, cur.steps))
    S += 1
    assert len(cur.patch_sizes) == S == stage_count(cur.final_patch, cur.steps, cur.minimum)
    if cur.mode in ("efficiency", "performance"):
        assert len(cur.stages) == S


# ---- journal-2025 ----------------------------------------------------------------------
# pools (4,5,5) -> steps (16,32,32); m = (16,32,32); P = (80,192,160).
# S = ceil(64/16) + ceil(160/32) + ceil(128/32) + 1 = 4 + 5 + 4 + 1 = 14.
# Growth, candidates size+step (z, y, x), smallest wins, ties to the lowest axis:
#  (16,32,32): 32,64,64 -> z   (32,32,32): 48,64,64 -> z   (48,32,32): 64,64,64 -> z (tie)
#  (64,32,32): 80,64,64 -> y (tie y/x)   (64,64,32): 80,96,64 -> x   (64,64,64): 80,96,96 -> z
#  (80,64,64): z at P; 96,96 -> y, then x, y 128, x 128, y 160, x 160 (x at P), y 192.
# Performance batch int(B*Vf/V), B*Vf = 2*80*192*160 = 4,915,200:
#  16384->300, 32768->150, 49152->100, 65536->75, 131072->37(.5), 262144->18(.75),
#  327680->15, 491520->10, 737280->6(.67), 983040->5, 1310720->3(.75), 1638400->3,
#  2048000->2(.4), 2457600->2.
# Epochs: int(1000/14) = 71 per stage; 13*71 = 923, the last stage takes 923..1000.
JOURNAL_ANISO = [
    ((16, 32, 32), 300), ((32, 32, 32), 150), ((48, 32, 32), 100), ((64, 32, 32), 75),
    ((64, 64, 32), 37), ((64, 64, 64), 18), ((80, 64, 64), 15), ((80, 96, 64), 10),
    ((80, 96, 96), 6), ((80, 128, 96), 5), ((80, 128, 128), 3), ((80, 160, 128), 3),
    ((80, 160, 160), 2), ((80, 192, 160), 2),
]


def test_journal_anisotropic_performance_by_hand():
    cur = make()
    assert cur.minimum == (16, 32, 32) and cur.steps == (16, 32, 32)
    assert [(s.patch, s.batch) for s in cur.stages] == JOURNAL_ANISO
    assert [s.index for s in cur.stages] == list(range(14))
    assert [(s.start_epoch, s.end_epoch) for s in cur.stages] == (
        [(71 * k, 71 * (k + 1)) for k in range(13)] + [(923, 1000)]
    )
    assert [(s.start_iter, s.end_iter) for s in cur.stages] == (
        [(17750 * k, 17750 * (k + 1)) for k in range(13)] + [(230750, 250000)]
    )
    assert cur.total_iterations == 250_000
    assert cur.final_patch == (80, 192, 160) and cur.final_batch == 2
    assert cur.mode == "performance" and cur.rules == "journal-2025"
    assert cur.oversampling == "case_grouping"
    assert_stage_count(cur)


def test_journal_efficiency_keeps_batch_and_patch_list():
    cur = make("efficiency")
    assert [(s.patch, s.batch) for s in cur.stages] == [(p, 2) for p, _ in JOURNAL_ANISO]
    assert cur.patch_sizes == [p for p, _ in JOURNAL_ANISO]
    assert cur.oversampling == "slot"


# Clipping: P = (20,50,40), steps (8,16,16), m = (8,16,16).
# S = ceil(12/8) + ceil(34/16) + ceil(24/16) + 1 = 2 + 3 + 2 + 1 = 8.
#  (8,16,16): 16,32,32 -> z     (16,16,16): 24,32,32 -> z, clipped to 20 (z at P)
#  (20,16,16): y 32 = x 32 -> y  (20,32,16): 48,32 -> x   (20,32,32): 48,48 -> y
#  (20,48,32): 64,48 -> x, clipped to 40 (x at P)   (20,48,40): y 64 clipped to 50.
JOURNAL_CLIP = [(8, 16, 16), (16, 16, 16), (20, 16, 16), (20, 32, 16), (20, 32, 32),
                (20, 48, 32), (20, 48, 40), (20, 50, 40)]


def test_journal_clips_off_lattice_patch():
    cur = make_steps((20, 50, 40), (8, 16, 16), epochs=8)
    assert patches(cur) == JOURNAL_CLIP
    assert_stage_count(cur)


def test_journal_compares_before_clipping():
    # steps (8,4,4), P = (17,24,4), m = (8,4,4); x starts at P.
    # S = ceil(9/8) + ceil(20/4) + 0 + 1 = 2 + 5 + 1 = 8.
    #  (8,4,4): z16 y8 -> y   (8,8,4): 16,12 -> y   (8,12,4): 16,16 tie -> z
    #  (16,12,4): z 24 (unclipped; 17 clipped) vs y 16 -> y
    #  (16,16,4): z 24 vs y 20 -> y (comparing the clipped 17 would have picked z)
    #  (16,20,4): 24 vs 24 tie -> z, clipped to 17   (17,20,4): y 24.
    cur = make_steps((17, 24, 4), (8, 4, 4), epochs=8)
    assert patches(cur) == [(8, 4, 4), (8, 8, 4), (8, 12, 4), (16, 12, 4), (16, 16, 4),
                            (16, 20, 4), (17, 20, 4), (17, 24, 4)]
    assert_stage_count(cur)


def test_journal_performance_batches_b3_and_b1():
    # JOURNAL_CLIP volumes: 2048, 4096, 5120, 10240, 20480, 30720, 38400, 40000.
    # B=3: 120000 // V = 58, 29, 23, 11, 5, 3, 3, 3.  B=1: 40000 // V = 19, 9, 7, 3, 1, 1, 1, 1.
    b3 = make_steps((20, 50, 40), (8, 16, 16), "performance", epochs=8, batch=3)
    assert [s.batch for s in b3.stages] == [58, 29, 23, 11, 5, 3, 3, 3]
    b1 = make_steps((20, 50, 40), (8, 16, 16), "performance", epochs=8, batch=1)
    assert [s.batch for s in b1.stages] == [19, 9, 7, 3, 1, 1, 1, 1]


# ---- miccai-2024 -----------------------------------------------------------------------
# Same anisotropic case: m = (2*16, 32, 32) = (32,32,32).
# S = ceil(48/16) + ceil(160/32) + ceil(128/32) + 1 = 3 + 5 + 4 + 1 = 13.
# counter 1 -> y 64, 2 -> x 64, 3 -> z 48, 4 -> y 96, 5 -> x 96, 6 -> z 64, 7 -> y 128,
# 8 -> x 128, 9 -> z 80, 10 -> y 160, 11 -> x 160, 12 -> z at P (no change), 13 -> y 192.
# PGPS+ batches, walking back from B=2 with int(V[k+1]/V[k] * b[k+1]):
#  2457600/2048000*2 = 2.4 -> 2; ratios 1.25 -> 2.5 -> 2 (x3); 4/3 -> 2.67 -> 2 (x3);
#  294912: 1.5*2 = 3; 196608: 1.5*3 = 4.5 -> 4; 131072: 1.5*4 = 6; 65536: 2*6 = 12;
#  32768: 2*12 = 24. All >= B already. int(1000/13) = 76; last stage 912..1000.
MICCAI_ANISO = [
    ((32, 32, 32), 24), ((32, 64, 32), 12), ((32, 64, 64), 6), ((48, 64, 64), 4),
    ((48, 96, 64), 3), ((48, 96, 96), 2), ((64, 96, 96), 2), ((64, 128, 96), 2),
    ((64, 128, 128), 2), ((80, 128, 128), 2), ((80, 160, 128), 2), ((80, 160, 160), 2),
    ((80, 192, 160), 2),
]


def test_miccai_anisotropic_performance_by_hand():
    cur = make(rules="miccai-2024")
    assert cur.minimum == (32, 32, 32)
    assert [(s.patch, s.batch) for s in cur.stages] == MICCAI_ANISO
    assert [(s.start_epoch, s.end_epoch) for s in cur.stages] == (
        [(76 * k, 76 * (k + 1)) for k in range(12)] + [(912, 1000)]
    )
    assert cur.stages[-1].start_iter == 228_000 and cur.stages[-1].end_iter == 250_000
    assert cur.oversampling == "slot"  # PGPS+ keeps nnU-Net's slot rule
    assert_stage_count(cur)


# Clipping: P = (20,50,40), steps (8,16,16): m = (16,16,16).
# S = ceil(4/8) + ceil(34/16) + ceil(24/16) + 1 = 1 + 3 + 2 + 1 = 7.
# counter 1 -> y 32, 2 -> x 32, 3 -> z 24 clipped 20, 4 -> y 48, 5 -> x 48 clipped 40,
# 6 -> z at P, 7 -> y 64 clipped 50.
MICCAI_CLIP = [(16, 16, 16), (16, 32, 16), (16, 32, 32), (20, 32, 32), (20, 48, 32),
               (20, 48, 40), (20, 50, 40)]


def test_miccai_clips_and_skips_axes_at_p():
    cur = make_steps((20, 50, 40), (8, 16, 16), rules="miccai-2024", epochs=7)
    assert patches(cur) == MICCAI_CLIP
    assert_stage_count(cur)


def test_miccai_performance_batches_b3_and_b1():
    # Volumes 4096, 8192, 16384, 20480, 30720, 38400, 40000.
    # B=3 walking back: 40000/38400*3 = 3.125 -> 3; 1.25*3 = 3.75 -> 3; 1.5*3 = 4.5 -> 4;
    #   1.25*4 = 5; 2*5 = 10; 2*10 = 20.      -> [20, 10, 5, 4, 3, 3, 3]
    # B=1: 1.04 -> 1; 1.25 -> 1; 1.5 -> 1; 1.25 -> 1; 2*1 = 2; 2*2 = 4. -> [4, 2, 1, 1, 1, 1, 1]
    # (the journal formula on the same patches would give 29 and 9 for the first stage:
    #  the floors compound along the walk.)
    b3 = make_steps((20, 50, 40), (8, 16, 16), "performance", "miccai-2024", epochs=7, batch=3)
    assert [s.batch for s in b3.stages] == [20, 10, 5, 4, 3, 3, 3]
    b1 = make_steps((20, 50, 40), (8, 16, 16), "performance", "miccai-2024", epochs=7, batch=1)
    assert [s.batch for s in b1.stages] == [4, 2, 1, 1, 1, 1, 1]
    assert min(s.batch for s in b1.stages) >= 1  # raised to at least B


def test_miccai_walk_is_floating_point():
    # steps (1,1,11), P = (2,1,15): m = (2,1,11), S = 0 + 0 + ceil(4/11) + 1 = 2.
    # V = 22 then 30. In floats 30/22*11 = 14.999999999999998 -> int 14 (exactly 15 in
    # rationals); the published code's float walk gives 14, our journal formula 15.
    miccai = make_steps((2, 1, 15), (1, 1, 11), "performance", "miccai-2024", epochs=2,
                        batch=11)
    assert [(s.patch, s.batch) for s in miccai.stages] == [((2, 1, 11), 14), ((2, 1, 15), 11)]
    # journal with steps (2,1,11) starts at the same m and computes int(11*30/22) = 15 exactly.
    journal = make_steps((2, 1, 15), (2, 1, 11), "performance", epochs=2, batch=11)
    assert [(s.patch, s.batch) for s in journal.stages] == [((2, 1, 11), 15), ((2, 1, 15), 11)]


# ---- network minimum -------------------------------------------------------------------
def test_network_minimum_on_lattice():
    # min (16,64,64) with steps (16,32,32): m = (16,64,64).
    # S = 4 + ceil(128/32) + ceil(96/32) + 1 = 4 + 4 + 3 + 1 = 12.
    # (16,64,64): z 32 < y,x 96 -> z grows to 80 in four stages; then y, x alternate
    # (ties to y): y96, x96, y128, x128, y160, x160 (x at P), y192.
    cur = make("efficiency", min_size=(16, 64, 64))
    assert patches(cur) == [(16, 64, 64), (32, 64, 64), (48, 64, 64), (64, 64, 64),
                            (80, 64, 64), (80, 96, 64), (80, 96, 96), (80, 128, 96),
                            (80, 128, 128), (80, 160, 128), (80, 160, 160), (80, 192, 160)]
    assert_stage_count(cur)


def test_network_minimum_off_lattice_and_above_p():
    steps, P = (16, 32, 32), (80, 192, 160)
    # 20 -> next multiple of 16 = 32; 40 -> 64; 33 -> 64.
    assert minimum_patch(P, steps, "journal-2025", (20, 40, 33)) == (32, 64, 64)
    # 100 -> 112, but never above P_z = 80; 8 < 32 leaves the rule set's minimum.
    assert minimum_patch(P, steps, "journal-2025", (100, 8, 8)) == (80, 32, 32)
    # miccai: 20 < 2*16 = 32 keeps 32; y 40 -> 64; x 8 keeps 32.
    assert minimum_patch(P, steps, "miccai-2024", (20, 40, 8)) == (32, 64, 32)
    # m = (80,32,32): S = 0 + 5 + 4 + 1 = 10; y/x alternate from y (ties to y).
    cur = make("efficiency", min_size=(100, 8, 8))
    assert patches(cur) == [(80, 32, 32), (80, 64, 32), (80, 64, 64), (80, 96, 64),
                            (80, 96, 96), (80, 128, 96), (80, 128, 128), (80, 160, 128),
                            (80, 160, 160), (80, 192, 160)]
    assert_stage_count(cur)


def test_rule_minimum_is_clipped_to_small_patch():
    # P smaller than one step: m = min(step, P) and a single stage.
    cur = make_steps((8, 40, 40), (16, 32, 32), "performance", rules="miccai-2024", epochs=3)
    assert cur.minimum == (8, 32, 32)
    # counter 1 -> y 40 (clipped), 2 -> x 40 (clipped): S = 0 + 1 + 1 + 1 = 3.
    assert patches(cur) == [(8, 32, 32), (8, 40, 32), (8, 40, 40)]
    assert_stage_count(cur)


# ---- epochs, iterations, stage_at ------------------------------------------------------
def test_epochs_fewer_than_stages_refused_in_growing_modes():
    for mode in ("efficiency", "performance"):
        with pytest.raises(PGPSInputError, match="14 stages"):
            make(mode, epochs=13)
    cur = make("performance", epochs=14, ipe=3)  # exactly one epoch per stage
    assert [(s.start_epoch, s.end_epoch) for s in cur.stages] == [(k, k + 1) for k in range(14)]
    assert [(s.start_iter, s.end_iter) for s in cur.stages] == [(3 * k, 3 * k + 3)
                                                                for k in range(14)]
    # constant and random do not split epochs: one epoch is fine.
    assert len(make("constant", epochs=1).stages) == 1
    assert len(make("random", epochs=1).stages) == 14


def test_epoch_remainder_goes_to_last_stage_and_stage_at_boundaries():
    # MICCAI_CLIP (S=7), E=20: int(20/7) = 2 epochs each; 7*2 = 14, the last gets 12..20.
    cur = make_steps((20, 50, 40), (8, 16, 16), rules="miccai-2024", epochs=20, ipe=10)
    assert [(s.start_epoch, s.end_epoch) for s in cur.stages] == [
        (0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 20)]
    assert [(s.start_iter, s.end_iter) for s in cur.stages] == [
        (0, 20), (20, 40), (40, 60), (60, 80), (80, 100), (100, 120), (120, 200)]
    expect = {0: 0, 19: 0, 20: 1, 39: 1, 40: 2, 119: 5, 120: 6, 199: 6}
    assert {t: cur.stage_at(t).index for t in expect} == expect
    assert cur.stage_at(120) is cur.stages[6]
    for bad in (-1, 200):
        with pytest.raises(PGPSInputError, match="outside"):
            cur.stage_at(bad)


def test_constant_mode():
    cur = make("constant", epochs=5, ipe=7, batch=3)
    assert cur.stages == [Stage(0, (80, 192, 160), 3, 0, 5, 0, 35)]
    assert cur.patch_sizes == [(80, 192, 160)]
    assert cur.stage_at(34).patch == (80, 192, 160)
    assert cur.compute_share() == 1.0
    assert cur.oversampling == "slot"


# ---- random mode -----------------------------------------------------------------------
def test_random_mode_patch_list_and_draws():
    cur = make("random", rules="miccai-2024", epochs=40, ipe=350)
    assert cur.patch_sizes == [p for p, _ in MICCAI_ANISO]
    assert all(s.batch == 2 and (s.start_epoch, s.end_epoch) == (0, 40)
               and (s.start_iter, s.end_iter) == (0, 14000) for s in cur.stages)
    draws = [cur.stage_at(t) for t in range(cur.total_iterations)]
    assert all(d in cur.stages for d in draws)
    counts = Counter(d.index for d in draws)
    assert set(counts) == set(range(13))
    assert all(abs(n - 14000 / 13) < 0.2 * 14000 / 13 for n in counts.values())  # uniform
    # A pure function of (seed, step): same in any order, on a fresh instance.
    again = make("random", rules="miccai-2024", epochs=40, ipe=350)
    assert [again.stage_at(t).index for t in reversed(range(500))] == (
        [d.index for d in draws[:500]][::-1])
    other_seed = make("random", rules="miccai-2024", epochs=40, ipe=350, seed=1)
    assert [other_seed.stage_at(t).index for t in range(500)] != [d.index for d in draws[:500]]
    # The derivation itself (128-bit BLAKE2b of "pgps-rpss:<seed>:<step>" modulo S).
    digest = hashlib.blake2b(b"pgps-rpss:0:123", digest_size=16).digest()
    assert random_patch_index(0, 123, 13) == int.from_bytes(digest, "big") % 13
    assert [random_patch_index(0, t, 14) for t in range(10)] == [9, 7, 10, 12, 8, 5, 11, 7, 2, 1]
    assert cur.oversampling == "slot"


# ---- oversampling ----------------------------------------------------------------------
def test_forced_slots():
    # forced iff j >= round(b*(1-p)); Python rounds half to even: round(0.5)=0, round(1.5)=2,
    # round(2.5)=2, round(3.5)=4.
    assert forced_slots(1) == [True]
    assert forced_slots(2) == [False, True]
    assert forced_slots(3) == [False, False, True]
    assert forced_slots(4) == [False, False, True, True]
    assert forced_slots(5) == [False, False, True, True, True]
    assert forced_slots(7) == [False] * 4 + [True] * 3
    assert forced_slots(2, p=0.33) == [False, True]  # round(1.34) = 1
    assert forced_slots(3, p=0.0) == [False] * 3 and forced_slots(3, p=1.0) == [True] * 3


def test_case_grouping():
    # round(B*(1-p)) random cases first; b//B crops each; b%B extra to the last cases.
    assert case_grouping(2, 2) == [(False, 1), (True, 1)]
    assert case_grouping(5, 2) == [(False, 2), (True, 3)]     # forced case takes the odd crop
    assert case_grouping(300, 2) == [(False, 150), (True, 150)]
    assert case_grouping(37, 2) == [(False, 18), (True, 19)]
    assert case_grouping(7, 3) == [(False, 2), (False, 2), (True, 3)]  # round(1.5)=2 random
    assert case_grouping(5, 3) == [(False, 1), (False, 2), (True, 2)]  # extras > forced cases
    assert case_grouping(4, 1) == [(True, 4)]                  # round(0.5)=0: all forced
    assert case_grouping(10, 4) == [(False, 2), (False, 2), (True, 3), (True, 3)]
    assert case_grouping(9, 4) == [(False, 2), (False, 2), (True, 2), (True, 3)]
    for b, B in [(300, 2), (37, 3), (18, 4), (6, 6)]:
        assert sum(n for _, n in case_grouping(b, B)) == b


# ---- compute share, cap, serialisation -------------------------------------------------
def test_compute_share():
    # Journal efficiency, JOURNAL_CLIP, one epoch per stage, B=2:
    # sum V / (8 * 40000) = (2048+4096+5120+10240+20480+30720+38400+40000)/320000 = 151104/320000
    eff = make_steps((20, 50, 40), (8, 16, 16), epochs=8)
    assert eff.compute_share() == pytest.approx(151104 / 320000)
    # Random expects the same (each patch with probability 1/8).
    rnd = make_steps((20, 50, 40), (8, 16, 16), "random", epochs=8)
    assert rnd.compute_share() == pytest.approx(151104 / 320000)
    # Journal performance (JOURNAL_ANISO): 13 stages of 71 epochs, b*V summing to 61,341,696,
    # plus 77 epochs of 4,915,200 -> (71*61341696 + 77*4915200) / (1000*4915200).
    perf = make()
    assert perf.compute_share() == pytest.approx((71 * 61341696 + 77 * 4915200) / 4915200000)
    assert perf.stage_share(perf.stages[0]) == pytest.approx(71 / 1000)


def test_max_voxels_per_step_cap():
    # Off: the published batches. Cap 1,000,000: min(b, 1e6 // V), never below B = 2:
    # 61, 30, 20, 15, 7, 3, 3, 2(.03), then 1 or 0 -> raised to 2.
    assert [s.batch for s in make(max_voxels_per_step=None).stages] == [b for _, b in JOURNAL_ANISO]
    capped = make(max_voxels_per_step=1_000_000)
    assert [s.batch for s in capped.stages] == [61, 30, 20, 15, 7, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert [s.batch for s in make("efficiency", max_voxels_per_step=1000).stages] == [2] * 14
    assert capped.fingerprint() != make().fingerprint()


def test_dict_roundtrip_and_fingerprint():
    cur = make(rules="miccai-2024")
    d = json.loads(json.dumps(cur.to_dict()))
    back = Curriculum.from_dict(d)
    assert back == cur and back.stages == cur.stages
    assert back.fingerprint() == cur.fingerprint() == d["fingerprint"]
    # Stable across processes and versions of this code (change only with a format bump).
    assert make().fingerprint() == "4ca822c8bfdf9c77"
    others = [make(), make(rules="miccai-2024", epochs=999), make("efficiency", "miccai-2024"),
              make(rules="miccai-2024", seed=3)]
    assert len({c.fingerprint() for c in others} | {cur.fingerprint()}) == 5
    tampered = dict(d, stages=d["stages"][:-1])
    with pytest.raises(PGPSInputError, match="differs"):
        Curriculum.from_dict(tampered)
    with pytest.raises(PGPSInputError, match="version"):
        Curriculum.from_dict(dict(d, version=99))


@pytest.mark.parametrize("kwargs, match", [
    ({"patch": (80, 0, 160)}, "patch must be positive"),
    ({"patch": (80, 192)}, "patch must be 3 integers"),
    ({"pools": (4, -1, 5)}, "pools must be at least 0"),
    ({"batch": 0}, "batch must be at least 1"),
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"mode": "fast"}, "unknown mode"),
    ({"rules": "neurips"}, "unknown rules"),
])
def test_bad_input_raises_one_line(kwargs, match):
    with pytest.raises(PGPSInputError, match=match) as info:
        make(**kwargs)
    assert "\n" not in str(info.value)


# ---- CLI -------------------------------------------------------------------------------
BASE = ["--patch", "80", "192", "160", "--pools", "4", "5", "5", "--epochs", "1000",
        "--iterations-per-epoch", "250", "--batch", "2"]


def test_cli_json_shape(capsys):
    assert main([*BASE, "--mode", "performance", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(tuple(r["patch"]), r["batch"]) for r in rows] == JOURNAL_ANISO
    assert all(set(r) == {"patch", "batch", "start_epoch", "end_epoch", "start_iter", "end_iter"}
               for r in rows)
    assert rows[0]["start_epoch"] == 0 and rows[-1]["end_epoch"] == 1000
    assert all(a["end_epoch"] == b["start_epoch"] for a, b in pairwise(rows))
    assert main([*BASE, "--mode", "random", "--rules", "miccai-2024", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [tuple(r["patch"]) for r in rows] == [p for p, _ in MICCAI_ANISO]
    assert all((r["start_epoch"], r["end_epoch"], r["batch"]) == (0, 1000, 2) for r in rows)


def test_cli_table(capsys):
    assert main([*BASE, "--mode", "performance"]) == 0
    out = capsys.readouterr().out
    assert "96.3%" in out and "total" in out and "4,915,200" in out and "80×192×160" in out
    assert "16×32×32" in out and "300" in out


def test_cli_net_lattice_and_min(capsys, monkeypatch):
    import types

    import pgps_train.networks as networks

    def lattice(name, patch, spacing):
        assert (name, tuple(patch), tuple(spacing)) == ("unet", (80, 192, 160), (1.0, 1.0, 1.0))
        return types.SimpleNamespace(steps=(16, 32, 32), minimum=(16, 64, 64))

    monkeypatch.setattr(networks, "network_lattice", lattice)
    argv = ["--patch", "80", "192", "160", "--net", "unet", "--epochs", "100", "--batch", "2",
            "--mode", "efficiency", "--json"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["patch"] for r in rows][:2] == [[16, 64, 64], [32, 64, 64]] and len(rows) == 12
    assert main([*BASE, "--mode", "efficiency", "--min", "16", "64", "64", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 12


def test_cli_plot(tmp_path, capsys):
    out = tmp_path / "schedule.png"
    assert main([*BASE, "--plot", str(out), "--json"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(capsys.readouterr().out)  # stdout stays pure JSON


@pytest.mark.parametrize("argv", [
    [*BASE[:-6], "--epochs", "13", "--iterations-per-epoch", "250", "--batch", "2"],  # E < S
    ["--patch", "80", "0", "160", *BASE[4:]],                       # patch not positive
    ["--patch", "80", "192", *BASE[4:]],                            # two values
    ["--patch", "80", "192", "160", *BASE[8:]],                     # no lattice
    [*BASE, "--steps", "16", "32", "32"],                           # pools and steps
    ["--patch", "8", "8", "8", "--pools", "1", "-1", "1", "--epochs", "9", "--batch", "1"],
    [*BASE, "--mode", "fast"],
    [*BASE, "--plot", "/nonexistent/dir/x.png"],
])
def test_cli_bad_input_prints_one_error_line(argv, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgps-schedule: error: ")
    assert "Traceback" not in captured.err and captured.out == ""
