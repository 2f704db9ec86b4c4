"""Runs one measured job in a fresh interpreter and prints its timings as one JSON line.

    python -m bench.timed predict|naive ARGS...

Start-up (interpreter plus imports of TensorFlow and Beam) is reported apart from the run
(building the pipeline, loading the model, reading, scoring, writing, up to `_SUCCESS`).
The parent passes the moment it spawned this process in BENCH_SPAWNED_AT.
"""

from __future__ import annotations

import json
import os
import sys
import time


def peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM), in KiB.

    Not getrusage's ru_maxrss: Linux carries that across exec, so a child of a big parent
    (the benchmark holds the bare model's tensors) would report the parent's peak.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(argv: list[str]) -> None:
    job, args = argv[0], argv[1:]
    if job == "predict":
        from pipeline.predict import run

        def work():
            run(args)
    elif job == "naive":
        from bench.naive_beam import main as naive_main

        def work():
            naive_main(args)
    elif job in ("bulk_inferrer", "keyed_run_inference"):
        from bench.peers import main as peer_main

        def work():
            peer_main([job, *args])
    elif job in ("record_model_handler", "score_records"):
        from bench.library import main as library_main

        def work():
            library_main([job, *args])
    else:
        raise SystemExit(
            f"unknown job {job!r}; use predict, naive, bulk_inferrer, keyed_run_inference, record_model_handler or score_records"
        )
    ready = time.time()
    work()
    finished = time.time()
    spawned = float(os.environ.get("BENCH_SPAWNED_AT", ready))
    print(
        "BENCH_RESULT "
        + json.dumps(
            {
                "startup_s": round(ready - spawned, 3),
                "run_s": round(finished - ready, 3),
                "peak_rss_mb": round(peak_rss_kib() / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
