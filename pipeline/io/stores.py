"""Object stores beside Beam's FileSystems: Amazon S3 (`s3://`) and Azure Blob Storage
(`azfs://`), as Cloud Storage (`gs://`) already is.

Beam reads and writes all three; every file of a run goes through its FileSystems. This
module does the few things FileSystems cannot, with each store's own client (boto3, the
Azure SDK; for gs:// the Cloud Storage client of Beam's GcsIO) built from the options and
environment Beam's own client uses:

- **Check a path's bucket or container before a run**, in seconds, with one line that says
  what is wrong (no credentials, no such bucket, an endpoint that does not answer). Beam's
  S3 client retries a dead endpoint for 7-10 minutes, Azure's SDK for 1.5-5 minutes and
  Cloud Storage's client for 2 minutes.
- **Create an object only if it is absent** and **delete it only if unchanged** (the run
  lock, `pipeline.run.lock`): S3's conditional writes (`If-None-Match: *`, `If-Match`),
  Azure's conditional puts and deletes (`If-None-Match: *`, ETags).
- **Bring a model directory to this machine**: TensorFlow reads local and gs:// paths only.

Credentials and endpoints come the way each ecosystem gives them: for S3 Beam's
`--s3_endpoint_url`, `--s3_access_key_id`, ... flags, else boto3's chain (AWS_* environment
variables, `~/.aws` profiles, instance roles); for Azure `--azure_connection_string`, else
AZURE_STORAGE_CONNECTION_STRING, else `--blob_service_endpoint` with a credential the Azure
SDK's DefaultAzureCredential finds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile

from apache_beam.io.filesystems import FileSystems

from pipeline.run_contract import SUCCESS_MARKER, InputError

GCS, S3, AZURE = "gs", "s3", "azfs"
STORE_NAMES = {GCS: "Cloud Storage", S3: "Amazon S3", AZURE: "Azure Blob Storage"}
# The preflight check: one attempt after a failed one, a few seconds each, so an endpoint
# that does not answer is reported within about 10 s.
CHECK_CONNECT_S, CHECK_READ_S, CHECK_ATTEMPTS = 3, 5, 2
CHECK_DEADLINE_S = 10  # Cloud Storage's client retries for a time, not a number of attempts
# The lock's requests: the stores' usual retries (a lost response is read back, see lock.py).
CALL_CONNECT_S, CALL_READ_S, CALL_ATTEMPTS = 5, 30, 5
MODEL_CACHE = os.path.join(tempfile.gettempdir(), "adpredict-models")
_AZFS = re.compile(r"^azfs://([a-z0-9]{3,24})/([a-z0-9](?![a-z0-9-]*--)[a-z0-9-]{1,61}[a-z0-9])(?:/(.*))?$")


class StoreUnusable(InputError):
    """A bucket or container a run needs cannot be used: one line, exit 2."""


def scheme_of(path: str) -> str | None:
    return FileSystems.get_scheme(path)


def is_object_store(path: str) -> bool:
    return scheme_of(path) in (S3, AZURE)


def split_s3(path: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key)."""
    bucket, _, key = path.removeprefix("s3://").partition("/")
    if not bucket:
        raise StoreUnusable(f"{path!r} names no bucket: write s3://<bucket>/<path>")
    return bucket, key


def split_azfs(path: str) -> tuple[str, str, str]:
    """`azfs://account/container/blob` -> (account, container, blob)."""
    match = _AZFS.match(path)
    if not match:
        raise StoreUnusable(
            f"{path!r} is not an Azure Blob Storage path: write azfs://<storage account>/<container>/<path> "
            "(account: 3-24 lowercase letters and digits; container: 3-63 lowercase letters, digits and "
            "single hyphens)"
        )
    return match.group(1), match.group(2), match.group(3) or ""


# --- clients -------------------------------------------------------------------------------


def s3_client(options=None, attempts: int = CALL_ATTEMPTS, connect_s: float = CALL_CONNECT_S,
              read_s: float = CALL_READ_S):  # fmt: skip
    """A boto3 S3 client from Beam's S3 flags where given, else boto3's own chain."""
    import boto3
    from botocore.config import Config

    flags = _s3_flags(options)
    config = Config(
        connect_timeout=connect_s,
        read_timeout=read_s,
        retries={"mode": "standard", "total_max_attempts": attempts},
    )
    return boto3.session.Session().client(
        "s3",
        region_name=flags.get("s3_region_name"),
        endpoint_url=flags.get("s3_endpoint_url"),
        aws_access_key_id=flags.get("s3_access_key_id"),
        aws_secret_access_key=flags.get("s3_secret_access_key"),
        aws_session_token=flags.get("s3_session_token"),
        use_ssl=not flags.get("s3_disable_ssl"),
        verify=flags.get("s3_verify"),
        config=config,
    )


def _s3_flags(options) -> dict:
    if options is None:
        return {}
    from apache_beam.options.pipeline_options import S3Options

    view = options.view_as(S3Options)
    names = ("s3_access_key_id", "s3_secret_access_key", "s3_session_token", "s3_endpoint_url",
             "s3_region_name", "s3_verify", "s3_disable_ssl")  # fmt: skip
    return {name: getattr(view, name) for name in names if getattr(view, name, None)}


def azure_service(options=None, attempts: int = CALL_ATTEMPTS, connect_s: float = CALL_CONNECT_S,
                  read_s: float = CALL_READ_S):  # fmt: skip
    """An Azure BlobServiceClient, built as Beam builds its own: --azure_connection_string,
    else AZURE_STORAGE_CONNECTION_STRING, else --blob_service_endpoint with the SDK's
    DefaultAzureCredential; with short timeouts and a bounded, quick retry."""
    from azure.storage.blob import BlobServiceClient, ExponentialRetry

    connection, endpoint = _azure_flags(options)
    retry = ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=max(0, attempts - 1))
    settings = {"connection_timeout": connect_s, "read_timeout": read_s, "retry_policy": retry}
    if connection:
        return BlobServiceClient.from_connection_string(connection, **settings)
    if endpoint:
        from azure.identity import DefaultAzureCredential

        return BlobServiceClient(account_url=endpoint, credential=DefaultAzureCredential(), **settings)
    raise StoreUnusable(
        "no Azure credentials: set AZURE_STORAGE_CONNECTION_STRING or pass --azure_connection_string "
        "(or --blob_service_endpoint with a credential Azure's DefaultAzureCredential finds)"
    )


def _azure_flags(options) -> tuple[str | None, str | None]:
    connection = endpoint = None
    if options is not None:
        from apache_beam.options.pipeline_options import AzureOptions

        azure = options.view_as(AzureOptions)
        connection, endpoint = azure.azure_connection_string, azure.blob_service_endpoint
    return connection or os.environ.get("AZURE_STORAGE_CONNECTION_STRING"), endpoint


def use_run_options(options) -> None:
    """Beam's FileSystems, in this process, with the run's options (endpoints, credentials);
    `--no_auth` makes gs:// anonymous too (Beam applies it to Dataflow's API only)."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    from pipeline.io import beam_fixes

    FileSystems.set_options(options)
    if options.view_as(GoogleCloudOptions).no_auth:
        beam_fixes.anonymous_google_credentials()


# --- checking a path before a run ------------------------------------------------------------


def check_store(path: str, options=None, role: str = "path") -> None:
    """Raises StoreUnusable (one line, exit 2) unless `path`'s bucket (S3) or container
    (Azure) answers with these credentials; other paths pass through. `role` names the flag
    in the message ("--output_dir")."""
    scheme = scheme_of(path)
    if scheme == S3:
        _check_s3(path, options, role)
    elif scheme == AZURE:
        _check_azure(path, options, role)
    elif scheme == GCS:
        _check_gcs(path, options, role)


def check_stores(options, paths) -> None:
    """`check_store` for each (role, path), each bucket or container once."""
    seen = set()
    for role, path in paths:
        scheme = scheme_of(path) if path else None
        if scheme not in STORE_NAMES:
            continue
        where = (scheme, split_azfs(path)[:2] if scheme == AZURE else _bucket_of(path))
        if where not in seen:
            seen.add(where)
            check_store(path, options, role)


# The store each scheme's last check reached, to name it when a run fails on it later.
_CHECKED: dict[str, str] = {}
_GCS_REQUEST = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE) \S*/storage/v1/")


def storage_failure(error: BaseException) -> str | None:
    """One line for a run that failed because a store failed it (after the clients' own
    retries): which store, where, and the last error; None for any other failure."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        module = type(error).__module__
        scheme = next((s for prefix, s in _ERROR_MODULES.items() if module.startswith(prefix)), None)
        if module.startswith("google.api_core") and _GCS_REQUEST.search(str(error)):
            scheme = GCS  # api_core's errors are every Google client's: this one was Cloud Storage's
        if scheme:
            where = _CHECKED.get(scheme, "")
            text = re.sub(r"\s*\[while running '([^']*)'\]", r" (step \1)", _one_line(error, 300))
            return f"{STORE_NAMES[scheme]}{' ' + where if where else ''} failed: {text}"
        error = error.__cause__ or error.__context__
    return None


# Where each store's client errors come from: Beam's wrappers, boto3, the Azure SDK, Cloud
# Storage's client (its own errors; the api_core ones it raises are told by their request).
_ERROR_MODULES = {
    "google.cloud.storage": GCS,
    "apache_beam.io.gcp.gcsio": GCS,
    "apache_beam.io.aws": S3,
    "botocore": S3,
    "boto3": S3,
    "apache_beam.io.azure": AZURE,
    "azure.": AZURE,
}


def _check_s3(path: str, options, role: str) -> None:
    from botocore import exceptions as aws

    bucket, _ = split_s3(path)
    client = s3_client(options, CHECK_ATTEMPTS, CHECK_CONNECT_S, CHECK_READ_S)
    endpoint = client.meta.endpoint_url
    _CHECKED[S3] = f"at {endpoint} (s3://{bucket})"
    try:
        client.head_bucket(Bucket=bucket)
    except aws.NoCredentialsError:
        raise StoreUnusable(
            f"{role} {path}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE), or pass --s3_access_key_id and --s3_secret_access_key"
        ) from None
    except aws.ClientError as e:
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 404:
            raise StoreUnusable(
                f"{role} {path}: bucket {bucket!r} does not exist at {endpoint}; create it or fix the path"
            ) from None
        if status in (401, 403):
            raise StoreUnusable(
                f"{role} {path}: {endpoint} refused these credentials for bucket {bucket!r} (HTTP {status}); "
                "check the access key and that it may read and write the bucket"
            ) from None
        raise StoreUnusable(f"{role} {path}: {endpoint} answered {_one_line(e)}") from None
    except (aws.EndpointConnectionError, aws.ConnectTimeoutError, aws.ReadTimeoutError,
            aws.ConnectionClosedError) as e:  # fmt: skip
        raise StoreUnusable(
            f"{role} {path}: cannot reach the S3 endpoint {endpoint} ({_one_line(e)}); check "
            "--s3_endpoint_url or AWS_ENDPOINT_URL and the network"
        ) from None
    except aws.BotoCoreError as e:
        raise StoreUnusable(f"{role} {path}: {_one_line(e)}") from None


def _bucket_of(path: str) -> str:
    """The bucket of a gs:// or s3:// path."""
    return path.split("://", 1)[1].partition("/")[0]


def _check_gcs(path: str, options, role: str) -> None:
    """The bucket's metadata, with the client Beam's gs:// file system uses (its credentials,
    STORAGE_EMULATOR_HOST), retried for CHECK_DEADLINE_S instead of Beam's 120 s."""
    from apache_beam.io.gcp import gcsio
    from google.api_core import exceptions as google
    from google.cloud.storage.retry import DEFAULT_RETRY

    bucket = _bucket_of(path)
    if not bucket:
        raise StoreUnusable(f"{role} {path!r} names no bucket: write gs://<bucket>/<path>")
    client = gcsio.GcsIO(pipeline_options=options).client
    endpoint = client._connection.API_BASE_URL
    _CHECKED[GCS] = f"at {endpoint} (gs://{bucket})"
    try:
        client.get_bucket(bucket, timeout=(CHECK_CONNECT_S, CHECK_READ_S),
                          retry=DEFAULT_RETRY.with_timeout(CHECK_DEADLINE_S))  # fmt: skip
    except google.NotFound:
        raise StoreUnusable(
            f"{role} {path}: bucket {bucket!r} does not exist at {endpoint}; create it or fix the path"
        ) from None
    except (google.Unauthorized, google.Forbidden) as e:
        raise StoreUnusable(
            f"{role} {path}: {endpoint} refused these credentials for bucket {bucket!r} ({_one_line(e)}); run "
            "`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
        ) from None
    except google.RetryError as e:  # its last error, not "Timeout of 10.0s exceeded"
        if isinstance(e.cause, google.GoogleAPICallError):
            raise StoreUnusable(f"{role} {path}: {endpoint} answered {_one_line(e.cause)}") from None
        raise StoreUnusable(
            f"{role} {path}: cannot reach Cloud Storage at {endpoint} ({_one_line(e.cause or e)}); check the "
            "network (and STORAGE_EMULATOR_HOST, if set)"
        ) from None
    except google.GoogleAPICallError as e:
        raise StoreUnusable(f"{role} {path}: {endpoint} answered {_one_line(e)}") from None


def _check_azure(path: str, options, role: str) -> None:
    from azure.core import exceptions as az

    account, container, _ = split_azfs(path)
    try:
        service = azure_service(options, CHECK_ATTEMPTS, CHECK_CONNECT_S, CHECK_READ_S)
    except StoreUnusable as e:
        raise StoreUnusable(f"{role} {path}: {e}") from None
    endpoint = service.url.rstrip("/")
    _CHECKED[AZURE] = f"at {endpoint} (azfs://{account}/{container})"
    if service.account_name and service.account_name != account:
        raise StoreUnusable(
            f"{role} {path} names storage account {account!r}, but the Azure credentials are for "
            f"{service.account_name!r} ({endpoint}); fix the path or the connection string"
        )
    try:
        service.get_container_client(container).get_container_properties()
    except az.ResourceNotFoundError:
        raise StoreUnusable(
            f"{role} {path}: container {container!r} does not exist in account {account!r} ({endpoint}); "
            "create it or fix the path"
        ) from None
    except az.ClientAuthenticationError as e:
        raise StoreUnusable(
            f"{role} {path}: {endpoint} refused the Azure credentials ({_one_line(e)}); check the "
            "connection string or account key"
        ) from None
    except (az.ServiceRequestError, az.ServiceResponseError) as e:
        raise StoreUnusable(
            f"{role} {path}: cannot reach the Azure Blob endpoint {endpoint} ({_one_line(e)}); check the "
            "connection string's BlobEndpoint and the network"
        ) from None
    except az.HttpResponseError as e:
        raise StoreUnusable(f"{role} {path}: {endpoint} answered {_one_line(e)}") from None


def _one_line(error: BaseException, limit: int = 160) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- a model directory on S3 or Azure ----------------------------------------------------------


_LOCAL_COPIES: dict[str, str] = {}


def local_model_dir(model_dir: str, role: str = "--model_dir") -> str:
    """`model_dir` itself when TensorFlow reads it (local, gs://); for s3:// and azfs://, a
    copy on this machine, downloaded once per version of its files (their names, sizes and
    change times) into MODEL_CACHE and reused by later runs and local workers. Also for
    `train --transform_dir` (`role`), which TensorFlow reads the same way."""
    if not is_object_store(model_dir):
        return model_dir
    if model_dir not in _LOCAL_COPIES:
        _LOCAL_COPIES[model_dir] = _downloaded(model_dir, role)
    return _LOCAL_COPIES[model_dir]


@contextlib.contextmanager
def written_locally(target: str, role: str = "--output_dir", keep_failed: bool = True):
    """A directory for TensorFlow to write what belongs at `target`: `target` itself when
    TensorFlow writes there (local, gs://); for s3:// and azfs://, a temporary local one
    whose files are uploaded under `target` when the block ends, `_SUCCESS` last, so that a
    reader never sees the marker before the files it vouches for. When the block raised they
    are uploaded only with `keep_failed` (a failed analyze's run.json and error records are
    worth reading; half a model is not)."""
    if not is_object_store(target):
        yield target
        return
    local = tempfile.mkdtemp(prefix="adpredict-upload-")
    try:
        yield local
    except BaseException:
        if keep_failed:
            upload_tree(local, target, role)
        raise
    else:
        upload_tree(local, target, role)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def upload_tree(local: str, target: str, role: str = "--output_dir") -> int:
    """Copies the files under `local` to `target` (same relative paths) through Beam's
    FileSystems, `_SUCCESS` last; returns how many."""
    files = sorted(
        os.path.relpath(os.path.join(folder, name), local)
        for folder, _, names in os.walk(local)
        for name in names
    )
    files.sort(key=lambda name: os.path.basename(name) == SUCCESS_MARKER)  # the marker last
    for name in files:
        remote = FileSystems.join(target.rstrip("/"), *name.split(os.sep))
        try:
            with (
                open(os.path.join(local, name), "rb") as src,
                FileSystems.create(remote, compression_type="uncompressed") as dst,
            ):
                shutil.copyfileobj(src, dst, 8 << 20)
        except Exception as e:  # noqa: BLE001 - filesystems raise their own types
            raise StoreUnusable(f"{role} {target}: cannot write {remote}: {_one_line(e)}") from None
    return len(files)


def _downloaded(model_dir: str, role: str = "--model_dir") -> str:
    root = model_dir.rstrip("/") + "/"
    try:
        found = FileSystems.match([root + "**"])[0].metadata_list
    except Exception as e:  # noqa: BLE001 - filesystems raise their own types
        raise StoreUnusable(f"{role} {model_dir}: cannot list it: {_one_line(e)}") from None
    files = sorted((m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in found if m.path != root)
    if not files:
        raise StoreUnusable(f"{role} {model_dir} holds no files: pass the directory of an exported model")
    version = hashlib.sha256(json.dumps([model_dir, files]).encode("utf-8")).hexdigest()[:24]
    target = os.path.join(MODEL_CACHE, version)
    if os.path.isdir(target):
        return target
    os.makedirs(MODEL_CACHE, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f"{version}.", suffix=".partial", dir=MODEL_CACHE)
    try:
        for path, _, _ in files:
            local = os.path.join(partial, *path[len(root) :].split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with FileSystems.open(path, compression_type="uncompressed") as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
        with contextlib.suppress(OSError):  # another process finished first: keep its copy
            os.rename(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
