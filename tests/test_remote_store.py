"""Stores read over HTTP and S3 (both on 127.0.0.1) stream exactly the local batches.

The HTTP server (``tests/range_server.py``) honours Range and cannot list, like a bucket
behind a CDN; the S3 endpoint is moto's server mode, the store put there by pgps-upload.
Failures are one line each: unreachable, not a store, a stalled server (bounded retries),
a server ignoring Range, a corrupt chunk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pgps_data import Curriculum, make_loader, open_store
from pgps_data.errors import PGPSInputError
from pgps_data.schedule.augment_geometry import AugmentSpec
from pgps_data.store import remote
from pgps_data.store.completeness import CASE_INDEX
from pgps_data.store.upload import MARKER, upload
from tests.loader_store import build_store
from tools.range_server import RangeServer

KEYS = ("image", "label", "forced_fg", "forced_class", "origins")


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("remote"), cases=3)


@pytest.fixture(scope="module")
def http_url(local):
    with RangeServer(local.parent) as url:
        yield f"{url}/{local.name}"


@pytest.fixture(autouse=True)
def _fast_failures(monkeypatch):
    monkeypatch.setenv("PGPS_REMOTE_TIMEOUT", "5")
    monkeypatch.setenv("PGPS_REMOTE_RETRIES", "1")
    remote.CACHE.clear()


def _cur() -> Curriculum:
    return Curriculum.from_steps(patch=(8, 16, 16), steps=(4, 8, 8), epochs=4,
                                 iterations_per_epoch=2, batch=3, mode="performance")


def _same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) == _cur().total_iterations
    for x, y in zip(a, b):
        for key in KEYS:
            assert torch.equal(x[key], y[key]), key
        assert x["case_ids"] == y["case_ids"]


def test_the_root_carries_the_case_index(local) -> None:
    attrs = json.loads((local / "zarr.json").read_text())["attributes"]
    store = open_store(local)
    assert sorted(attrs[CASE_INDEX]["cases"]) == store.case_ids
    assert sorted(attrs[CASE_INDEX]["test"]) == store.test_ids
    assert CASE_INDEX not in store.meta  # the index is the store's business, not metadata


@pytest.mark.parametrize("workers", [0, 2])
def test_an_http_store_streams_the_local_batches(local, http_url, workers) -> None:
    there, here = open_store(http_url), open_store(local)
    assert there.remote and not here.remote
    assert there.case_ids == here.case_ids and there.test_ids == here.test_ids
    assert there.identity == here.identity
    spec = AugmentSpec(p_rotation=1.0, p_scaling=1.0)  # the enlarged, warped reads too
    for augment in (None, spec):
        a = list(make_loader(there, _cur(), workers=workers, seed=5, augment=augment))
        b = list(make_loader(here, _cur(), workers=workers, seed=5, augment=augment))
        _same_batches(a, b)
        assert all(x["fetched"] == (0, 0) for x in b)
        fetched = [x["fetched"] for x in a]
        assert all(r > 0 and n > 0 for r, n in fetched[:1])  # the first step fetched
        if augment is not None:
            assert all(torch.equal(x["warp_image"], y["warp_image"]) for x, y in zip(a, b))


def test_small_crops_come_from_the_chunk_cache_which_is_bounded(local, http_url,
                                                                monkeypatch) -> None:
    case = open_store(http_url)[open_store(local).case_ids[0]]
    case.read((1, 2, 3), (8, 16, 16))
    r0, b0 = remote.counts()
    image, label = case.read((2, 3, 4), (8, 16, 16))  # inside the chunks already fetched
    assert remote.counts() == (r0, b0)
    want = open_store(local)[case.id].read((2, 3, 4), (8, 16, 16))
    assert np.array_equal(image, want[0]) and np.array_equal(label, want[1])
    monkeypatch.setenv("PGPS_REMOTE_CACHE_MB", "0")  # nothing kept: every read fetches
    remote.CACHE.clear()
    case.read((2, 3, 4), (8, 16, 16))
    r1, _ = remote.counts()
    case.read((2, 3, 4), (8, 16, 16))
    assert remote.counts()[0] - r1 == r1 - r0 > 0  # shard indexes stay: only the chunks


def test_a_read_fetches_the_chunks_it_touches_in_one_round_trip(local, http_url,
                                                                monkeypatch) -> None:
    """Latency, not bandwidth, bounds small remote reads: a read's missing chunks (and
    shard indexes) go out together, not one request after another."""
    case = open_store(http_url)[open_store(local).case_ids[0]]
    rounds: list[int] = []
    fetch_many = remote.RemoteStore.fetch_many

    def counted(self, items):  # noqa: ANN001, ANN202
        rounds.append(len(items))
        return fetch_many(self, items)

    monkeypatch.setattr(remote.RemoteStore, "fetch_many", counted)
    shape = tuple(case.shape)  # 24 x 44 x 42 in chunks of 24 x 32 x 32: 4 per array
    image, label = case.read((0, 0, 0), shape)
    # per array: its one shard's index, then its stored chunks together (3 of the image's
    # 4, 2 of the label's: chunks all fill are not stored); one at a time would be 1s only
    assert rounds == [1, 3, 1, 2]
    want = open_store(local)[case.id].read((0, 0, 0), shape)
    assert np.array_equal(image, want[0]) and np.array_equal(label, want[1])


def test_training_logs_requests_and_bytes_per_stage(local, http_url, tmp_path) -> None:
    from pgps_train.networks import tiny_kwargs
    from pgps_train.trainer import TrainConfig, train

    cfg = TrainConfig(store=http_url, out=str(tmp_path / "run"), mode="performance",
                      patch=[8, 16, 16], epochs=10, iterations_per_epoch=1, batch=2,
                      workers=1, eval_every=10**9, eval_batches=1, save_every=10**9,
                      device="cpu", fold="all", final_eval=False, quiet=True,
                      net_kwargs=tiny_kwargs("unet"))
    summary = train(cfg)
    stages = summary["stages"]
    assert len(stages) >= 2
    assert all(s["remote_requests"] > 0 and s["remote_bytes"] > 0 for s in stages[:1])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["store"] == http_url


def test_a_corrupt_chunk_is_one_line_naming_it(local, tmp_path) -> None:
    bad = tmp_path / local.name
    shutil.copytree(local, bad)
    case_id = open_store(bad).case_ids[0]
    shard = sorted((bad / "cases" / case_id / "image" / "c").rglob("*"))
    shard = next(p for p in shard if p.is_file())
    data = bytearray(shard.read_bytes())
    data[20] ^= 0xFF  # inside the first inner chunk's bytes (the index is at the end)
    shard.write_bytes(bytes(data))
    with RangeServer(tmp_path) as url:
        case = open_store(f"{url}/{local.name}")[case_id]
        with pytest.raises(PGPSInputError) as err:
            case.read((0, 0, 0), case.shape)
    line = str(err.value)
    assert "\n" not in line and f"/cases/{case_id}/image" in line
    assert url in line and "crc32c" in line


def test_unreachable_not_a_store_and_no_range_are_one_line(local, tmp_path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(PGPSInputError, match=r"unreachable .* after 2 tries"):
        open_store(f"http://127.0.0.1:{port}/x.zarr")
    assert time.monotonic() - t0 < 10
    (tmp_path / "notastore").mkdir()
    (tmp_path / "notastore" / "file.txt").write_text("hi")
    with RangeServer(tmp_path) as url:
        with pytest.raises(PGPSInputError, match="no store there"):
            open_store(f"{url}/notastore")
    shutil.copytree(local, tmp_path / local.name)
    with RangeServer(tmp_path, mode="ignore-range") as url:
        store = open_store(f"{url}/{local.name}")
        with pytest.raises(PGPSInputError, match="honour HTTP Range"):
            store[store.case_ids[0]].read((0, 0, 0), (4, 4, 4))


def test_a_stalled_server_times_out_after_bounded_retries(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PGPS_REMOTE_TIMEOUT", "0.5")
    with RangeServer(tmp_path, mode="stall") as url:
        t0 = time.monotonic()
        with pytest.raises(PGPSInputError, match=r"timed out \(0.5 s\) after 2 tries"):
            open_store(f"{url}/s.zarr")
        assert time.monotonic() - t0 < 4


def test_the_cli_reads_a_url_and_refuses_to_write_one(http_url, tmp_path) -> None:
    run = subprocess.run([sys.executable, "-m", "pgps_data.cli.inspect", http_url, "--verify"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert re.search(r"verified [1-9]\d* chunks in \d+ arrays of 4 cases: all good", run.stdout)
    run = subprocess.run([sys.executable, "-m", "pgps_data.cli.convert", str(tmp_path),
                          "s3://bucket/x.zarr"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "pgps-upload" in run.stderr


# ------------------------------------------------------------------------------------ S3
@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(key, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    bucket = f"pgps-{os.getpid()}-{time.monotonic_ns()}"
    fs.mkdir(bucket)
    return fs, bucket


def test_an_uploaded_s3_store_streams_the_local_batches(local, s3) -> None:
    fs, bucket = s3
    url = f"s3://{bucket}/{local.name}"
    summary = upload(local, url, log=lambda line: None)
    assert summary["sent"] == summary["files"] - 1 and not fs.exists(f"{bucket}/{local.name}/{MARKER}")
    there, here = open_store(url), open_store(local)
    assert there.identity == here.identity
    _same_batches(list(make_loader(there, _cur(), workers=2, seed=2)),
                  list(make_loader(here, _cur(), workers=2, seed=2)))
    with pytest.raises(PGPSInputError, match="already uploaded"):
        upload(local, url, log=lambda line: None)


def test_an_interrupted_upload_never_opens_and_a_rerun_finishes(local, s3, monkeypatch) -> None:
    fs, bucket = s3
    url = f"s3://{bucket}/{local.name}"
    import pgps_data.store.upload as upload_mod

    real_fs = upload_mod._fs

    class DiesAfterFive:  # the upload's filesystem, interrupted at its sixth file
        def __init__(self, fs):  # noqa: ANN001
            self.fs, self.n = fs, 0

        def __getattr__(self, name):  # noqa: ANN001, ANN204
            return getattr(self.fs, name)

        def put_file(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
            self.n += 1
            if self.n > 5:
                raise KeyboardInterrupt
            return self.fs.put_file(*args, **kwargs)

    def interrupted(u):  # noqa: ANN001, ANN202
        fs_, base = real_fs(u)
        return DiesAfterFive(fs_), base

    monkeypatch.setattr(upload_mod, "_fs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        upload(local, url, log=lambda line: None)
    monkeypatch.setattr(upload_mod, "_fs", real_fs)
    with pytest.raises(PGPSInputError, match="no store there"):
        open_store(url)  # no root yet: nothing half-uploaded is served
    lines: list[str] = []
    summary = upload(local, url, log=lines.append)
    assert summary["skipped"] == 5 and "continuing" in lines[0]
    assert open_store(url).identity == open_store(local).identity


def test_upload_refuses_a_prefix_holding_other_objects(local, s3) -> None:
    fs, bucket = s3
    fs.pipe_file(f"{bucket}/theirs/data.bin", b"not ours")
    with pytest.raises(PGPSInputError, match="not empty"):
        upload(local, f"s3://{bucket}/theirs", log=lambda line: None)
    assert fs.cat_file(f"{bucket}/theirs/data.bin") == b"not ours"
    assert fs.ls(f"{bucket}/theirs") == [f"{bucket}/theirs/data.bin"]


def test_an_array_gone_from_the_server_is_one_line_not_zeros(local, tmp_path) -> None:
    copy = tmp_path / local.name
    shutil.copytree(local, copy)
    case_id = open_store(copy).case_ids[0]
    with RangeServer(tmp_path) as url:
        case = open_store(f"{url}/{local.name}")[case_id]  # arrays opened, nothing read yet
        shutil.rmtree(copy / "cases" / case_id / "image")
        with pytest.raises(PGPSInputError, match="array is missing") as err:
            case.read((0, 0, 0), (8, 16, 16))
    assert f"{local.name}/cases/{case_id}/image" in str(err.value)


def test_upload_to_a_file_url_makes_its_folders_and_opens_there(local, tmp_path) -> None:
    url = f"file://{tmp_path}/deep/er/{local.name}"
    upload(local, url, verify="sizes", log=lambda line: None)
    assert open_store(url).identity == open_store(local).identity
    assert not (tmp_path / "deep" / "er" / local.name / MARKER).exists()


def test_no_s3_credentials_is_one_line_without_retries(monkeypatch) -> None:
    import s3fs

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE",
                "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()
    retries = remote.COUNTS["retries"]
    with pytest.raises(PGPSInputError, match="no credentials"):
        open_store("s3://no-such-bucket-pgps/x.zarr")
    assert remote.COUNTS["retries"] == retries
