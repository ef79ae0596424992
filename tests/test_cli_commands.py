"""The commands' layout and their choice lists.

Layout (DESIGN.md "Layout"): every console script in pyproject.toml is
``<package>.cli.<command without pgps->:main``, importable, and runnable as
``python -m <module>``; every module in a ``cli/`` folder is one of those commands.
Choices: each option that picks from a fixed list (mode, rules, network, device, codec)
takes it from the one module that defines the names, so a name added there reaches every
command and a command can never offer a name the code refuses.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
COMMANDS = {"pgps-synth", "pgps-convert", "pgps-inspect", "pgps-schedule", "pgps-train",
            "pgps-predict", "pgps-evaluate", "pgps-compare",  # DESIGN.md "Conventions"
            "pgps-upload"}  # issue 11: a finished store to object storage


def test_the_scripts_are_the_designed_commands() -> None:
    assert set(SCRIPTS) == COMMANDS


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_is_a_cli_module_named_after_it(command: str) -> None:
    module, _, func = SCRIPTS[command].partition(":")
    package = module.split(".")[0]
    assert package in ("pgps_data", "pgps_train")
    assert (module, func) == (f"{package}.cli.{command.removeprefix('pgps-')}", "main")
    assert callable(importlib.import_module(module).main)


def test_every_cli_module_is_a_command() -> None:
    found = {f"{pkg}.cli.{p.stem}" for pkg in ("pgps_data", "pgps_train")
             for p in (ROOT / pkg / "cli").glob("*.py") if p.stem != "__init__"}
    assert found == {target.partition(":")[0] for target in SCRIPTS.values()}


def test_every_command_runs_as_python_m_with_help() -> None:
    """``python -m <module> --help`` exits 0 and prints the command's own usage (so the
    module has its ``__main__`` guard and names its program). All run at once: the
    slowest import (about 1.5 s) sets the time, not their sum."""
    procs = {
        command: subprocess.Popen(
            [sys.executable, "-m", SCRIPTS[command].partition(":")[0], "--help"], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command in sorted(SCRIPTS)
    }
    for command, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (command, err)
        assert out.startswith(f"usage: {command} "), (command, out[:200])


# ------------------------------------------------------------------------------ choices


def _choices(parser: argparse.ArgumentParser, option: str) -> tuple:
    # argparse has no public accessor for an option's action; _actions is its list
    (action,) = [a for a in parser._actions if option in a.option_strings]
    return tuple(action.choices)


def _parser(module: str) -> argparse.ArgumentParser:
    return importlib.import_module(module).build_parser()


def _source(name: str) -> tuple:
    from pgps_data.schedule.curriculum import MODES, RULES
    from pgps_data.store.chunking import CODECS
    from pgps_train.devices import DEVICES
    from pgps_train.planning import NETWORKS

    return {"MODES": MODES, "RULES": RULES, "NETWORKS": NETWORKS, "DEVICES": DEVICES,
            "CODECS": CODECS}[name]


@pytest.mark.parametrize("module, option, source", [
    ("pgps_train.cli.train", "--mode", "MODES"),
    ("pgps_train.cli.train", "--rules", "RULES"),
    ("pgps_train.cli.train", "--net", "NETWORKS"),
    ("pgps_train.cli.schedule", "--mode", "MODES"),
    ("pgps_train.cli.schedule", "--rules", "RULES"),
    ("pgps_train.cli.schedule", "--net", "NETWORKS"),
    ("pgps_data.cli.convert", "--codec", "CODECS"),
])
def test_each_choice_list_is_its_source(module: str, option: str, source: str) -> None:
    assert _choices(_parser(module), option) == _source(source)


def test_the_sources_are_what_the_code_accepts() -> None:
    """The names are the ones the code runs: the networks that can be built (networks.py
    holds torch, the names live in planning.py for torch-free parsers), the layouts."""
    import pgps_train.networks as networks
    from pgps_data.errors import PGPSInputError
    from pgps_data.store.chunking import CODECS, LAYOUTS, check_codec
    from pgps_train.planning import NETWORKS, check_network, lattice_step

    for name in NETWORKS:
        assert networks.network_lattice(name, (64, 64, 64)).steps == lattice_step(
            name, (64, 64, 64), (1.0, 1.0, 1.0))
    for refuse in (check_network, lambda n: networks.network_lattice(n, (64, 64, 64))):
        with pytest.raises(PGPSInputError, match="unknown network 'vnet' "
                           r"\(use one of unet, unetr, swinunetr\)"):
            refuse("vnet")
    assert CODECS == tuple(LAYOUTS) and [check_codec(c) for c in CODECS] == list(CODECS)


@pytest.mark.parametrize("cuda", [False, True])
def test_choose_device_defaults_to_cuda_only_where_there_is_one(
        cuda: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default of every --device, and one line for --device cuda without CUDA."""
    import torch

    from pgps_data.errors import PGPSInputError
    from pgps_train.devices import choose_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert choose_device(None) == ("cuda" if cuda else "cpu")
    assert choose_device("cpu") == "cpu"
    if cuda:
        assert choose_device("cuda") == "cuda"
    else:
        with pytest.raises(PGPSInputError) as exc:
            choose_device("cuda")
        assert str(exc.value) == "--device cuda: no CUDA device is available (use --device cpu)"
    with pytest.raises(PGPSInputError, match="unknown device"):
        choose_device("tpu")


@pytest.mark.parametrize("module", ["pgps_train.cli.train", "pgps_train.cli.predict",
                                    "pgps_train.cli.compare"])
def test_every_device_flag_takes_cuda_k(module: str, capsys: pytest.CaptureFixture) -> None:
    """--device cpu, cuda and cuda:K parse in every command (parallel folds, one per GPU);
    anything else is a usage error naming the forms."""
    from pgps_train.devices import device_arg

    parser = (_parser(module) if module != "pgps_train.cli.compare"
              else importlib.import_module(module)._run_parser())
    action = next(a for a in parser._actions if "--device" in a.option_strings)
    assert action.type is device_arg and action.choices is None
    assert [device_arg(d) for d in ("cpu", "cuda", "cuda:0", "cuda:12")] == [
        "cpu", "cuda", "cuda:0", "cuda:12"]
    for bad in ("tpu", "cuda:", "cuda:-1", "cuda:a", "cpu:0"):
        with pytest.raises(argparse.ArgumentTypeError, match="use cuda, cuda:K or cpu"):
            device_arg(bad)


@pytest.mark.parametrize("count", [0, 2])
def test_cuda_k_beyond_the_gpus_is_one_line(count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from pgps_data.errors import PGPSInputError
    from pgps_train.devices import choose_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    with pytest.raises(PGPSInputError) as exc:
        choose_device("cuda:2")
    assert str(exc.value) == ("--device cuda:2: no CUDA device is available (use --device cpu)"
                              if count == 0 else "--device cuda:2: this machine has 2 CUDA "
                              "device(s) (cuda:0 to cuda:1)")
    if count:
        assert choose_device("cuda:1") == "cuda:1"
