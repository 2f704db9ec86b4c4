"""Staging: a run's files are written where no reader looks, and published at its end.

Every sink writes into `.adpredict-staging/` under the output directory (Hadoop and Spark
skip names starting with `.` or `_`, and `prediction.results-*`, even as a Cloud Storage
prefix, does not reach in); the run's last step moves the files into place before `run.json`
and `_SUCCESS`. A run killed before its end leaves nothing in the output directory that
looks like results, and the next run clears what it left (`clear_previous_outputs`). A run
whose sink could not write clears it at once and says where and why (`sink_write_failure`).
"""

from __future__ import annotations

import glob
import re

from apache_beam.io.filesystems import FileSystems

from pipeline.run_contract import (
    ERRORS_PREFIX,
    PREDICT_ERRORS_STATS,
    PREDICTIONS_PREFIX,
    REPORT,
    RUN_MANIFEST,
    STAGING_DIR,
    SUCCESS_MARKER,
    WriteFailed,
)

BEAM_TEMP_PREFIX = "beam-temp-"  # Beam's file sinks write shards in such folders, then rename
# Where Beam's file sinks write shards before renaming them (older Beam: .temp-beam*).
BEAM_TEMP_FOLDERS = (f"{BEAM_TEMP_PREFIX}*", ".temp-beam*")


def staging_dir(output_dir: str) -> str:
    return FileSystems.join(output_dir, STAGING_DIR)


def is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) is None


def remove_trees(pattern: str) -> None:
    """Deletes the folders matching `pattern` with all they hold; on an object store, every
    object under the matching prefixes (a prefix is not a folder that can go at once)."""
    if is_local(pattern):
        folders = glob.glob(pattern)  # a pattern starting with "." matches hidden names
        if folders:
            FileSystems.delete(folders)
        return
    objects = FileSystems.match([f"{pattern.rstrip('/')}/**"])[0].metadata_list
    if objects:
        FileSystems.delete([m.path for m in objects])


def publish_staged(output_dir: str) -> list[str]:
    """Moves every file the run staged into `output_dir`, then removes the staging folder;
    returns the published paths.

    Each move is one rename (a copy and a delete on Cloud Storage): not atomic as a whole,
    but the window is the moves themselves, and `_SUCCESS` still comes after them. Files
    already moved are not staged any more, so a retried last step publishes the rest.
    """
    staged = staging_dir(output_dir)
    sources = [
        m.path
        for m in FileSystems.match([FileSystems.join(staged, "*")])[0].metadata_list
        if _publishable(m.path)
    ]
    targets = [FileSystems.join(output_dir, _basename(path)) for path in sources]
    if sources:
        FileSystems.rename(sources, targets)
    remove_trees(staged)
    return targets


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _publishable(path: str) -> bool:
    """A staged output, not a sink's temporary folder (Beam deletes those, but a folder it
    could not delete must not land among the results)."""
    name = _basename(path)
    return bool(name) and not name.startswith((".", BEAM_TEMP_PREFIX))


def clear_previous_outputs(output_dir: str) -> None:
    """Removes a previous run's files first (the marker first), so no stale shard survives,
    then what a killed run left unpublished: its staging folder, and Beam's temporary
    folders (inside it now; beside the outputs before staging). Runs under the lock only."""
    for name in (
        SUCCESS_MARKER,
        RUN_MANIFEST,
        REPORT,
        PREDICT_ERRORS_STATS,
        f"{PREDICTIONS_PREFIX}-*",
        f"{ERRORS_PREFIX}-*",
    ):
        matched = FileSystems.match([FileSystems.join(output_dir, name)])[0].metadata_list
        if matched:
            FileSystems.delete([m.path for m in matched])
    for folder in (STAGING_DIR, *BEAM_TEMP_FOLDERS):
        remove_trees(FileSystems.join(output_dir, folder))


# A step's failure as runners report it: "OSError: [Errno 28] No space left on device [while
# running 'WritePredictions/...']" (a remote runner sends only this text).
_OS_ERROR = re.compile(r"\[Errno (\d+)\] ([^\[\]]+?)(?::\s*'([^']+)')?\s*\[while running '([^']+)'\]")
# The steps that write: the sinks (into staging) and the last step (into the output directory).
WRITE_STEPS = ("Write", "FinalizeRun")


def sink_write_failure(error: BaseException, output_dir: str) -> WriteFailed | None:
    """A run that stopped because a step could not write (a full disk, a file too large, no
    permission): the failure naming the path and the OS error, after the run's staging
    folder is cleared (or saying where it is, if that failed too). None for other failures."""
    found = _os_error(error)
    if found is None:
        return None
    code, problem, path, step = found
    top = step.split("/", 1)[0]
    if not top.startswith(WRITE_STEPS):
        return None
    where = path or (output_dir if top.startswith("FinalizeRun") else staging_dir(output_dir))
    try:
        remove_trees(staging_dir(output_dir))
        left = "the staging folder was cleared"
    except OSError as e:
        left = f"its partial files are in {staging_dir(output_dir)} ({e}): delete it"
    published = "no _SUCCESS was written" if top.startswith("FinalizeRun") else "nothing was published"
    return WriteFailed(
        f"cannot write {where} (step {top}): [Errno {code}] {problem}; {published} and {left}; "
        "free space or fix the permissions, then run again"
    )


def _os_error(error: BaseException) -> tuple[int, str, str | None, str] | None:
    """(errno, message, path or None, step) of the OS error behind `error`, if it is one."""
    step = re.search(r"\[while running '([^']+)'\]", str(error))
    seen = error
    while seen is not None:  # in this process the OSError itself is chained
        if isinstance(seen, OSError) and seen.errno is not None and step:
            return seen.errno, seen.strerror or str(seen), seen.filename, step.group(1)
        seen = seen.__cause__ or seen.__context__
    match = _OS_ERROR.search(str(error))
    if match is None:
        return None
    return int(match.group(1)), match.group(2).strip(), match.group(3), match.group(4)
