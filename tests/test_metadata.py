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
