"""Making a run's pipeline for its --runner, and launching it: wait, return at once, or dry-run.

A launcher that does not wait (a Flex Template, --no_wait_until_finish) and a Dataflow dry
run print and return a summary of what they did; nothing that matters happens after the
launch returns, since the pipeline's own last step finishes the run (`pipeline.run.finalize`).
"""

from __future__ import annotations

import json
import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
)

from pipeline.io import stores
from pipeline.reporting.terminal import console_url
from pipeline.run.finalize import FAILURE_LOGGERS, RunConfig
from pipeline.run.manifest import manifest_of_run
from pipeline.run.staging import remove_trees, sink_write_failure, staging_dir
from pipeline.run_contract import GateFailed, WriteFailed
from pipeline.runners import (
    DASK_RUNNERS,
    DIRECT_RUNNERS,
    progress,
    side_input_sizes,
    signatures,
    state_sampler,
)
from pipeline.runners.dataflow import finish_dry_run, is_dry_run
from pipeline.runners.local import waits

WORKER_IMPORTS = "pipeline.io"  # what every worker imports before it runs a step


def make_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A Beam pipeline for `options`; local runs go straight to the FnApiRunner.

    Beam's DirectRunner first tries the Prism runner (a separate Go process that is
    downloaded on first use) and falls back to the FnApiRunner when it cannot start it; the
    attempt cost 0.5 s per run here and, on a machine with internet access, would run a
    different engine than the one measured in bench/. The FnApiRunner still honours
    --direct_num_workers and --direct_running_mode.

    Every worker imports `pipeline.io` first (Beam's `--beam_plugins`), for its fixes of
    Beam's S3 and Azure file systems: a worker that only runs Beam's own write steps would
    otherwise never load them.

    Beam's reading of DoFn signatures is memoized first (`pipeline.runners.signatures`): a
    local run repeats it for every bundle; and its weighing of cached side inputs skips a
    walk over every loaded module (`pipeline.runners.side_input_sizes`); and a bundle's end
    waits 10 ms at most for Beam's state sampler, not up to 200 ms
    (`pipeline.runners.state_sampler`).
    """
    signatures.memoize()
    side_input_sizes.install()
    state_sampler.shorten()
    setup = options.view_as(SetupOptions)
    setup.beam_plugins = sorted({*(setup.beam_plugins or []), WORKER_IMPORTS})
    runner = options.view_as(StandardOptions).runner
    if runner in DASK_RUNNERS:  # Beam's own mixes tagged outputs: see pipeline/runners/dask.py
        from pipeline.runners.dask import DaskRunner

        return beam.Pipeline(runner=DaskRunner(), options=options)
    if runner in DIRECT_RUNNERS:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


def launch(pipeline, options) -> dict | None:
    """Runs `pipeline` and waits for it; returns None then. A dry run is finished offline and
    a run that must not wait (Flex Template, --no_wait_until_finish) returns at once: both
    print and return their summary instead (a job not waited for with the Dataflow console
    page that follows it, when its region and project are known).

    A local run whose steps run in this process shows its progress on stderr meanwhile
    (`pipeline.runners.progress`; not under multi_processing, not on Dataflow: see there)."""
    reporter = None if is_dry_run(options) else progress.reporter_for(options)
    if reporter is None:
        return _run_and_wait(pipeline, options)
    with reporter:  # the FnApiRunner runs the whole pipeline inside pipeline.run()
        return _run_and_wait(pipeline, options)


def launch_run(pipeline, options, output_dir: str, run: RunConfig) -> dict | None:
    """`launch`, for a pipeline that ends with `pipeline.run.finalize`, turning how a failed
    launch ended into one line a person can act on:

    - the run's last step fails the pipeline when the run failed, after writing run.json:
      that failure is raised (`RunFailed`, with the run.json);
    - a sink that could not write (a full disk, no permission) is `WriteFailed`, naming the
      path and the OS error, once the run's staging folder is cleared;
    - a worker that stopped on a gate (the model's golden records) raises that `GateFailed`;
    - a store (Cloud Storage, S3, Azure) that still failed after its client's retries is `WriteFailed`,
      naming the store and its last error.

    Beam's log records of those failures (a traceback per failed step) are held back and
    dropped; for any other failure, a crash, they are logged as they came."""
    held = _HoldStepFailures()
    loggers = [logging.getLogger(name) for name in FAILURE_LOGGERS]
    for logger in loggers:
        logger.addFilter(held)
    # Beam's S3 and Azure code logs a failed upload on the root logger before raising it.
    held_io, root = (
        _HoldStepFailures(lambda record: "apache_beam/io/" in record.pathname),
        logging.getLogger(),
    )
    root.addFilter(held_io)
    try:
        result = launch(pipeline, options)
        held_io.replay([root])
        return result
    except Exception as e:
        failed_store = stores.storage_failure(e)  # the store is failing: ask it nothing more
        if failed_store:
            raise WriteFailed(
                f"{failed_store}; nothing was published (no _SUCCESS), and the next run into "
                f"{output_dir} clears what this one staged: re-run when the store answers"
            ) from None
        manifest = manifest_of_run(output_dir, run.info.get("run_id"))
        explained = (
            (manifest and run.failure(manifest))
            or sink_write_failure(e, output_dir)
            or _gate_failure(e, output_dir)
        )
        if not explained:
            held.replay(loggers)
            held_io.replay([root])
            raise
        raise explained from None
    finally:
        for logger in loggers:
            logger.removeFilter(held)
        root.removeFilter(held_io)


def _gate_failure(error: BaseException, output_dir: str) -> GateFailed | None:
    """The GateFailed behind `error` (raised in this process; the first one raised, not Beam's
    copy with the step's name appended), after the staging is cleared."""
    gate, seen = None, error
    while seen is not None:
        gate = seen if isinstance(seen, GateFailed) else gate
        seen = seen.__cause__ or seen.__context__
    if gate is not None:
        remove_trees(staging_dir(output_dir))
    return gate


class _HoldStepFailures(logging.Filter):
    """Keeps back the records a failing step logs (until `replay`), passing all others;
    `held` picks which error records (by default all)."""

    def __init__(self, held=None):
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self._held = held

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and (self._held is None or self._held(record)):
            self.records.append(record)
            return False
        return True

    def replay(self, loggers) -> None:
        for logger in loggers:
            logger.removeFilter(self)
        records, self.records = self.records, []
        for record in records:
            logging.getLogger(record.name).handle(record)


def _run_and_wait(pipeline, options) -> dict | None:
    result = pipeline.run()
    if is_dry_run(options):
        return print_summary(finish_dry_run(result, options))
    if not waits(options):
        summary = print_summary(launched(result, options))
        cloud = options.view_as(GoogleCloudOptions)
        return {**summary, "console_url": console_url(summary["job_id"], cloud.region, cloud.project)}
    result.wait_until_finish()
    return None


def launched(result, options) -> dict:
    """What a launcher that does not wait (a Flex Template, --no_wait_until_finish) reports."""
    job_id = result.job_id() if hasattr(result, "job_id") else None
    return {
        "submitted": True,
        "runner": options.view_as(StandardOptions).runner,
        "job_id": job_id,
        "state": str(result.state),
        "note": "the pipeline writes run.json and then _SUCCESS at its end",
    }


def print_summary(summary: dict) -> dict:
    print(json.dumps(summary, indent=2), flush=True)
    return summary
