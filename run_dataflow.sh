#!/usr/bin/env bash
# Submits the analyze or predict pipeline to Google Cloud Dataflow.
#
#   ./run_dataflow.sh predict --model_dir gs://B/model --input 'gs://B/in/*.jsonl' --output_dir gs://B/out
#   ./run_dataflow.sh analyze --schema ads --input 'gs://B/train/*.jsonl' --output_dir gs://B/transform
#   ./run_dataflow.sh --dry-run predict ...   # build and stage the real job offline, submit nothing
#
# Settings come from the environment or .env (documented in .env.template); every other
# argument goes to the pipeline. Workers install this package from setup.py (--setup_file),
# pinned like the launcher, or run SDK_CONTAINER_IMAGE (see Dockerfile) when it is set.
# A GPU job (GPU_TYPE set) always runs GPU_SDK_CONTAINER_IMAGE, the image of Dockerfile's
# gpu target (setup.py and SDK_CONTAINER_IMAGE carry no CUDA libraries), and predict gets
# --gpu require (GPU_MISSING=warn: --gpu warn): a worker that sees no GPU fails the job.
# A dry run writes the job request to $DRY_RUN_DIR/<job name>.json and the files it would
# stage under $DRY_RUN_DIR/staged/, with no network and no credentials.
set -euo pipefail

cd "$(dirname "$0")"
if [ -f .env ]; then
  # shellcheck disable=SC1091
  . ./.env
fi

usage() { echo "usage: run_dataflow.sh [--dry-run] analyze|predict [pipeline flags...]" >&2; exit 2; }

DRY_RUN="${DRY_RUN:-0}"
if [ "${1:-}" = "--dry-run" ]; then
  DRY_RUN=1
  shift
fi
JOB="${1:-}"
[ -n "$JOB" ] || usage
shift
case "$JOB" in
  analyze|predict) ;;
  *) echo "run_dataflow.sh: unknown job '$JOB' (analyze or predict)" >&2; usage ;;
esac

missing=()
for name in PROJECT REGION TEMP_LOCATION; do
  [ -n "${!name:-}" ] || missing+=("$name")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "run_dataflow.sh: set ${missing[*]} (in the environment or .env; see .env.template)" >&2
  exit 2
fi
case "$TEMP_LOCATION" in
  gs://*) ;;
  *) echo "run_dataflow.sh: TEMP_LOCATION must be a gs:// folder, got '$TEMP_LOCATION'" >&2; exit 2 ;;
esac
STAGING_LOCATION="${STAGING_LOCATION:-${TEMP_LOCATION%/}/staging}"
PYTHON="${PYTHON:-.venv/bin/python}"
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
    echo "run_dataflow.sh: GPU_TYPE needs GPU_SDK_CONTAINER_IMAGE, a worker image with CUDA: docker build --target gpu -t IMAGE . && docker push IMAGE, then set GPU_SDK_CONTAINER_IMAGE=IMAGE (docs/runners.md)" >&2
    exit 2
  fi
  case "${GPU_MISSING:-require}" in
    require|warn) ;;
    *) echo "run_dataflow.sh: GPU_MISSING must be require or warn, got '$GPU_MISSING'" >&2; exit 2 ;;
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
if [ "$DRY_RUN" = "1" ]; then
  DRY_RUN_DIR="${DRY_RUN_DIR:-dataflow-dry-run}"
  ARGS+=(--dry_run=True --no_auth --dataflow_job_file "$DRY_RUN_DIR/$JOB_NAME.json")
fi

echo "run_dataflow.sh: $JOB as Dataflow job $JOB_NAME in $PROJECT/$REGION" >&2
"$PYTHON" -m "pipeline.${JOB}" "${ARGS[@]}" "$@"
if [ "$DRY_RUN" = "1" ]; then
  echo "run_dataflow.sh: dry run: job request in $DRY_RUN_DIR/$JOB_NAME.json, nothing submitted" >&2
else
  echo "run_dataflow.sh: console: https://console.cloud.google.com/dataflow/jobs?project=${PROJECT}&region=${REGION} (job $JOB_NAME)" >&2
fi
