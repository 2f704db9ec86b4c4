"""Where a pipeline runs (here, on Dataflow, on Dask) and how its launch follows it.

    launch.py    make_pipeline (picks the runner) and launch (runs; waits, or not; dry runs)
    local.py     which runs execute in this process, and when a launch outlives its run
    dataflow.py  Dataflow dry runs, built offline
    dask.py      Beam's DaskRunner with what it lacks
    progress.py  the progress line of a local run
    signatures.py  Beam's reading of DoFn signatures, memoized (pipeline construction, bundle start)
    side_input_sizes.py  Beam's weighing of cached side inputs, without a walk over every module
    state_sampler.py  Beam's state sampler at 10 ms, so a long bundle does not end in a sleep
    pickling.py  Beam's pickles as zlib, not bz2, in a run whose steps all run in this process

The --runner values each behaviour answers to are listed here, once.
"""

DIRECT_RUNNERS = (None, "DirectRunner", "SwitchingDirectRunner")  # run on Beam's FnApiRunner, here
LOCAL_RUNNERS = (*DIRECT_RUNNERS, "FnApiRunner", "BundleBasedDirectRunner")  # run in this process
DATAFLOW_RUNNERS = ("DataflowRunner", "apache_beam.runners.dataflow.dataflow_runner.DataflowRunner")
DASK_RUNNERS = (  # run on Dask with pipeline.runners.dask.DaskRunner
    "DaskRunner",
    "apache_beam.runners.dask.dask_runner.DaskRunner",
    "pipeline.runners.dask.DaskRunner",
)
