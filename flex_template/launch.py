"""Flex Template launcher: submits `predict` or `analyze` to Dataflow and exits at once.

Dataflow's template launcher runs this file with the template's parameters as flags; the
job is `predict`, or `analyze` in a template built with `--env ADPREDICT_JOB=analyze`. The launcher must not wait
for the job (Flex Templates require it), so `--no_wait_until_finish` is added: the
pipeline itself writes run.json and _SUCCESS at its end.
"""

import os
import sys


def main(argv: list[str]) -> int:
    from pipeline import analyze, predict

    job = os.environ.get("ADPREDICT_JOB", "predict")
    pipelines = {"predict": predict, "analyze": analyze}
    if job not in pipelines:
        print(f"launch.py: ADPREDICT_JOB must be predict or analyze, got {job!r}", file=sys.stderr)
        return 2
    return pipelines[job].main([*argv, "--no_wait_until_finish"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
