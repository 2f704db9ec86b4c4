"""Shared fixtures: a small model trained end to end once per test session.

generate -> analyze (Beam + tf.Transform) -> train -> export, on a few hundred records,
so every pipeline test scores with a real all-in-one SavedModel, not a fake.
"""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CRITEO_SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "criteo_sample.txt")


@pytest.fixture(scope="session")
def trained_ads(tmp_path_factory):
    """Paths of a trained ads model: {"work", "data", "transform", "model", "metrics"}."""
    from pipeline import analyze
    from sampledata.generate import generate_file
    from trainer.train import train_and_export
    from transforms.schema import load_schema

    work = tmp_path_factory.mktemp("ads")
    data = str(work / "train.jsonl")
    generate_file(data, 600, seed=7)
    transform = str(work / "transform")
    analyze.run(["--schema", "ads", "--input", data, "--output_dir", transform])
    model = str(work / "model")
    metrics = train_and_export(transform, load_schema("ads"), model, epochs=4, compare_blank_image=False)
    return {"work": work, "data": data, "transform": transform, "model": model, "metrics": metrics}


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """A Cloud Storage emulator on a loopback port; Beam's gs:// filesystem talks to it."""
    from tests import emulators

    with emulators.cloud_storage(str(tmp_path_factory.mktemp("gcs"))) as address:
        previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = address
        try:
            yield f"gs://{emulators.BUCKET}"
        finally:
            if previous is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = previous
