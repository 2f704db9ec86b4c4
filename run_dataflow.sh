#!/usr/bin/env bash
# Submits the analyze or predict pipeline to Google Cloud Dataflow (./run_dataflow.sh --help).
#
#   ./run_dataflow.sh predict --model_dir gs://B/model --input 'gs://B/in/*.jsonl' --output_dir gs://B/out
#   ./run_dataflow.sh analyze --schema ads --input 'gs://B/train/*.jsonl' --output_dir gs://B/transform
#   ./run_dataflow.sh --dry-run predict ...   # build and stage the real job offline, submit nothing
#
# Settings come from the environment or .env (documented in .env.template); every argument
# after the job goes to the pipeline, relative local paths made absolute from the caller's
# directory (the pipeline runs in this repository). Workers install this package from
# setup.py (--setup_file), pinned like the launcher, or run SDK_CONTAINER_IMAGE (see
# Dockerfile) when it is set. A GPU job (GPU_TYPE set) always runs GPU_SDK_CONTAINER_IMAGE,
# the image of Dockerfile's gpu target (setup.py and SDK_CONTAINER_IMAGE carry no CUDA
# libraries), and predict gets --gpu require (GPU_MISSING=warn: --gpu warn): a worker that
# sees no GPU fails the job. A dry run writes the job request to $DRY_RUN_DIR/<job name>.json
# and the files it would stage under $DRY_RUN_DIR/staged/, with no network and no
# credentials, except that a gs:// --model_dir is read (the model's description): then it
# first checks that Cloud Storage answers, and stops in one line when it does not.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: run_dataflow.sh [--dry-run] analyze|predict [pipeline flags...]
       run_dataflow.sh analyze|predict --help    (the pipeline's own flags)

Submits adpredict's analyze or predict pipeline to Google Cloud Dataflow: runs
`python -m pipeline.JOB` in this repository with the Dataflow flags the settings below
make, followed by the pipeline flags given here (--input, --output_dir, --model_dir, ...).
Relative local paths in them (and in DRY_RUN_DIR, PYTHON) are from the current directory.

Options (before the job):
  --dry-run, --dry_run  build the real job request and stage its files into DRY_RUN_DIR,
                        offline; submit nothing (a gs:// --model_dir is still read)
  -h, --help            show this help

Settings, from the environment or .env (see .env.template):
  PROJECT, REGION          project and region of the job (required)
  TEMP_LOCATION            gs:// folder for temporary files (required)
  STAGING_LOCATION         gs:// folder for staged files (default: TEMP_LOCATION/staging)
  SERVICE_ACCOUNT_EMAIL    the workers' service account
  MACHINE_TYPE             worker machine type
  MAX_WORKERS              autoscaling cap
  NETWORK, SUBNETWORK      the workers' VPC network and subnetwork
  SDK_CONTAINER_IMAGE      worker image (Dockerfile) instead of installing setup.py
  GPU_TYPE, GPU_COUNT      GPU workers (GPU_COUNT default 1); needs GPU_SDK_CONTAINER_IMAGE
  GPU_SDK_CONTAINER_IMAGE  the GPU worker image (docker build --target gpu)
  GPU_MISSING              require (default) or warn: a GPU job's worker that sees no GPU
  JOB_NAME                 Dataflow job name (default: adpredict-JOB-YYYYmmdd-HHMMSS, UTC)
  DRY_RUN                  1: same as --dry-run
  DRY_RUN_DIR              where a dry run writes (default: dataflow-dry-run/ in this repository)
  PYTHON                   Python that launches the job (default: this repository's .venv/bin/python)
  STORAGE_EMULATOR_HOST    where a dry run checks that Cloud Storage answers (default: Google's)

Examples:
  ./run_dataflow.sh predict --model_dir gs://my-bucket/model \
      --input 'gs://my-bucket/ads/*.jsonl' --output_dir gs://my-bucket/predictions/2026-11-26
  ./run_dataflow.sh analyze --schema ads --input bq://my-project.ads.training \
      --output_dir gs://my-bucket/transform
  ./run_dataflow.sh --dry-run predict --model_dir demo_output/model \
      --input 'gs://my-bucket/ads/*.jsonl' --output_dir gs://my-bucket/predictions/2026-11-26
USAGE
}
SHORT_USAGE="run_dataflow.sh [--dry-run] analyze|predict [pipeline flags...]; run_dataflow.sh --help"
fail() { echo "run_dataflow.sh: $*" >&2; exit 2; }

# Relative paths given by the caller are the caller's: made absolute before moving into the
# repository (relative ones in .env are the repository's, as is .env itself).
CALLER_DIR="$PWD"
case "${DRY_RUN_DIR:-}" in ''|/*) ;; *) DRY_RUN_DIR="$CALLER_DIR/$DRY_RUN_DIR" ;; esac
case "${PYTHON:-}" in /*) ;; */*) PYTHON="$CALLER_DIR/$PYTHON" ;; esac
cd "$(dirname "$0")"
REPO="$PWD"
if [ -f .env ]; then
  # shellcheck disable=SC1091
  . ./.env
fi

DRY_RUN="${DRY_RUN:-0}"
# --dry-run=BOOL / --dry_run=BOOL (Beam's spelling), wherever given
set_dry_run() {
  case "$1" in
    True|true|1) DRY_RUN=1 ;;
    False|false|0) DRY_RUN=0 ;;
    *) fail "--dry_run takes True or False, got '$1' (or give --dry-run alone)" ;;
  esac
}
while [ "$#" -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run|--dry_run) DRY_RUN=1 ;;
    --dry-run=*|--dry_run=*) set_dry_run "${1#*=}" ;;
    -*) fail "unknown option '$1' before the job: this script takes --dry-run and --help there; pipeline flags go after analyze|predict ($SHORT_USAGE)" ;;
    *) break ;;
  esac
  shift
done
[ "$#" -gt 0 ] || fail "give the job, analyze or predict: $SHORT_USAGE"
JOB="$1"
shift
case "$JOB" in
  analyze|predict) ;;
  *) fail "unknown job '$JOB': give analyze or predict ($SHORT_USAGE)" ;;
esac

# The pipeline's and Beam's flags whose value is a local path (or a URL): a relative path is
# made absolute from the caller's directory. --schema also takes a built-in name
# (BUILTIN_SCHEMAS in transforms/schema.py), --sdk_location default|container,
# --requirements_cache skip.
is_path_flag() {
  case "$1" in
    --input|--output_dir|--model_dir|--input_schema|--schema|--drift_baseline) return 0 ;;
    --requirements_file|--requirements_cache|--setup_file|--extra_package|--extra_packages) return 0 ;;
    --dataflow_job_file|--template_location|--sdk_location) return 0 ;;
  esac
  return 1
}
from_caller() {  # FLAG VALUE: the value, a relative local path made absolute
  case "$2" in
    ''|/*|-*|*://*) printf '%s' "$2"; return ;;
  esac
  case "$1=$2" in
    --schema=ads|--schema=criteo|--sdk_location=default|--sdk_location=container|--requirements_cache=skip)
      printf '%s' "$2" ;;
    *) printf '%s' "$CALLER_DIR/${2#./}" ;;
  esac
}
PIPELINE_ARGS=()
MODEL_DIR=""
PIPELINE_HELP=0
while [ "$#" -gt 0 ]; do
  arg="$1"
  shift
  case "$arg" in
    --dry-run|--dry_run) DRY_RUN=1; continue ;;
    --dry-run=*|--dry_run=*) set_dry_run "${arg#*=}"; continue ;;
    -h|--help) PIPELINE_HELP=1 ;;
  esac
  flag="${arg%%=*}"
  if is_path_flag "$flag"; then
    if [[ "$arg" == *=* ]]; then
      value="$(from_caller "$flag" "${arg#*=}")"
      arg="$flag=$value"
    elif [ "$#" -gt 0 ] && [[ "$1" != -* ]]; then
      PIPELINE_ARGS+=("$arg")
      value="$(from_caller "$flag" "$1")"
      arg="$value"
      shift
    else
      value=""
    fi
    [ "$flag" != --model_dir ] || MODEL_DIR="$value"
  fi
  PIPELINE_ARGS+=("$arg")
done
PYTHON="${PYTHON:-.venv/bin/python}"
command -v "$PYTHON" >/dev/null ||
  fail "no Python at '$PYTHON': run make (it creates .venv) or set PYTHON to a Python with adpredict installed"
if [ "$PIPELINE_HELP" = 1 ]; then
  echo "run_dataflow.sh: the flags of pipeline.$JOB follow (this script's own: run_dataflow.sh --help)" >&2
  exec "$PYTHON" -m "pipeline.$JOB" --help
fi

missing=()
for name in PROJECT REGION TEMP_LOCATION; do
  [ -n "${!name:-}" ] || missing+=("$name")
done
if [ "${#missing[@]}" -gt 0 ]; then
  fail "set ${missing[*]} (in the environment or .env; see .env.template)"
fi
STAGING_LOCATION="${STAGING_LOCATION:-${TEMP_LOCATION%/}/staging}"
# Beam's bucket name check: with neither location's bucket valid it would fall back to
# creating a default bucket in the project (minutes of retries offline, even in a dry run).
BUCKET_NAME='^[a-z0-9][-_a-z0-9.]+[a-z0-9]$'
for name in TEMP_LOCATION STAGING_LOCATION; do
  location="${!name}"
  case "$location" in
    gs://*) ;;
    *) fail "$name must be a gs:// folder, got '$location'" ;;
  esac
  bucket="${location#gs://}"
  bucket="${bucket%%/*}"
  [[ "$bucket" =~ $BUCKET_NAME ]] ||
    fail "$name must name a valid Cloud Storage bucket (3-63 lowercase letters, digits, -, _, .), got '$location'"
done
JOB_NAME="${JOB_NAME:-adpredict-${JOB}-$(date -u +%Y%m%d-%H%M%S)}"

ARGS=(
  --runner DataflowRunner
  --project "$PROJECT"
  --region "$REGION"
  --temp_location "$TEMP_LOCATION"
  --staging_location "$STAGING_LOCATION"
  --job_name "$JOB_NAME"
)
if [ -n "${GPU_TYPE:-}" ]; then
  if [ -z "${GPU_SDK_CONTAINER_IMAGE:-}" ]; then
    fail "GPU_TYPE needs GPU_SDK_CONTAINER_IMAGE, a worker image with CUDA: docker build --target gpu -t IMAGE . && docker push IMAGE, then set GPU_SDK_CONTAINER_IMAGE=IMAGE (docs/runners.md)"
  fi
  case "${GPU_MISSING:-require}" in
    require|warn) ;;
    *) fail "GPU_MISSING must be require or warn, got '$GPU_MISSING'" ;;
  esac
  ARGS+=(--sdk_container_image "$GPU_SDK_CONTAINER_IMAGE" --sdk_location container)
  [ "$JOB" != predict ] || ARGS+=(--gpu "${GPU_MISSING:-require}")
elif [ -n "${SDK_CONTAINER_IMAGE:-}" ]; then
  ARGS+=(--sdk_container_image "$SDK_CONTAINER_IMAGE" --sdk_location container)
else
  ARGS+=(--setup_file ./setup.py)
fi
[ -z "${SERVICE_ACCOUNT_EMAIL:-}" ] || ARGS+=(--service_account_email "$SERVICE_ACCOUNT_EMAIL")
[ -z "${MACHINE_TYPE:-}" ] || ARGS+=(--machine_type "$MACHINE_TYPE")
[ -z "${MAX_WORKERS:-}" ] || ARGS+=(--max_num_workers "$MAX_WORKERS")
[ -z "${NETWORK:-}" ] || ARGS+=(--network "$NETWORK")
[ -z "${SUBNETWORK:-}" ] || ARGS+=(--subnetwork "$SUBNETWORK")
if [ -n "${GPU_TYPE:-}" ]; then
  # One SDK process per GPU worker, so the model and its GPU memory are held once.
  ARGS+=(
    --dataflow_service_options "worker_accelerator=type:${GPU_TYPE};count:${GPU_COUNT:-1};install-nvidia-driver"
    --experiments no_use_multiple_sdk_containers
  )
fi

# Whether Cloud Storage answers within PROBE_S seconds (any HTTP answer will do), through
# the same proxies as the pipeline's clients: prints why not and fails otherwise.
PROBE_S=5
storage_answers() {
  "$PYTHON" - "$1" "$PROBE_S" <<'PY'
import sys, threading, urllib.error, urllib.request
url, limit = sys.argv[1], float(sys.argv[2])
why = [f"no answer within {limit:g} s"]
def probe():
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=limit + 1)
    except urllib.error.HTTPError:
        pass  # an HTTP error is an answer
    except Exception as e:  # noqa: BLE001 - unresolved, refused, TLS, timed out: no answer
        why[0] = " ".join(str(getattr(e, "reason", None) or e).split()) or type(e).__name__
        return
    why.clear()
asker = threading.Thread(target=probe, daemon=True)
asker.start()
asker.join(limit)
if why:
    print(why[0])
    sys.exit(1)
PY
}

if [ "$DRY_RUN" = "1" ]; then
  DRY_RUN_DIR="${DRY_RUN_DIR:-dataflow-dry-run}"
  case "$DRY_RUN_DIR" in /*) ;; *) DRY_RUN_DIR="$REPO/$DRY_RUN_DIR" ;; esac
  ARGS+=(--dry_run=True --no_auth --dataflow_job_file "$DRY_RUN_DIR/$JOB_NAME.json")
  # Everything else stays offline; the model's description is read where it is, and
  # Cloud Storage that does not answer would hold the dry run for many minutes of retries.
  if [ "$JOB" = predict ] && [[ "$MODEL_DIR" == gs://* ]]; then
    STORAGE="${STORAGE_EMULATOR_HOST:-https://storage.googleapis.com}"
    [[ "$STORAGE" == *://* ]] || STORAGE="http://$STORAGE"
    if ! why="$(storage_answers "$STORAGE")"; then
      model="${MODEL_DIR%/}"
      fail "dry run: cannot read --model_dir $MODEL_DIR (its description, which the job is built from): Cloud Storage at $STORAGE did not answer ($why); to run offline, copy the model here (gsutil -m cp -r $model .) and pass --model_dir ./${model##*/}"
    fi
  fi
fi

echo "run_dataflow.sh: $JOB as Dataflow job $JOB_NAME in $PROJECT/$REGION" >&2
# (${a[@]+"${a[@]}"}: an empty array under set -u in bash 3.2, macOS's)
"$PYTHON" -m "pipeline.${JOB}" "${ARGS[@]}" ${PIPELINE_ARGS[@]+"${PIPELINE_ARGS[@]}"}
if [ "$DRY_RUN" = "1" ]; then
  echo "run_dataflow.sh: dry run: job request in $DRY_RUN_DIR/$JOB_NAME.json, nothing submitted" >&2
else
  echo "run_dataflow.sh: console: https://console.cloud.google.com/dataflow/jobs?project=${PROJECT}&region=${REGION} (job $JOB_NAME)" >&2
fi
