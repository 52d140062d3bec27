"""Tests of tb_gradplugin.views: the data of each view, over real event files.

The routes themselves (parsing, status codes, both data paths) are tested in
``test_plugin.py``; these tests call the views' implementations directly.
"""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard import context as tb_context
from tensorboard import errors

from tb_gradplugin import blocks, cached_reader, reader, views
from tests import eventfiles


def _views(logdir) -> views.ViewData:
    return views.ViewData(
        cached_reader.CachedReader(reader.provider_for_logdir(logdir))
    )


def test_trajectory_pca_only_mixes_runs_of_one_architecture(tmp_path):
    """Runs projected with another matrix are excluded from the shared PCA."""
    from tests import eventfiles

    rng = np.random.default_rng(0)
    for name, n_params in (("a", 100), ("b", 100), ("other", 50)):
        content = {"seed": 0, "dim": 8, "n_params": n_params}
        eventfiles.write_run(
            tmp_path,
            name,
            steps=[0, 1, 2],
            loss=[1.0, 0.9, 0.8],
            tensors={
                "trajectory/projection": ([0, 1, 2], rng.normal(size=(3, 8)), content)
            },
        )
    data = views.ViewData(
        cached_reader.CachedReader(reader.provider_for_logdir(tmp_path))
    )
    result = data.trajectory_impl(tb_context.RequestContext(), "", ["a", "b", "other"])
    assert sorted(result["runs"]) == ["a", "b"]
    assert result["excluded"] == ["other"]


def test_overview_is_cached_until_a_series_grows(tmp_path):
    """Two overview requests over unchanged data return the very same payload."""
    eventfiles.write_run(
        tmp_path,
        "r",
        steps=np.arange(1, 2001),
        loss=np.linspace(2, 1, 2000),
        grad_norm=np.ones(2000),
        param_norm=np.full(2000, 3.0),
    )
    data = _views(tmp_path)
    ctx = tb_context.RequestContext()
    first = data.overview_impl(ctx, "", "r", 300)
    assert first is data.overview_impl(ctx, "", "r", 300)
    assert first["last_step"] == 2000
    assert first["series"]["step/loss"]["total_points"] == 2000
    assert first["norms"]["total_points"] == 2000
    assert data.overview_impl(ctx, "", "r", 400) is not first


def test_unknown_key_and_format_are_rejected(tmp_path):
    """An unknown key is NotFoundError; an unknown export format InvalidArgument."""
    eventfiles.write_run(tmp_path, "r", steps=[1, 2], loss=[1.0, 0.5], wall_time=0)
    data = _views(tmp_path)
    ctx = tb_context.RequestContext()
    with pytest.raises(errors.NotFoundError):
        data.series_impl(ctx, "", "r", "step/nope", 10)
    with pytest.raises(errors.InvalidArgumentError):
        data.export_impl(ctx, "", "r", "step/loss", "xml")
    body, mime = data.export_impl(ctx, "", "r", "step/loss", "csv")
    assert mime == "text/csv" and body.splitlines()[1:] == ["1,1.0,1.0", "2,2.0,0.5"]


def test_views_draw_long_series_from_block_summaries(tmp_path, monkeypatch):
    """With block summaries, overview and layers draw from them, spike and NaN kept."""
    steps = np.arange(1, 1201)
    loss = np.linspace(2, 1, 1200)
    loss[700] = 50.0
    grads = np.ones((1200, 2))
    grads[333, 1] = np.nan
    content = {"variables": ["w", "b"]}

    def summaries(values, size=40):
        rows = [
            blocks.summarize(steps[i : i + size], values[i : i + size])
            for i in range(0, 1200, size)
        ]
        return steps[size - 1 :: size], np.stack(rows).reshape(len(rows), -1)

    eventfiles.write_run(
        tmp_path,
        "r",
        steps=steps,
        loss=loss,
        variables=["w", "b"],
        layers={"grad_norm": grads, "update_ratio": grads * 1e-3},
        tensors={
            "block/step/loss": (*summaries(loss), {}),
            "block/layer/grad_norm": (*summaries(grads), content),
            "block/layer/update_ratio": (*summaries(grads * 1e-3), content),
        },
    )
    monkeypatch.setattr(views, "BLOCK_MIN_POINTS", 1000)
    data = _views(tmp_path)
    ctx = tb_context.RequestContext()
    drawn = data.overview_impl(ctx, "", "r", 90)["series"]["step/loss"]
    assert drawn["total_points"] == 1200 and len(drawn["steps"]) <= 91
    assert drawn["values"][drawn["steps"].index(701)] == 50.0
    layers = data.layers_impl(ctx, "", "r", "grad_norm", 30)
    assert layers["heatmap"]["steps"] == list(range(40, 1201, 40))
    assert layers["heatmap"]["values"][1][8] == "NaN"  # step 334 is in block 9
    assert layers["update_ratio"]["step"] == 1200
    monkeypatch.setattr(views, "BLOCK_MIN_POINTS", 10_000)
    fine = _views(tmp_path).layers_impl(ctx, "", "r", "grad_norm", 30)
    assert fine["heatmap"] == layers["heatmap"]
