"""A SavedModel loaded once per worker process, and the configuration a run scores with."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading

import numpy as np
import pyarrow as pa
import tensorflow as tf

from pipeline.blocks import RecordLayout
from pipeline.inference.batching import DEFAULT_MAX_BATCH_BYTES
from pipeline.inference.devices import check_gpu, device_report, this_cpu, visible_gpus
from pipeline.inference.precision import (
    BF16,
    DEFAULT_PRECISION,
    FP32,
    bf16_call_options,
    called_with,
    decide,
    read_precision_record,
)
from pipeline.inference.tensors import fitted_to, model_inputs, output_values, serialized_examples
from pipeline.io.base import KEY_COLUMN, PredictionColumns
from pipeline.io.stores import local_model_dir
from pipeline.run_contract import OptionsError
from transforms.model_contract import InputField, ModelDescription
from transforms.model_integrity import check_model_files
from transforms.signature_reader import describe_model

# Model calls in flight at once per process (see LoadedModel.calls).
CONCURRENT_CALLS = 2
PASSTHROUGH_TYPES = ("int", "float", "string")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model a run scores with and how it is called: what is read of each record
    (`layout`: its inputs, key and pass-through fields), records per call, and the most
    text and image bytes one call may hold."""

    model_dir: str
    layout: RecordLayout
    batch_size: int
    description: ModelDescription | None = None  # None: read from model_dir when loaded
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    tf_threads: int | None = None  # None: TensorFlow's default (every core)
    precision: str = DEFAULT_PRECISION  # --precision: fp32 | bf16 | auto (pipeline.inference.precision)
    precision_record: dict | None = None  # the model's bf16 check and speeds, read once by the launcher
    gpu: str = "auto"  # --gpu: auto | require | warn (pipeline.inference.devices)
    batch_size_given: bool = False  # --batch_size set: kept as is, even on a GPU

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str,
        *,
        input_schema: str | None = None,
        passthrough_fields: str | None = None,
        csv_columns: str | None = None,
        batch_size: int | None = None,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        tf_threads: int | None = None,
        precision: str = DEFAULT_PRECISION,
        gpu: str = "auto",
    ) -> ModelConfig:
        """The configuration to score with `model_dir`: its description (adpredict_model.json,
        else read from its signature, with `input_schema`'s field types), what is read of each
        record, and the batch size recorded in the model unless `batch_size` is given.
        A corrupt or half-copied directory stops here, in one line naming the file."""
        local = local_model_dir(model_dir)  # TensorFlow reads local and gs:// paths only
        check_model_files(local)
        description = describe_model(local, input_schema)
        layout = prediction_layout(description, passthrough_fields, csv_columns)
        return cls(
            model_dir,
            layout,
            batch_size or description.batch_size,
            description,
            max_batch_bytes,
            tf_threads,
            precision=precision,
            precision_record=None if precision == FP32 else read_precision_record(local),
            gpu=gpu,
            batch_size_given=batch_size is not None,
        )

    def load(self) -> LoadedModel:
        return LoadedModel(
            self.model_dir,
            self.tf_threads,
            self.description,
            precision=self.precision,
            precision_record=self.precision_record,
            gpu=self.gpu,
            batch_size=self.batch_size,
        )

    def prediction_columns(self) -> PredictionColumns:
        return prediction_columns(
            self.description or describe_model(local_model_dir(self.model_dir)), self.layout
        )


def prediction_layout(
    description: ModelDescription, passthrough: str | None = None, csv_columns: str | None = None
) -> RecordLayout:
    """What predict reads from each record: model inputs, key, and pass-through fields."""
    fields = passthrough_fields(passthrough, description)
    declared = {item.partition(":")[0].strip() for item in (passthrough or "").split(",") if ":" in item}
    model_fields = {f.name for f in description.inputs} | {description.key_field}
    return RecordLayout(
        description.inputs,
        description.key_field,
        description.key_type,
        passthrough=fields,
        csv_columns=tuple(c.strip() for c in csv_columns.split(",")) if csv_columns else None,
        trained_csv_columns=description.csv_columns,
        untyped=frozenset(f.name for f in fields if f.name not in declared | model_fields),
        require_key=bool(description.key_field),
    )


def passthrough_fields(text: str | None, description: ModelDescription) -> tuple[InputField, ...]:
    """`--passthrough_fields a,b:int` -> fields; a model input or the key keeps its own type."""
    if not text:
        return ()
    known = {f.name: f.type for f in description.inputs}
    if description.key_field:
        known[description.key_field] = description.key_type
    reserved = {KEY_COLUMN, "prediction", *(o.name for o in description.outputs)}
    fields = []
    for item in (part.strip() for part in text.split(",")):
        name, _, declared = item.partition(":")
        if not name:
            raise OptionsError(f"--passthrough_fields has an empty name in {text!r}; remove the empty item")
        if name in reserved:
            raise OptionsError(
                f"--passthrough_fields: {name!r} is a column of every prediction (key, outputs) already; "
                "leave it out of --passthrough_fields"
            )
        if declared and declared not in PASSTHROUGH_TYPES:
            raise OptionsError(
                f"--passthrough_fields: type of {name!r} must be one of {', '.join(PASSTHROUGH_TYPES)}, "
                f"got {declared!r}"
            )
        ftype = known.get(name) or declared or "string"
        fields.append(InputField(name, "string" if ftype == "image" else ftype, required=False))
    return tuple(fields)


def prediction_columns(description: ModelDescription, layout: RecordLayout) -> PredictionColumns:
    return PredictionColumns(
        outputs=tuple(o.name for o in description.outputs),
        passthrough=layout.passthrough,
        key_type=description.key_type if description.key_field else "string",
        output_dtypes=tuple(o.dtype for o in description.outputs),
        output_shapes=tuple(o.shape for o in description.outputs),
    )


class LoadedModel:
    """A SavedModel's scoring signature plus its description; one per process."""

    def __init__(
        self,
        model_dir: str,
        tf_threads: int | None = None,
        description: ModelDescription | None = None,
        *,
        precision: str = FP32,
        precision_record: dict | None = None,
        gpu: str = "auto",
        batch_size: int | None = None,
    ):
        if tf_threads:
            set_tf_threads(tf_threads)
        self.gpus = visible_gpus()
        check_gpu(gpu, self.gpus)
        self.model_dir = model_dir
        self.local_dir = local_model_dir(model_dir)  # s3:// and azfs://: a copy on this machine
        self.description = description or describe_model(self.local_dir)
        check_model_files(self.local_dir)  # each worker: its copy may be cut short where TF would crash
        self._saved_model = tf.saved_model.load(self.local_dir)
        self.signature = self._saved_model.signatures[self.description.signature]
        # The run's calls in bf16 where it was asked for and may be used here; the golden
        # records and direct calls to `outputs` stay fp32.
        decision = decide(precision, precision_record, this_cpu(), model_dir)
        self.precision = decision.precision
        self._call_options = {FP32: None, BF16: bf16_call_options() if this_cpu().has_bf16 else None}
        self.batch_size = batch_size or self.description.batch_size  # a GPU may tune it (golden.load_checked)
        self.device = device_report(decision.precision, decision.reason, self.gpus, self.batch_size)
        # What the signature takes, by name: a tensor is cast / reshaped to it if the record
        # type's natural tensor differs (int32 inputs, [N, 1] Keras inputs).
        self._specs = self.signature.structured_input_signature[1]
        self._load_reported = False
        self._report_lock = threading.Lock()
        self.golden_check: concurrent.futures.Future | None = None  # golden.load_checking's, if so loaded
        # Model calls release the GIL; two in flight keep both cores busy while one batch
        # is converted or its graph runs a serial part (image decoding in tf.map_fn).
        self.calls = concurrent.futures.ThreadPoolExecutor(
            CONCURRENT_CALLS, thread_name_prefix="adpredict-model"
        )

    def first_to_report_load(self) -> bool:
        """True for the first caller only: the DoFns sharing this model count its load once."""
        with self._report_lock:
            first, self._load_reported = not self._load_reported, True
        return first

    def predict(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        """The model's outputs for `batch`, by output name (a run's model calls, in the run's
        precision)."""
        return self.outputs_in(self.precision, batch)

    def outputs_in(self, precision: str, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        """`outputs(batch)` with the signature run in `precision` (fp32 or bf16) on this thread."""
        return called_with(self._call_options[precision], self.outputs, batch)

    def outputs(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        """The signature called on `batch`: what `predict` does, and what the golden records
        check calls (apart from the run's calls, which have their own failure handling)."""
        description = self.description
        if description.example_input:
            inputs = {description.example_input: tf.constant(serialized_examples(batch, description.inputs))}
        else:
            inputs = fitted_to(model_inputs(batch, description.inputs), self._specs)
        outputs = self.signature(**inputs)
        return {output.name: output_values(outputs[output.name]) for output in description.outputs}


def set_tf_threads(threads: int) -> None:
    """Caps TensorFlow's thread pools for this process (only possible before its first op)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        if tf.config.threading.get_intra_op_parallelism_threads() != threads:
            logging.warning(
                "TensorFlow already started in this process; --tf_threads %d not applied", threads
            )
