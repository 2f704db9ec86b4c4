"""What a worker process runs the model on: its CPU's bf16 units, its GPUs, as data.

Every process that loads the model reports this (`device_report`), and run.json and the
report show it, so a run that meant to use bf16 units or a GPU says whether it did. A run
that asks for a GPU (`--gpu require`, what run_dataflow.sh passes with GPU_TYPE) and finds
none stops instead of scoring on the CPU unnoticed.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import platform

from pipeline.run_contract import GateFailed

# CPU kinds, by what their bf16 units are: tile matrix units, vector dot products, none.
AMX, AVX512_BF16, NO_BF16 = "amx", "avx512_bf16", "no_bf16"


@dataclasses.dataclass(frozen=True)
class Cpu:
    """What TensorFlow's oneDNN can use on this machine's CPU."""

    name: str
    flags: frozenset[str]
    onednn: bool  # TensorFlow's oneDNN ops on (TF_ENABLE_ONEDNN_OPTS): the bf16 rewrite needs them

    @property
    def kind(self) -> str:
        if not self.onednn:
            return NO_BF16
        if {"amx_bf16", "amx_tile"} <= self.flags:
            return AMX
        return AVX512_BF16 if "avx512_bf16" in self.flags else NO_BF16

    @property
    def has_bf16(self) -> bool:
        return self.kind != NO_BF16

    def as_dict(self) -> dict:
        features = sorted(
            self.flags & {"avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8"}
        )
        return {"name": self.name, "kind": self.kind, "features": features, "onednn": self.onednn}


@functools.cache
def this_cpu() -> Cpu:
    """This machine's CPU, from /proc/cpuinfo (elsewhere: no bf16 known, so fp32)."""
    name, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name in ("", platform.machine()):
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = frozenset(value.split())
                if flags and name:
                    break
    except OSError:
        pass
    return Cpu(name, flags, _onednn_enabled())


def _onednn_enabled() -> bool:
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return False


GPU_POLICIES = ("auto", "require", "warn")  # --gpu: use one if there; stop without; warn without


class NoGpu(GateFailed):
    """The run asked for a GPU (--gpu require) and TensorFlow sees none in this process."""


def visible_gpus() -> list[str]:
    import tensorflow as tf

    return [device.name for device in tf.config.list_physical_devices("GPU")]


def check_gpu(policy: str, gpus: list[str]) -> None:
    """Stops (`require`) or warns (`warn`) when a run that asked for a GPU has none here."""
    if policy == "auto" or gpus:
        return
    import tensorflow as tf

    cuda = "built with CUDA" if tf.test.is_built_with_cuda() else "built without CUDA"
    line = (
        f"--gpu {policy}: TensorFlow {tf.__version__} ({cuda}) sees no GPU in this process; on Dataflow "
        "run the GPU worker image (run_dataflow.sh with GPU_TYPE and GPU_SDK_CONTAINER_IMAGE, "
        "docs/runners.md, GPU workers)"
    )
    if policy == "require":
        raise NoGpu(line + ", or pass --gpu warn to score on the CPU")
    logging.warning("%s; scoring on the CPU", line)


def device_report(precision: str, reason: str, gpus: list[str], batch_size: int) -> dict:
    """One process's devices, as run.json's `workers` lists them."""
    import tensorflow as tf

    return {
        "cpu": this_cpu().as_dict(),
        "gpus": gpus,
        "device": "GPU" if gpus else "CPU",
        "precision": precision,
        "precision_reason": reason,
        "batch_size": batch_size,
        "tensorflow": tf.__version__,
    }
