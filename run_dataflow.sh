#!/usr/bin/env bash
# Submits the analyze or predict pipeline to Google Cloud Dataflow.
#
#   ./run_dataflow.sh predict --model_dir gs://B/model --input 'gs://B/in/*.jsonl' --output_dir gs://B/out
#   ./run_dataflow.sh analyze --schema ads --input 'gs://B/train/*.jsonl' --output_dir gs://B/transform
#
# Settings come from the environment (see .env.template); extra arguments go to the pipeline.
# Workers install this package from setup.py (--setup_file), pinned like the launcher.
# DRY_RUN=1 builds the real Dataflow job graph without submitting it (no cloud access needed).
set -euo pipefail

cd "$(dirname "$0")"
[ -f .env ] && . ./.env

JOB="${1:?usage: run_dataflow.sh analyze|predict [pipeline flags...]}"
shift
case "$JOB" in
  analyze|predict) ;;
  *) echo "run_dataflow.sh: unknown job '$JOB' (analyze or predict)" >&2; exit 2 ;;
esac

: "${PROJECT:?set PROJECT to your GCP project}"
: "${REGION:?set REGION, e.g. europe-west1}"
: "${TEMP_LOCATION:?set TEMP_LOCATION to a gs:// folder for temporary files}"
PYTHON="${PYTHON:-.venv/bin/python}"
JOB_NAME="adpredict-${JOB}-$(date -u +%Y%m%d-%H%M%S)"

EXTRA=()
if [ "${DRY_RUN:-0}" = "1" ]; then
  EXTRA+=(--dry_run=True)
fi
if [ -n "${MACHINE_TYPE:-}" ]; then
  EXTRA+=(--machine_type "$MACHINE_TYPE")
fi
if [ -n "${MAX_WORKERS:-}" ]; then
  EXTRA+=(--max_num_workers "$MAX_WORKERS")
fi

exec "$PYTHON" -m "pipeline.${JOB}" \
  --runner DataflowRunner \
  --project "$PROJECT" \
  --region "$REGION" \
  --temp_location "$TEMP_LOCATION" \
  --job_name "$JOB_NAME" \
  --setup_file ./setup.py \
  "${EXTRA[@]}" \
  "$@"
