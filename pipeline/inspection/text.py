"""The readable report of `adpredict inspect`: the model first, then a line per check."""

from __future__ import annotations

import textwrap

from pipeline.inspection.checks import megabytes, number, tensor_text
from transforms.model_contract import DESCRIPTION_PATH, RAW_SIGNATURE


def format_report(report: dict) -> str:
    """The readable report: the model first, then one line per portability check."""
    lines = [f"model directory  {report['model_dir']}"]
    tf_info = report["tensorflow"]
    lines.append(
        f"  SavedModel saved with TensorFlow {tf_info['saved_with'] or '?'} (GraphDef {tf_info['graph_producer']}), "
        f"{report['files']} files, {megabytes(report['size_bytes'])}"
    )
    if report["adpredict_description"]:
        key = report["key"]
        key_text = (
            f"key field {key['field']} ({key['type']})" if key["field"] else "key: the record's <file>:<line>"
        )
        origin = report["adpredict_description"]
        source = (
            "" if origin.endswith(DESCRIPTION_PATH) else f" read from the signature (no {DESCRIPTION_PATH})"
        )
        lines.append(
            f"  adpredict description{source}: schema {report['schema'] or '-'}, {key_text}, label {report['label'] or '-'}"
        )
    else:
        lines.append(f"  no adpredict description ({DESCRIPTION_PATH})" + (
            f": {report['description_error']}" if report["description_error"] else ""))  # fmt: skip
    lines += [
        "",
        f"raw inputs (features of each tf.Example in {report['example_input']})"
        if report.get("example_input")
        else f"raw inputs ({RAW_SIGNATURE})",
    ]
    rows = [(i["name"], i["type"] or "-", tensor_text(i) if i.get("dtype") else "(not in signature)",
             i["missing"] + (f", range {i['range']}" if i["range"] else "")) for i in report["inputs"]]  # fmt: skip
    lines += _table(rows)
    lines += ["", "outputs"]
    lines += _table(
        [(o["name"], tensor_text(o) if o.get("dtype") else "(not in signature)") for o in report["outputs"]]
    )
    lines += ["", "signatures"]
    for name, signature in report["signatures"].items():
        lines.append(f"  {name} ({signature['method']})")
        for direction, label in (("inputs", "in: "), ("outputs", "out:")):
            specs = ", ".join(f"{k} {tensor_text(v)}" for k, v in sorted(signature[direction].items()))
            lines += _wrapped(f"{label} {specs}", 4, 9)
        for composite in signature["composite_inputs"]:
            lines.append(
                f"    {composite['name']}: {composite['kind']} {composite.get('dtype')}, fed as {composite['fed_as']}"
            )
    transform = report["transform"]
    lines += ["", f"transform fingerprint  {transform['fingerprint'] or '(none)'}"]
    if transform["fingerprint"]:
        lines.append(
            f"  graph {transform['graph_sha256'][:16]}..., assets/ {str(transform['assets_sha256'])[:16]}..."
        )
    lines += _wrapped("covers: " + transform["covers"], 2, 4)
    batch = report["batch_size"]
    tuning = batch["tuning"] or {}
    timed = tuning.get("records_per_second") or {}
    best = (
        f" (timed at export: {int(timed[str(batch['recorded'])]):,} records/s)"
        if str(batch["recorded"]) in timed
        else ""
    )
    lines += [
        "",
        f"batch size  {batch['recorded'] if batch['recorded'] is not None else '(not recorded)'}{best}",
    ]
    metrics = ", ".join(f"{k} {number(v)}" for k, v in (report["training_metrics"] or {}).items())
    lines += _wrapped(f"training metrics  {metrics or '(none recorded)'}", 0, 4)
    golden = report["golden_records"]
    lines += _wrapped(
        f"golden records  {golden['count']}, scored at export with TensorFlow {golden['tensorflow']}; every run "
        f"scores them first and stops if an output moved by more than {golden['tolerance']:g}"
        if golden
        else "golden records  none (not trained by adpredict, or exported before it stored them): runs skip the canary",
        0,
        4,
    )
    lines += _wrapped(f"bf16 check  {precision_text(report.get('precision_check'))}", 0, 4)
    profile = report.get("training_profile")
    lines += _wrapped(
        f"training profile  {number(profile['records'])} records, {len(profile['features'])} features"
        f"{', outputs on the eval split' if profile['outputs'] else ''}; every run's data-quality gate checks "
        "skew against it"
        if profile
        else "training profile  none (not trained by adpredict): runs skip skew checks; nightly still checks drift",
        0,
        4,
    )
    lines.append(f"model fingerprint  {report['fingerprints']['adpredict']} (run.json model.fingerprint)")
    lines += ["", "portability"]
    for check in report["checks"]:
        lines += _wrapped(f"{check['status']:<5} {check['title']:<24}{check['reason']}", 2, 32)
        for note in check["notes"]:
            if note != check["reason"]:
                lines += _wrapped("- " + note, 32, 34)
    return "\n".join(lines)


def _wrapped(text: str, indent: int, hanging: int, width: int = 100) -> list[str]:
    """Wrapped at spaces only: paths, URLs and JSON stay whole."""
    return textwrap.wrap(text, width, initial_indent=" " * indent, subsequent_indent=" " * hanging,
                         break_long_words=False, break_on_hyphens=False)  # fmt: skip


def _table(rows: list[tuple]) -> list[str]:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))] if rows else []
    return [
        "  " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def precision_text(record: dict | None) -> str:
    """The stored bf16 check (pipeline.inference.precision) and the speeds by CPU kind."""
    if not record:
        return "none: --precision bf16 refuses and auto keeps fp32 until a run checks it on its first records"
    check = record.get("check")
    if check is None:
        return f"not run ({record.get('not_checked')}); --precision bf16|auto use fp32"
    changes = ", ".join(f"{name} by up to {value:.4g}" for name, value in check["output_change"].items())
    auc = "" if check.get("auc_change") is None else f", AUC by {check['auc_change']:.4g}"
    tolerance = record.get("tolerance", {})
    verdict = "passed" if check["passed"] else "FAILED (bf16 refused)"
    speeds = "; ".join(
        f"{kind}: bf16 {s['bf16'] / max(s['fp32'], 1):.2f}x fp32 ({number(s['fp32'])} -> {number(s['bf16'])} "
        f"records/s at batch {s['batch_size']})"
        for kind, s in sorted((record.get("speed") or {}).items())
    )
    return (
        f"{verdict} on {check['source']}: outputs moved {changes}{auc} (limits {tolerance.get('output_change')}, "
        f"AUC {tolerance.get('auc_change')}){'; ' + speeds if speeds else ''}"
    )
