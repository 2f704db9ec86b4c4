"""tf.Transform unit test of the preprocessing_fn, fed through the pipeline's Arrow path."""

import base64
import io

import numpy as np
import pyarrow as pa
from PIL import Image
from tensorflow_transform.beam import tft_unit

from pipeline.analyze import tensor_adapter_config, to_tfxio_batch, training_layout
from pipeline.blocks import LINE_COLUMN, RecordBlock
from transforms.preprocessing import make_preprocessing_fn
from transforms.schema import parse_schema

SCHEMA = parse_schema(
    {
        "key": {"field": "id"},
        "label": {"field": "clicked"},
        "features": [
            {"name": "age", "type": "int", "encoding": "bucketize", "boundaries": [25, 40]},
            {"name": "gender", "type": "string", "encoding": "one_hot", "top_k": 2},
            {"name": "interests", "type": "string_list", "encoding": "multi_hot", "top_k": 3, "missing": {}},
            {
                "name": "bid",
                "type": "float",
                "encoding": "z_score",
                "missing": {"default": 2.0, "indicator": True},
            },
            {"name": "hour", "type": "int", "range": [0, 23], "encoding": "one_hot"},
            {"name": "image", "type": "image", "encoding": "image", "height": 2, "width": 2, "channels": 3},
        ],
    },
    "test-schema",
)

RED, BLUE = (255, 0, 0), (0, 0, 255)


def png(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), colour).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


RECORDS = [
    {"id": "a", "age": 20, "gender": "male", "interests": ["sports", "travel"], "bid": 1.0, "hour": 0,
     "image": png(RED), "clicked": 1},
    {"id": "b", "age": 30, "gender": "female", "interests": ["sports"], "bid": 3.0, "hour": 23,
     "image": png(BLUE), "clicked": 0},
    {"id": "c", "age": 50, "gender": "male", "interests": None, "bid": None, "hour": 12,
     "image": png(RED), "clicked": 0},
    {"id": "d", "age": 40, "gender": "other", "interests": ["music"], "bid": 2.0, "hour": 1,
     "image": png(BLUE), "clicked": 1},
]  # fmt: skip


def one_hot(index, width):
    vector = np.zeros(width, np.float32)
    vector[index] = 1.0
    return vector


def image(colour):
    return np.tile(np.array(colour, np.float32) / 255.0, (2, 2, 1))


class PreprocessingTest(tft_unit.TransformTestCase):
    test_session = None  # tf.test.TestCase's deprecated helper, not a test for pytest to collect

    def test_preprocessing_fn_values_and_vocabularies(self):
        layout = training_layout(SCHEMA)
        arrow_schema = layout.arrow_schema().append(pa.field(LINE_COLUMN, pa.int64()))
        rows = [{**r, LINE_COLUMN: i + 1} for i, r in enumerate(RECORDS)]
        block = RecordBlock("test", pa.RecordBatch.from_pylist(rows, schema=arrow_schema))

        z = 1.0 / np.sqrt(0.5)  # bids 1, 3, 2 (missing -> default 2), 2: mean 2, variance 0.5
        expected = [
            # age buckets: <25, [25, 40), >=40; vocabulary gender: male, other (female is OOV)
            {"age": one_hot(0, 3), "gender": one_hot(0, 3), "interests": [1, 1, 0, 0], "bid": [-z],
             "bid_is_missing": [0.0], "hour": one_hot(0, 24), "image": image(RED), "clicked": 1},
            {"age": one_hot(1, 3), "gender": one_hot(2, 3), "interests": [1, 0, 0, 0], "bid": [z],
             "bid_is_missing": [0.0], "hour": one_hot(23, 24), "image": image(BLUE), "clicked": 0},
            {"age": one_hot(2, 3), "gender": one_hot(0, 3), "interests": [0, 0, 0, 0], "bid": [0.0],
             "bid_is_missing": [1.0], "hour": one_hot(12, 24), "image": image(RED), "clicked": 0},
            {"age": one_hot(2, 3), "gender": one_hot(1, 3), "interests": [0, 0, 1, 0], "bid": [0.0],
             "bid_is_missing": [0.0], "hour": one_hot(1, 24), "image": image(BLUE), "clicked": 1},
        ]  # fmt: skip
        for row in expected:
            row["interests"] = np.array(row["interests"], np.float32)
            row["bid"] = np.array(row["bid"], np.float32)
            row["bid_is_missing"] = np.array(row["bid_is_missing"], np.float32)
        self.assertAnalyzeAndTransformResults(
            [to_tfxio_batch(block, SCHEMA)],
            tensor_adapter_config(SCHEMA),
            make_preprocessing_fn(SCHEMA),
            expected,
            expected_vocab_file_contents={
                "gender": [b"male", b"other"],
                "interests": [b"sports", b"travel", b"music"],
            },
        )
