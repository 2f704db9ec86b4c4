"""Which runs execute in this process, and whether a launch is over when its run is."""

from __future__ import annotations

from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

from pipeline.runners import LOCAL_RUNNERS


def waits(options) -> bool:
    """Whether the launcher waits for the run (not a Flex Template, not --no_wait_until_finish)."""
    return not options.view_as(StandardOptions).no_wait_until_finish


def ends_with_launch(options) -> bool:
    """Whether the whole pipeline runs inside this process's launch: a local runner that waits.
    Only then is a run over when the launcher is (a Dataflow job may outlive it)."""
    return options.view_as(StandardOptions).runner in LOCAL_RUNNERS and waits(options)


def runs_in_process(options) -> bool:
    """Whether the steps themselves execute in this process (so its tally sees them): a local
    run that waits, except under --direct_running_mode multi_processing."""
    return (
        ends_with_launch(options) and options.view_as(DirectOptions).direct_running_mode != "multi_processing"
    )
