"""A run's bookkeeping, done through Beam's FileSystems where the outputs are: run.json,
staging, the lock, and the last step that finishes the run. What these files are called and
how a run is judged is `pipeline.run_contract`.

    manifest.py  run.json written and read; versions, model fingerprint and training figures
    staging.py   outputs written where no reader looks, published at the end
    lock.py      one run at a time per output directory
    finalize.py  FinalizeRun: the pipeline's last step
"""
