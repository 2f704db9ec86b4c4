"""Beam's pickled steps compressed with zlib instead of bz2, where only this process reads them.

Beam pickles every DoFn, CombineFn and coder of a pipeline, and compresses each pickle with
bz2 at level 9 (`cloudpickle_pickler.dumps`): when a transform is built (to check that its
function pickles), when the pipeline is translated to run, and it decompresses them again for
every stage it runs. bz2 costs about 0.2 ms a call, whatever the level and however small the
pickle. A local demo run of 4,000 records makes 172 compressions and 278 decompressions, all
before or between its stages, on the path to its first and after its last record: 51-56 ms
with bz2, 10-13 ms with zlib at level 1 (3 runs each, AMD EPYC, 2026-12-05).

Only where no other process reads the pickle:

- inside `zlib_pickles(options)`, entered where a run is built and launched, for a run whose
  steps all execute in this process (`runs_in_process`). A Dataflow job, a Dask cluster or a
  `multi_processing` run hands its pickles to other processes, which decompress them with
  Beam's own code, so they stay bz2. The scope is a context variable: a pipeline built at
  the same time on another thread keeps bz2;
- on the thread on which Beam builds each stage's operations (`ExecutionTreeCreator`, a new
  one per stage): it pickles every DoFn of the stage again there, to load it at once in the
  same process (69 of the demo run's 172 compressions).

Decompression tells the two apart by their first bytes (a bz2 stream starts with "BZh", a
zlib stream never does), so a pickle made outside the scope still loads inside it. Applied
to the exact Beam version it was written against; on another it does nothing, with a
warning.
"""

from __future__ import annotations

import bz2
import contextlib
import contextvars
import threading
import zlib

from pipeline.io.beam_fixes import beam_patchable
from pipeline.runners.local import runs_in_process

ZLIB_LEVEL = 1
BZ2_MAGIC = b"BZh"
_STAGE_BUILDER_THREAD = "ExecutionTreeCreator"  # bundle_processor.BundleProcessor's executor
_zlib_here = contextvars.ContextVar("adpredict_zlib_pickles", default=False)
_originals: dict = {}


class _Compression:
    """Stands in for the `bz2` module in Beam's cloudpickle_pickler (its only use of it)."""

    @staticmethod
    def compress(data: bytes, compresslevel: int = 9) -> bytes:
        if _zlib_here.get() or threading.current_thread().name.startswith(_STAGE_BUILDER_THREAD):
            return zlib.compress(data, ZLIB_LEVEL)
        return bz2.compress(data, compresslevel)

    @staticmethod
    def decompress(data: bytes) -> bytes:
        if data[: len(BZ2_MAGIC)] == BZ2_MAGIC:
            return bz2.decompress(data)
        return zlib.decompress(data)


def install() -> bool:
    """Puts `_Compression` in place of Beam's bz2 (once per process); False where it cannot."""
    if _originals:
        return True
    if not beam_patchable("the zlib pickles of pipeline/runners/pickling.py"):
        return False
    from apache_beam.internal import cloudpickle_pickler

    _originals["bz2"] = cloudpickle_pickler.bz2
    cloudpickle_pickler.bz2 = _Compression
    return True


@contextlib.contextmanager
def zlib_pickles(options):
    """Within it, the pickles Beam makes on this thread are zlib, if `options` run every step
    in this process; otherwise, or on another Beam, it changes nothing."""
    if not (runs_in_process(options) and install()):
        yield
        return
    token = _zlib_here.set(True)
    try:
        yield
    finally:
        _zlib_here.reset(token)
