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
        metadata.optimizer_tag("d_optimizer", "grad_norm"),
        metadata.hessian_tag("min_ratio"),
        metadata.hessian_layer_tag("min_ratio"),
        metadata.TRAJECTORY_TAG,
    ]
    assert all(t.startswith(metadata.TAG_PREFIX) for t in tags)
    assert len(set(tags)) == len(tags)


def test_tag_key_and_key_tag_are_inverse_and_reject_other_plugins():
    """A tag's key drops the prefix, key_tag adds it back; other tags have none."""
    tag = metadata.layer_tag("grad_norm")
    assert metadata.tag_key(tag) == "layer/grad_norm"
    assert metadata.key_tag("layer/grad_norm") == tag
    assert metadata.tag_key("loss") is None
    assert metadata.tag_key("other_plugin/gradient_health/x") is None


@pytest.mark.parametrize(
    ("tag", "tensor", "window"),
    [
        (metadata.step_tag("loss"), False, False),
        (metadata.layer_tag("zero_fraction"), True, False),
        (metadata.window_tag("noise_scale"), False, True),
        (metadata.window_layer_tag("zero_fraction"), True, True),
        (metadata.slice_tag("lo", "grad_variance"), False, True),
        (metadata.loss_component_tag("kl_loss"), False, False),
        (metadata.optimizer_tag("d_optimizer", "update_ratio"), False, False),
        (metadata.hessian_tag("min_ratio"), False, False),
        (metadata.hessian_layer_tag("min_ratio"), True, False),
        (metadata.TRAJECTORY_TAG, True, False),
    ],
)
def test_tag_families_say_tensor_or_scalar_and_window_or_step(tag, tensor, window):
    """Each tag helper's family is classed as the callback writes it."""
    key = metadata.tag_key(tag)
    assert metadata.is_tensor_key(key) is tensor
    assert metadata.is_window_key(key) is window


def test_window_layer_stats_name_the_window_zero_fraction():
    """The window's per-variable zero share is a documented window statistic."""
    assert "every step" in metadata.WINDOW_LAYER_STATS["zero_fraction"]
    assert metadata.SPARSE_VARIABLES == "sparse_variables"
