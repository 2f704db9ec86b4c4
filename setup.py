"""Installs adpredict's packages; Dataflow workers install the job's code from this file.

`run_dataflow.sh` passes `--setup_file ./setup.py`, so each worker runs
`pip install .` and gets `pipeline` and `transforms` with the same pinned stack as the
launcher (see requirements.lock for the fully pinned set). Those two top-level names are all
the distribution installs beside a user's own code (docs/architecture.md says why).
"""

import setuptools

STACK = [
    "tensorflow==2.21.0",
    "tensorflow-transform==1.21.0",
    "tfx-bsl==1.21.0",
    "apache-beam[gcp]==2.77.0",
    "pyarrow",
    "numpy",
    "pyyaml",
    "pillow",
]

setuptools.setup(
    name="adpredict",
    version="0.1.0",
    description="Batch prediction for ad records with an all-in-one tf.Transform + Keras SavedModel on Apache Beam.",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    packages=setuptools.find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*"]),
    package_data={"transforms": ["schemas/*.yaml"], "pipeline": ["reporting/prices.yaml"]},
    install_requires=STACK,
    extras_require={
        "dev": ["pytest", "ruff", "pyinstrument", "import-linter"],
        # The Dask engine (--runner DaskRunner); pins in requirements-dask.lock.
        "dask": ["dask[distributed]==2026.8.0"],
        # s3:// and azfs:// (Beam's filesystems for Amazon S3 and Azure Blob Storage); pins in
        # requirements-clouds.lock.
        "aws": ["apache-beam[aws]==2.77.0"],
        "azure": ["apache-beam[azure]==2.77.0"],
    },
    entry_points={"console_scripts": ["adpredict = pipeline.cli:main"]},
)
