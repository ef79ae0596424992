"""The subset of zarr v3 array metadata (``zarr.json``) the fast reader implements.

:func:`parse_meta` turns an array's ``zarr.json`` document into the plain facts the
reader needs (shape, dtype with byte order, fill value, chunk key encoder, sharding and
index layout, bytes-to-bytes codecs), or None for anything it does not support, so that
:mod:`pgps_data.store.fastread` falls back to zarr-python.
"""

from __future__ import annotations

import numpy as np


def parse_meta(doc: dict) -> dict | None:
    """The subset of zarr v3 array metadata this reader implements, or None."""
    if doc.get("zarr_format") != 3 or doc.get("node_type") != "array":
        return None
    if doc.get("storage_transformers") or doc.get("chunk_grid", {}).get("name") != "regular":
        return None
    try:
        dtype = np.dtype(doc["data_type"])
    except (TypeError, KeyError):
        return None
    if dtype.kind not in "biuf":
        return None
    fill = _fill_value(doc.get("fill_value"), dtype)
    key = _key_encoder(doc.get("chunk_key_encoding", {}))
    if fill is None or key is None:
        return None
    shape = tuple(doc["shape"])
    outer = tuple(doc["chunk_grid"]["configuration"]["chunk_shape"])
    codecs = doc.get("codecs", [])
    meta = {
        "shape": shape,
        "fill_value": fill,
        "key": key,
        "shard": None,
        "index_start": False,
        "index_crc": False,
        "index_be": False,
        "chunks": outer,
    }
    if len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed":
        conf = codecs[0]["configuration"]
        inner = tuple(conf["chunk_shape"])
        if len(inner) != len(shape) or any(o % i for o, i in zip(outer, inner)):
            return None
        index = conf.get("index_codecs", [])
        names = [c["name"] for c in index]
        if names not in (["bytes"], ["bytes", "crc32c"]):
            return None
        meta.update(
            shard=outer,
            chunks=inner,
            index_start=conf.get("index_location") == "start",
            index_crc="crc32c" in names,
            index_be=index[0].get("configuration", {}).get("endian") == "big",
        )
        codecs = conf.get("codecs", [])
    chain = _codec_chain(codecs, dtype)
    if chain is None or len(meta["chunks"]) != len(shape) or min(meta["chunks"], default=1) < 1:
        return None
    meta["dtype"], meta["decoders"] = chain
    return meta


def _codec_chain(codecs: list, dtype: np.dtype) -> tuple[np.dtype, list] | None:
    """(stored dtype with byte order, bytes-to-bytes decoders) or None if unsupported."""
    if not codecs or codecs[0]["name"] != "bytes":
        return None
    endian = codecs[0].get("configuration", {}).get("endian", "little")
    stored = dtype.newbyteorder(">" if endian == "big" else "<")
    decoders = []
    for c in codecs[1:]:
        if c["name"] not in ("blosc", "zstd", "crc32c"):
            return None
        decoders.append(c["name"])
    return stored, decoders


def _fill_value(v, dtype: np.dtype):
    if isinstance(v, bool) or isinstance(v, (int, float)):
        return dtype.type(v)
    special = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}
    if isinstance(v, str) and v in special and dtype.kind == "f":
        return dtype.type(special[v])
    return None


def _key_encoder(enc: dict):
    name = enc.get("name", "default")
    sep = enc.get("configuration", {}).get("separator", "/" if name == "default" else ".")
    if name not in ("default", "v2") or sep not in ("/", "."):
        return None
    prefix = "c" + sep if name == "default" else ""

    def key(k: tuple[int, ...]) -> str:
        return prefix + sep.join(map(str, k)) if k else ("c" if name == "default" else "0")

    return key
