"""Fixes for bugs of Beam's S3 and Azure filesystems that every run would meet; applied when
`pipeline.io` is imported, so in the launcher and in every worker alike.

- **S3, empty files.** Beam uploads every object as a multipart upload, and one with nothing
  written completes with no part, which S3 refuses ("MalformedXML"). A run with no error
  records writes an empty errors shard, so every clean run on S3 failed at its last write.
  An empty object is written with one plain PutObject instead (the multipart upload begun
  for it is aborted).
- **Azure, `exists()`.** Beam's azfs `exists()` raises for a missing blob instead of
  returning False (it catches the SDK's ResourceNotFoundError, but its own metadata call has
  already turned that into a BlobStorageError). Beam's file sinks and our own checks ask it.

And one switch, used by `pipeline.io.stores.use_run_options`:

- **`--no_auth` for gs://.** Beam's Cloud Storage client searches for Google credentials
  whatever `--no_auth` says: without any, it retries four times (about 20 s, a logged
  traceback each) before it connects anonymously. `anonymous_google_credentials` makes that
  search's answer "anonymous" at once.

Each fix patches one method of the exact Beam version it was written against, and does
nothing (with a warning) on another version, where the bug may be fixed or the code changed.
`beam_patchable` is that check, for every patch of Beam's internals in adpredict (also
`pipeline.runners.signatures`, `pipeline.runners.side_input_sizes`,
`pipeline.runners.state_sampler` and `pipeline.runners.pickling`).
"""

from __future__ import annotations

import logging

PATCHED_BEAM_VERSION = "2.77.0"  # the Beam whose internals adpredict's patches were written for


def beam_patchable(what: str | None = None) -> bool:
    """Whether this Beam is PATCHED_BEAM_VERSION; if not, logs that `what` (when named) is not
    applied: the patched code may have changed or its bug been fixed."""
    import apache_beam

    if apache_beam.__version__ == PATCHED_BEAM_VERSION:
        return True
    if what:
        logging.warning(
            "Beam %s: %s not applied (written for Beam %s)",
            apache_beam.__version__,
            what,
            PATCHED_BEAM_VERSION,
        )
    return False


def apply() -> None:
    if not beam_patchable("the S3 and Azure filesystem fixes of pipeline/io/beam_fixes.py"):
        return
    _fix_s3_empty_objects()
    _fix_azure_exists()


def _fix_s3_empty_objects() -> None:
    try:
        from apache_beam.io.aws import s3io
    except ImportError:  # apache-beam[aws] not installed: no s3://
        return
    uploader = s3io.S3Uploader
    if getattr(uploader.finish, "adpredict_fixed", False):
        return
    finish = uploader.finish

    def finish_allowing_empty(self):
        if self.parts or self.buffer or self.last_error is not None:
            return finish(self)
        client = self._client.client  # the boto3 client Beam's wrapper holds
        client.put_object(Bucket=self._bucket, Key=self._name, Body=b"", ContentType=self._mime_type)
        client.abort_multipart_upload(Bucket=self._bucket, Key=self._name, UploadId=self.upload_id)
        return None

    finish_allowing_empty.adpredict_fixed = True
    uploader.finish = finish_allowing_empty


def _fix_azure_exists() -> None:
    try:
        from apache_beam.io.azure import blobstorageio
    except ImportError:  # apache-beam[azure] not installed: no azfs://
        return
    io = blobstorageio.BlobStorageIO
    if getattr(io.exists, "adpredict_fixed", False):
        return
    exists = io.exists

    def exists_or_false(self, path):
        try:
            return exists(self, path)
        except blobstorageio.BlobStorageError as e:
            if e.code == 404:
                return False
            raise

    exists_or_false.adpredict_fixed = True
    io.exists = exists_or_false


def anonymous_google_credentials() -> None:
    """Beam's Google credentials, for this process: none (anonymous), without the search."""
    if not beam_patchable():
        return  # Beam searches as it does; only slower and noisier
    from apache_beam.internal.gcp import auth

    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials, auth._Credentials._credentials_init = None, True
