"""Reduced precision (bfloat16) where the CPU has it, never at the cost of the model's outputs.

How: TensorFlow's oneDNN auto mixed precision, a Grappler rewrite applied when a signature is
instantiated: convolutions, matrix products and the ops between them run in bf16, the rest
(string ops, lookups, image decoding) stays as it is. It is switched on per calling thread
(TensorFlow's function call options carry the rewrite config), so one process runs the same
loaded model in fp32 (golden records, the check below) and in bf16 (the run's calls).

The alternatives, measured (docs/precision.md): XLA cannot compile the preprocessing's string
ops and compiled MobileNetV2 17x slower; a second model exported in bf16 helps only models
adpredict trained, where the rewrite covers foreign ones too.

A model is scored in bf16 only after a check that cannot be skipped: reduced-precision
outputs against fp32 on the eval split (at export) or on the first records a run is given
(a foreign model, on first use), stored in the model directory (`PRECISION_CHECK_FILE`).
`auto` also keeps bf16 only where it measured faster on this kind of CPU.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np

from pipeline.inference.devices import Cpu, this_cpu
from pipeline.run_contract import OptionsError
from transforms.metrics import roc_auc
from transforms.model_contract import PRECISION_CHECK_FILE, model_files, read_model_json

FP32, BF16, AUTO = "fp32", "bf16", "auto"
PRECISIONS = (FP32, BF16, AUTO)
DEFAULT_PRECISION = AUTO  # bf16 only where it passed the check and measured faster (`decide`)
# The check's tolerances: a probability moved by more than a point, or a ranking changed
# enough to move the AUC in its third decimal, is a different model.
MAX_OUTPUT_CHANGE = 0.01
MAX_AUC_CHANGE = 0.002
# `auto` keeps bf16 only when the bare model measured at least this much faster: below it the
# gain is timing noise, or hidden behind parsing in a run, and not worth outputs that differ.
# (make bench, 2026-12-05, AMD EPYC: the light model's bare bf16 at 1.11x made its predict runs
# 0.90x fp32's; the model is a third of a light run's time, and the same runs of one setting
# differ by up to 15%.)
FASTER_BY = 1.20
CHECK_RECORDS = 1000  # records a first-use check scores
FORMAT_VERSION = 1


class PrecisionRefused(OptionsError):
    """`--precision bf16` for a model or a CPU that cannot take it; the message says why."""


# ------------------------------------------------------------------ calling in bf16


def bf16_call_options():
    """TensorFlow function call options that run a signature under oneDNN's bf16 rewrite."""
    from tensorflow.core.protobuf import rewriter_config_pb2
    from tensorflow.python.eager import context

    ctx = context.context()
    config = ctx.config  # this process's settings (threads, ...), a copy
    config.allow_soft_placement = True
    config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 = (
        rewriter_config_pb2.RewriterConfig.ON
    )
    return context.FunctionCallOptions(config_proto=config)


def called_with(options, call: Callable, *args, **kwargs):
    """`call(*args, **kwargs)` on this thread with TensorFlow function call `options` (None:
    the thread's own), restored after."""
    if options is None:
        return call(*args, **kwargs)
    from tensorflow.python.eager import context

    ctx = context.context()
    saved = ctx.function_call_options
    ctx.function_call_options = options
    try:
        return call(*args, **kwargs)
    finally:
        ctx.function_call_options = saved


# ------------------------------------------------------------------ the check


@dataclasses.dataclass(frozen=True)
class PrecisionCheck:
    """bf16 outputs against fp32 on the same records."""

    records: int
    source: str  # "eval split (N records)" or the first records of an input file
    output_change: dict  # output name -> largest |bf16 - fp32| over the records
    auc_fp32: float | None = None
    auc_bf16: float | None = None
    cpu: str = ""

    @property
    def auc_change(self) -> float | None:
        if self.auc_fp32 is None or self.auc_bf16 is None:
            return None
        return abs(self.auc_bf16 - self.auc_fp32)

    @property
    def passed(self) -> bool:
        return self.problem() is None

    def problem(self) -> str | None:
        """What moved past a tolerance, in words; None if nothing did."""
        found = []
        for name, change in self.output_change.items():
            if not change <= MAX_OUTPUT_CHANGE:  # NaN fails too
                found.append(f"output {name!r} moves by up to {change:.4g} (limit {MAX_OUTPUT_CHANGE:g})")
        auc_change = self.auc_change
        if auc_change is not None and not auc_change <= MAX_AUC_CHANGE:
            found.append(f"the AUC moves by {auc_change:.4g} (limit {MAX_AUC_CHANGE:g})")
        return "; ".join(found) or None

    def as_dict(self) -> dict:
        return {
            "records": self.records,
            "source": self.source,
            "cpu": self.cpu,
            "output_change": {k: round(float(v), 6) for k, v in self.output_change.items()},
            "auc_fp32": _rounded(self.auc_fp32),
            "auc_bf16": _rounded(self.auc_bf16),
            "auc_change": _rounded(self.auc_change),
            "passed": self.passed,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PrecisionCheck:
        return cls(
            data["records"],
            data.get("source", ""),
            dict(data["output_change"]),
            data.get("auc_fp32"),
            data.get("auc_bf16"),
            data.get("cpu", ""),
        )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def compare_outputs(
    fp32: dict[str, np.ndarray],
    bf16: dict[str, np.ndarray],
    source: str,
    labels: np.ndarray | None = None,
    scored_output: str | None = None,
) -> PrecisionCheck:
    """The check of one set of records scored both ways; the AUC change when `labels` are given
    (on `scored_output`, a one-value-per-record output)."""
    change = {}
    for name, values in fp32.items():
        a, b = np.asarray(values), np.asarray(bf16[name])
        if a.dtype.kind not in "biuf":  # strings, bytes: equal, or a different model
            change[name] = 0.0 if np.array_equal(a, b) else float("inf")
        else:
            a, b = a.astype(np.float64), b.astype(np.float64)
            change[name] = float(np.max(np.abs(a - b))) if a.size else 0.0
    records = len(next(iter(fp32.values()))) if fp32 else 0
    auc = (None, None)
    if labels is not None and scored_output and len(np.unique(labels)) == 2:
        auc = tuple(roc_auc(labels, np.asarray(o[scored_output]).reshape(-1)) for o in (fp32, bf16))
    return PrecisionCheck(records, source, change, *auc, cpu=this_cpu().name)


# ------------------------------------------------------------------ what the model directory holds


def read_precision_record(model_dir: str) -> dict | None:
    """The model's stored check and speeds (PRECISION_CHECK_FILE), or None."""
    return read_model_json(model_dir, PRECISION_CHECK_FILE)


def precision_record(check: PrecisionCheck | None, speed: dict | None, earlier: dict | None = None) -> dict:
    """The stored record: the check, and records/s of fp32 and bf16 by CPU kind (kept from
    `earlier` for the kinds this machine is not)."""
    record = dict(earlier or {})
    record["format_version"] = FORMAT_VERSION
    record["tolerance"] = {"output_change": MAX_OUTPUT_CHANGE, "auc_change": MAX_AUC_CHANGE}
    if check is not None:
        record["check"] = check.as_dict()
    if speed is not None:
        record.setdefault("speed", {})[this_cpu().kind] = speed
    return record


def write_precision_record(model_dir: str, record: dict) -> None:
    gfile = model_files()
    path = gfile.join(model_dir, PRECISION_CHECK_FILE)
    gfile.makedirs(path.rsplit("/", 1)[0])  # a foreign model may have no assets.extra/
    with gfile.GFile(path, "w") as f:
        f.write(json.dumps(record, indent=1))


# ------------------------------------------------------------------ choosing


@dataclasses.dataclass(frozen=True)
class Decision:
    precision: str  # what the model runs in: fp32 or bf16
    reason: str


def decide(requested: str, record: dict | None, cpu: Cpu, model: str) -> Decision:
    """The precision a process scores in for `--precision requested`; raises PrecisionRefused
    for bf16 where it cannot be used (no bf16 on this CPU, no passing check)."""
    if requested == FP32:
        return Decision(FP32, "asked for fp32")
    if not cpu.has_bf16:
        why = (
            "TensorFlow's oneDNN ops are off (TF_ENABLE_ONEDNN_OPTS=0)"
            if not cpu.onednn
            else f"this CPU ({cpu.name}) has no bf16 units (AVX-512 BF16 or AMX)"
        )
        if requested == BF16:
            raise PrecisionRefused(f"--precision bf16: {why}; use --precision fp32 or auto")
        return Decision(FP32, f"auto: {why}")
    check = (record or {}).get("check")
    if check is None:
        why = f"model {model} has no bf16 check ({PRECISION_CHECK_FILE}"
        why += f": {record['not_checked']})" if (record or {}).get("not_checked") else "); export it again"
        if requested == BF16:
            raise PrecisionRefused(f"--precision bf16: {why}")
        return Decision(FP32, f"auto: {why}")
    problem = PrecisionCheck.from_dict(check).problem()
    if problem:
        why = f"in bf16 {problem}, on {check.get('source') or str(check['records']) + ' records'}"
        if requested == BF16:
            raise PrecisionRefused(f"--precision bf16 refused for model {model}: {why}; use --precision fp32")
        return Decision(FP32, f"auto: {why}")
    if requested == BF16:
        return Decision(BF16, "asked for bf16; the check passed")
    speed = (record.get("speed") or {}).get(cpu.kind)
    if not speed:
        return Decision(FP32, f"auto: bf16 not timed on this CPU kind ({cpu.kind}) yet")
    ratio = speed[BF16] / max(speed[FP32], 1)
    if ratio >= FASTER_BY:
        return Decision(BF16, f"auto: bf16 {ratio:.2f}x fp32 on this CPU kind ({cpu.kind}); the check passed")
    return Decision(
        FP32, f"auto: bf16 only {ratio:.2f}x fp32 on this CPU kind ({cpu.kind}), needs {FASTER_BY:g}x"
    )


def summary_of(record: dict) -> dict:
    """The stored record in brief, for `train`'s summary and run.json: the check's verdict and
    figures, and the speeds measured on this kind of CPU."""
    check = record.get("check")
    summary = {"not_checked": record.get("not_checked")} if check is None else {
        "passed": check["passed"],
        "records": check["records"],
        "output_change": max(check["output_change"].values(), default=0.0),
        "auc_change": check.get("auc_change"),
    }  # fmt: skip
    speed = (record.get("speed") or {}).get(this_cpu().kind)
    if speed:
        summary["speed"] = {"cpu_kind": this_cpu().kind, FP32: speed[FP32], BF16: speed[BF16]}
    return summary
