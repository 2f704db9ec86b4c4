"""Dataflow dry runs that work offline: the real job request, its files staged to a local mirror.

Beam's `DataflowRunner` with `--dry_run=True` builds the job (the pipeline proto, the
workers' package built from `setup.py`) and stops before it stages anything or writes
`--dataflow_job_file`. `finish_dry_run` takes the job from there as Dataflow's client
would: it stages every artifact and the pipeline proto, and writes the job request JSON,
except that each file "uploaded" to `gs://bucket/path` is written to `MIRROR/bucket/path`.
The job keeps the user's real `gs://` paths, and nothing waits on Cloud Storage.
"""

from __future__ import annotations

import os
import shutil

from apache_beam.options.pipeline_options import DebugOptions, GoogleCloudOptions, TestOptions


def is_dry_run(options) -> bool:
    return bool(options.view_as(TestOptions).dry_run)


def mirror_path(mirror_dir: str, location: str) -> str:
    """Where a gs:// (or local) location lands in the mirror folder."""
    relative = location.removeprefix("gs://").lstrip("/")
    return os.path.join(mirror_dir, relative)


def _offline_client_class():
    from apache_beam.runners.dataflow.internal.apiclient import DataflowApplicationClient

    class OfflineStagingClient(DataflowApplicationClient):
        """Dataflow's client with uploads written to a local mirror (and no API calls)."""

        def __init__(self, options, mirror_dir: str):
            super().__init__(options)
            self.mirror_dir = mirror_dir
            self.staged: list[str] = []

        def stage_file_with_retry(
            self, gcs_or_local_path, file_name, stream_or_path, mime_type=None, total_size=None
        ):
            location = f"{gcs_or_local_path.rstrip('/')}/{file_name}"
            target = mirror_path(self.mirror_dir, location)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if isinstance(stream_or_path, str):
                shutil.copyfile(stream_or_path, target)
            else:
                with open(target, "wb") as f:
                    f.write(stream_or_path.read())
            self.staged.append(location)

        def _gcs_file_copy(self, from_path, to_path, sha256):
            folder, name = to_path.rsplit("/", 1)
            self.stage_file_with_retry(folder, name, from_path)

    return OfflineStagingClient


def mirror_dir(options) -> str:
    """The local folder standing for Cloud Storage in a dry run: `staged/` beside the job file."""
    job_file = options.view_as(DebugOptions).dataflow_job_file
    base = job_file if job_file and not job_file.startswith("gs://") else "dataflow-dry-run/job.json"
    return os.path.join(os.path.dirname(os.path.abspath(base)), "staged")


def local_stand_in(options, location: str) -> str:
    """In a dry run, the mirror path of a gs:// location the launcher itself must write to
    while building the graph (tf.Transform's temporary assets); other locations as they are."""
    if is_dry_run(options) and location.startswith("gs://"):
        return mirror_path(mirror_dir(options), location)
    return location


def finish_dry_run(result, options) -> dict:
    """Stages the dry-run job's files into `mirror_dir` and writes its request JSON.

    The JSON goes to `--dataflow_job_file` (a local path, or mirrored when gs://), else to
    `mirror_dir/job.json`. Returns what was done, for the launcher to print.
    """
    job = result.job
    job_file = options.view_as(DebugOptions).dataflow_job_file
    mirror = mirror_dir(options)
    client = _offline_client_class()(options, mirror)
    client.create_job_description(job)
    if not job_file:
        job_file = os.path.join(mirror, "job.json")
    elif job_file.startswith("gs://"):
        job_file = mirror_path(mirror, job_file)
    os.makedirs(os.path.dirname(os.path.abspath(job_file)), exist_ok=True)
    with open(job_file, "w", encoding="utf-8") as f:
        f.write(job.json())
    cloud = options.view_as(GoogleCloudOptions)
    return {
        "dry_run": True,
        "job_name": cloud.job_name,
        "project": cloud.project,
        "region": cloud.region,
        "job_file": job_file,
        "staged": client.staged,
        "staging_mirror": mirror,
        "transforms": sorted(
            {t.unique_name.split("/")[0] for t in job.proto_pipeline.components.transforms.values()}
        ),
    }
