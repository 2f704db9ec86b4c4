"""One run at a time per output directory: the lock file `.adpredict-run.lock`.

A run takes it at launch, before it touches anything, and the run's last step removes it
(`pipeline.run.finalize`); `output_dir_lock` is the launcher's side. Two runs writing into
one directory would mix their shards and publish each other's files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid

from apache_beam.io.filesystems import FileSystems

from pipeline.io import stores
from pipeline.run.manifest import utc
from pipeline.run.staging import clear_previous_outputs
from pipeline.run_contract import RUN_LOCK, InputError


class OutputDirLocked(InputError):
    """Another run holds the output directory's lock file (exit 2, like any fixable mistake)."""


def lock_path(output_dir: str) -> str:
    return FileSystems.join(output_dir, RUN_LOCK)


def acquire_run_lock(
    output_dir: str, run_id: str, in_process: bool, force: bool = False, options=None
) -> dict:
    """Creates `<output_dir>/.adpredict-run.lock` if no run holds it; returns what it holds.

    Created exclusively, so of two runs starting together one wins: `O_CREAT|O_EXCL` locally,
    `if_generation_match=0` on Cloud Storage, `If-None-Match: *` on S3 and Azure Blob Storage
    (`pipeline.io.stores`). On any other Beam file system it is check-then-create, with a
    race window of one request.

    A lock whose holder ran the pipeline in its own process (a local runner that waits), on
    this host, with a pid that is gone, was left by a killed run and is taken over with a
    warning. Any other lock (a Dataflow job may outlive its launcher) stops the run with a
    message naming the file; `force` (--force_unlock) removes it first.
    """
    holder = {
        "run_id": run_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "in_process": in_process,
        "started": utc(time.time()),
        "output_dir": output_dir,
    }
    path = lock_path(output_dir)
    store = _lock_store(path, options)
    payload = json.dumps(holder, indent=2).encode("utf-8")
    for _ in range(3):  # a lock that disappears or is taken over under us: look again
        found = store.read()
        if found is None:
            if store.create(payload):
                return holder
            continue
        content, token = found
        other = _parse_lock(content)
        if force:
            logging.warning("--force_unlock: removing %s of run %s", path, _describe(other))
        elif _holder_is_gone(other):
            logging.warning("taking over %s: its run (%s) is no longer running", path, _describe(other))
        else:
            raise OutputDirLocked(locked_message(output_dir, other))
        store.remove(token)
    found = store.read()
    raise OutputDirLocked(locked_message(output_dir, _parse_lock(found[0]) if found else {}))


def locked_message(output_dir: str, holder: dict) -> str:
    path = lock_path(output_dir)
    return (
        f"--output_dir {output_dir} is in use by another run ({_describe(holder)}): lock file {path}. "
        f"Wait for that run to end; if it is not running any more, delete {path} or re-run with --force_unlock"
    )


def release_run_lock(output_dir: str, run_id: str | None) -> bool:
    """Removes the lock file if it is still `run_id`'s (a run forced out leaves the new
    holder's lock alone); True when it did. Runs where the pipeline's last step runs, so it
    uses Beam's FileSystems (the workers' credentials)."""
    if not run_id:
        return False
    path = lock_path(output_dir)
    try:
        if not FileSystems.exists(path):
            return False
        with FileSystems.open(path, compression_type="uncompressed") as f:
            holder = _parse_lock(f.read())
        if holder.get("run_id") != run_id:
            logging.warning(
                "%s is held by run %s now, not by this run: left in place", path, _describe(holder)
            )
            return False
        FileSystems.delete([path])
    except Exception as e:  # noqa: BLE001 - a lock left behind is reported, it must not fail the run
        logging.warning("could not remove the lock file %s: %s", path, e)
        return False
    return True


def _parse_lock(content: bytes) -> dict:
    try:
        holder = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder.get("run_id"):
        return "unknown run: the lock file is empty or unreadable"
    return (
        f"run {holder['run_id']}, host {holder.get('host')}, pid {holder.get('pid')}, "
        f"started {holder.get('started')}"
    )


def _holder_is_gone(holder: dict) -> bool:
    """True only when the holder surely died: it ran the pipeline in its own process on this
    host, and that pid no longer exists (our own pid counts as alive)."""
    pid = holder.get("pid")
    if not (holder.get("in_process") and holder.get("host") == socket.gethostname()):
        return False
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. another user's process: alive
        return False
    return False


def _lock_store(path: str, options):
    scheme = FileSystems.get_scheme(path)
    if scheme is None:
        return _LocalLock(path)
    if scheme == "gs":
        return _CloudStorageLock(path, options)
    if scheme == stores.S3:
        return _S3Lock(path, options)
    if scheme == stores.AZURE:
        return _AzureLock(path, options)
    return _FileSystemsLock(path)


class _LocalLock:
    """A lock file on a local (or mounted) file system."""

    def __init__(self, path: str):
        self.path = path

    def read(self):
        try:
            with open(self.path, "rb") as f:
                content = f.read()
        except FileNotFoundError:
            return None
        return content, content

    def create(self, payload: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        return True

    def remove(self, token: bytes) -> bool:
        """Removes the lock only if it still holds `token`: moved aside first (atomic), and
        put back if another run had replaced it meanwhile."""
        aside = f"{self.path}.{uuid.uuid4().hex}.stale"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        with open(aside, "rb") as f:
            moved = f.read()
        if moved != token:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.remove(aside)
            return False
        os.remove(aside)
        return True


class _CloudStorageLock:
    """A lock object on Cloud Storage, created and deleted with generation preconditions.

    Beam's FileSystems cannot express a precondition, so this uses the Cloud Storage client
    Beam itself builds from the pipeline options (same credentials, same endpoint)."""

    def __init__(self, path: str, options):
        from apache_beam.io.gcp import gcsio

        bucket, self._name = gcsio.parse_gcs_path(path)
        self._bucket = gcsio.GcsIO(pipeline_options=options).client.bucket(bucket)

    def read(self):
        from google.api_core import exceptions

        try:
            blob = self._bucket.get_blob(self._name)
            if blob is None:
                return None
            return blob.download_as_bytes(), blob.generation
        except exceptions.NotFound:
            return None
        except exceptions.GoogleAPIError as e:
            raise OSError(f"cannot read the lock file gs://{self._bucket.name}/{self._name}: {e}") from e

    def create(self, payload: bytes) -> bool:
        from google.api_core import exceptions

        try:
            self._bucket.blob(self._name).upload_from_string(
                payload, content_type="application/json", if_generation_match=0
            )
        except exceptions.PreconditionFailed:
            return False
        except exceptions.GoogleAPIError as e:
            raise OSError(f"cannot create the lock file gs://{self._bucket.name}/{self._name}: {e}") from e
        return True

    def remove(self, generation) -> bool:
        from google.api_core import exceptions

        try:
            self._bucket.blob(self._name).delete(if_generation_match=generation)
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            return False
        return True


class _S3Lock:
    """A lock object on S3, created with `If-None-Match: *` and deleted with `If-Match: <ETag>`
    (S3's conditional writes; moto serves them too).

    The payload names the run and the moment it started, so when a create is answered 412
    the object is read back: if it is our payload, the first attempt did succeed and only its
    answer was lost (the client's retry then met our own object)."""

    def __init__(self, path: str, options):
        self.path = path
        self._bucket, self._key = stores.split_s3(path)
        self._client = stores.s3_client(options)

    def read(self):
        from botocore.exceptions import ClientError

        try:
            found = self._client.get_object(Bucket=self._bucket, Key=self._key)
            return found["Body"].read(), found["ETag"]
        except ClientError as e:
            if _status(e) == 404:
                return None
            raise OSError(f"cannot read the lock file {self.path}: {e}") from e

    def create(self, payload: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.put_object(
                Bucket=self._bucket,
                Key=self._key,
                Body=payload,
                IfNoneMatch="*",
                ContentType="application/json",
            )
        except ClientError as e:
            if _status(e) in (409, 412):  # 409: another conditional write was under way
                found = self.read()
                return found is not None and found[0] == payload
            raise OSError(f"cannot create the lock file {self.path}: {e}") from e
        return True

    def remove(self, etag) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.delete_object(Bucket=self._bucket, Key=self._key, IfMatch=etag)
        except ClientError as e:
            if _status(e) in (404, 412):
                return False
            raise OSError(f"cannot remove the lock file {self.path}: {e}") from e
        return True


def _status(error) -> int | None:
    return error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


class _AzureLock:
    """A lock blob on Azure Blob Storage, created with `If-None-Match: *` (`overwrite=False`)
    and deleted only while its ETag is unchanged; a lost answer is read back as on S3."""

    def __init__(self, path: str, options):
        self.path = path
        _, container, blob = stores.split_azfs(path)
        self._blob = stores.azure_service(options).get_blob_client(container, blob)

    def read(self):
        from azure.core import exceptions

        try:
            downloaded = self._blob.download_blob()
            return downloaded.readall(), downloaded.properties.etag
        except exceptions.ResourceNotFoundError:
            return None
        except exceptions.AzureError as e:
            raise OSError(f"cannot read the lock file {self.path}: {e}") from e

    def create(self, payload: bytes) -> bool:
        from azure.core import exceptions

        try:
            self._blob.upload_blob(payload, overwrite=False)
        except exceptions.ResourceExistsError:
            found = self.read()
            return found is not None and found[0] == payload
        except exceptions.AzureError as e:
            raise OSError(f"cannot create the lock file {self.path}: {e}") from e
        return True

    def remove(self, etag) -> bool:
        from azure.core import MatchConditions, exceptions

        try:
            self._blob.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
        except (exceptions.ResourceNotFoundError, exceptions.ResourceModifiedError):
            return False
        except exceptions.AzureError as e:
            raise OSError(f"cannot remove the lock file {self.path}: {e}") from e
        return True


class _FileSystemsLock:
    """Any other Beam file system: check-then-create, racy by one request (documented)."""

    def __init__(self, path: str):
        self.path = path

    def read(self):
        if not FileSystems.exists(self.path):
            return None
        with FileSystems.open(self.path, compression_type="uncompressed") as f:
            content = f.read()
        return content, content

    def create(self, payload: bytes) -> bool:
        if FileSystems.exists(self.path):
            return False
        with FileSystems.create(self.path, compression_type="uncompressed") as f:
            f.write(payload)
        return True

    def remove(self, token: bytes) -> bool:
        found = self.read()
        if found is None or found[0] != token:
            return False
        FileSystems.delete([self.path])
        return True


@contextlib.contextmanager
def output_dir_lock(output_dir: str, run_id: str, in_process: bool, force: bool, options):
    """Creates the output directory and takes its lock (a second run stops here, exit 2,
    before touching anything), then clears what a previous run left.

    The pipeline's last step removes the lock; this removes it too when the pipeline ran in
    this process and stopped before that step. A job elsewhere (Dataflow) may outlive a
    failed launcher, so its lock stays, with a warning naming it.
    """
    unusable = f"cannot create or clear --output_dir {output_dir!r}"
    try:
        if not FileSystems.exists(output_dir):
            FileSystems.mkdirs(output_dir)
        acquire_run_lock(output_dir, run_id, in_process, force, options)
    except OSError as e:
        raise InputError(f"{unusable}: {e}") from None
    try:
        clear_previous_outputs(output_dir)
    except OSError as e:
        release_run_lock(output_dir, run_id)
        raise InputError(f"{unusable}: {e}") from None
    try:
        yield
    except BaseException:
        if not in_process and FileSystems.exists(lock_path(output_dir)):
            logging.warning(
                "%s stays: the job may still run; delete it once it has ended", lock_path(output_dir)
            )
        raise
    finally:
        if in_process:
            release_run_lock(output_dir, run_id)
