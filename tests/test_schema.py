import pytest

from transforms.preprocessing import transformed_feature_names
from transforms.schema import MISSING_SUFFIX, SchemaError, load_schema, parse_schema


def test_ads_schema_declares_the_ad_features():
    schema = load_schema("ads")
    assert schema.key_field == "id" and schema.label == "clicked"
    assert schema.feature_names == ["age", "gender", "media", "interests", "bid", "hour", "image"]
    assert schema.feature("age").width == 7  # 6 boundaries -> 7 buckets
    assert schema.feature("gender").width == 8 + 1  # top_k + one OOV bucket
    assert schema.feature("hour").width == 24
    assert schema.feature("bid").indicator and schema.feature("bid").default == 1.0
    assert schema.feature("image").image.height == 32
    assert "bid" + MISSING_SUFFIX in transformed_feature_names(schema)


def test_criteo_schema_has_positional_keys_and_missing_rules():
    schema = load_schema("criteo")
    assert schema.key_field is None and schema.label == "label"
    assert len(schema.features) == 39
    assert all(not f.required for f in schema.features)
    assert schema.feature("I1").indicator and schema.feature("C1").default == "__missing__"


def _doc(**feature):
    return {"key": {"field": "id"}, "features": [{"name": "x", **feature}]}


@pytest.mark.parametrize(
    "feature, message",
    [
        ({"type": "int", "encoding": "vocab"}, "encoding must be one of"),
        ({"type": "string", "encoding": "z_score"}, "does not apply to type 'string'"),
        ({"type": "int", "encoding": "bucketize"}, "exactly one of boundaries or num_buckets"),
        ({"type": "int", "encoding": "one_hot"}, "needs range"),
        ({"type": "int", "encoding": "z_score", "missing": {"indicator": True}}, "declare it type: float"),
        (
            {"type": "float", "encoding": "z_score", "required": True, "missing": {}},
            "cannot have a missing rule",
        ),
        ({"type": "image", "encoding": "image"}, "need height and width"),
        ({"type": "float", "encoding": "z_score", "colour": 1}, "unknown keys ['colour']"),
    ],
)
def test_schema_mistakes_name_the_feature(feature, message):
    with pytest.raises(SchemaError) as raised:
        parse_schema(_doc(**feature), "my.yaml")
    assert "my.yaml: feature 'x'" in str(raised.value)
    assert message in str(raised.value)


def test_missing_schema_file_is_a_clear_error(tmp_path):
    with pytest.raises(SchemaError, match="does not exist"):
        load_schema(str(tmp_path / "nope.yaml"))
