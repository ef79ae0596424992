"""The pgps zarr v3 store: open, read, write, verify.

``open_store`` / ``Store`` / ``Case`` (store.py) read it; write.py, lock.py and
completeness.py write it safely; chunking.py picks chunk and shard shapes; fastread.py and
mapped_files.py are the crop read path; zarr_meta.py, chunk_crc.py and verify.py the
format and its integrity; foreground.py the per-class foreground indices; splits.py the
cross-validation folds over its cases.
"""

from pgps_data.store.store import Case, NoSuchCase, Store, open_store

__all__ = ["Case", "NoSuchCase", "Store", "open_store"]
