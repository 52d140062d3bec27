"""Summary metadata and tag names."""

from __future__ import annotations

import json

import pytest
from tensorboard.compat.proto import summary_pb2

from tb_gradplugin import metadata


def test_metadata_has_plugin_name_data_class_and_json_content():
    """Each summary carries the plugin name, a data class and versioned JSON."""
    meta = metadata.create_summary_metadata("x", {"variables": ["a"]}, tensor=True)
    assert meta.plugin_data.plugin_name == "gradient_health"
    assert meta.data_class == summary_pb2.DATA_CLASS_TENSOR
    content = json.loads(meta.plugin_data.content)
    assert content == {"version": metadata.CONTENT_VERSION, "variables": ["a"]}
    scalar = metadata.create_summary_metadata("y")
    assert scalar.data_class == summary_pb2.DATA_CLASS_SCALAR


def test_parse_plugin_content_round_trip_and_errors():
    """Content parses back; non-JSON or a newer version is a clear ValueError."""
    meta = metadata.create_summary_metadata("x", {"seed": 3})
    assert metadata.parse_plugin_content(meta.plugin_data.content)["seed"] == 3
    assert metadata.parse_plugin_content(b"") == {}
    with pytest.raises(ValueError, match="not JSON"):
        metadata.parse_plugin_content(b"\xff{")
    with pytest.raises(ValueError, match="not a JSON object"):
        metadata.parse_plugin_content(b"[1]")
    with pytest.raises(ValueError, match="newer"):
        metadata.parse_plugin_content(b'{"version": 99}')


def test_tag_names_share_the_prefix_and_differ():
    """Every tag helper yields a distinct name under gradient_health/."""
    tags = [
        metadata.step_tag("loss"),
        metadata.layer_tag("grad_norm"),
        metadata.window_tag("grad_variance"),
        metadata.window_layer_tag("grad_variance"),
        metadata.slice_tag("lo", "grad_variance"),
        metadata.loss_component_tag("kl_loss"),
        metadata.hessian_tag("min_ratio"),
        metadata.hessian_layer_tag("min_ratio"),
        metadata.TRAJECTORY_TAG,
    ]
    assert all(t.startswith(metadata.TAG_PREFIX) for t in tags)
    assert len(set(tags)) == len(tags)


def test_packed_columns_round_trip_and_skip_unused_columns():
    """A packed content names each key's stretch of the vector; "" leaves a gap."""
    content = metadata.packed_content(
        [
            ("step/loss", 1, "loss", {"update_freq": 1}),
            ("", 2, "", {}),
            ("layer/grad_norm", 3, "norms", {"variables": ["a", "b", "c"]}),
        ]
    )
    parsed = metadata.parse_plugin_content(metadata.encode_content(content))
    cols = metadata.packed_columns(parsed)
    assert [(k, s.start, s.stop) for k, s, _ in cols] == [
        ("step/loss", 0, 1),
        ("layer/grad_norm", 3, 6),
    ]
    assert cols[1][2] == {"variables": ["a", "b", "c"]}


@pytest.mark.parametrize(
    "content",
    [
        {},
        {"columns": "x"},
        {"columns": [{"key": "step/loss"}]},
        {"columns": [{"key": "step/loss", "start": -1, "width": 1}]},
        {"columns": [{"key": "step/loss", "start": 0, "width": 0}]},
        {"columns": [{"key": "packed/step", "start": 0, "width": 1}]},
    ],
)
def test_malformed_packed_columns_are_a_clear_error(content):
    """Missing, negative, empty or self-referencing columns raise ValueError."""
    with pytest.raises(ValueError, match="packed"):
        metadata.packed_columns(content)


def test_keys_map_to_their_kind_and_packed_tag():
    """Per-variable keys are tensors; each per-step key has exactly one packed tag."""
    assert metadata.kind_of("layer/grad_norm") == "tensor"
    assert metadata.kind_of("step/loss") == "scalar"
    assert metadata.packed_keys_for("step/loss") == ["packed/step"]
    assert metadata.packed_keys_for("loss_component/kl") == ["packed/step"]
    assert metadata.packed_keys_for("layer/grad_norm") == ["packed/layer"]
    assert metadata.packed_keys_for("slice/lo/grad_variance") == ["packed/window"]
    assert metadata.packed_keys_for("hessian/min_ratio") == []
