"""Flex Template launcher: submits `predict` or `analyze` to Dataflow and exits at once.

Dataflow's template launcher runs this file with the template's parameters as flags; the
job is `predict`, or `analyze` in a template built with `--env ADPREDICT_JOB=analyze`.
`{date}` (YYYY-MM-DD) and `{date_nodash}` in any parameter become the run's date:
`run_date` if given, else yesterday in `ADPREDICT_TIMEZONE` (default UTC), so a Cloud
Scheduler job with one fixed request body scores a new date every night. The launcher
must not wait for the job (Flex Templates require it), so `--no_wait_until_finish` is
added: the pipeline itself writes run.json and _SUCCESS at its end.
"""

import datetime
import os
import sys


def with_dates(argv: list[str], timezone: str = "UTC") -> list[str]:
    """`argv` with {date} and {date_nodash} replaced, and --run_date set."""
    from pipeline.nightly import render, yesterday

    given = [a.split("=", 1)[1] for a in argv if a.startswith("--run_date=")]
    date = datetime.date.fromisoformat(given[0]) if given else yesterday(timezone)
    rendered = [render(arg, date) for arg in argv]
    return rendered if given else [*rendered, f"--run_date={date.isoformat()}"]


def main(argv: list[str]) -> int:
    from pipeline import analyze, predict

    job = os.environ.get("ADPREDICT_JOB", "predict")
    pipelines = {"predict": predict, "analyze": analyze}
    if job not in pipelines:
        print(f"launch.py: ADPREDICT_JOB must be predict or analyze, got {job!r}", file=sys.stderr)
        return 2
    argv = with_dates(argv, os.environ.get("ADPREDICT_TIMEZONE", "UTC"))
    if job == "analyze":
        argv = [a for a in argv if not a.startswith("--run_date=")]
    return pipelines[job].main([*argv, "--no_wait_until_finish"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
