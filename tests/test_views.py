"""Tests of tb_gradplugin.views: the data of each view, over real event files.

The routes themselves (parsing, status codes, both data paths) are tested in
``test_plugin.py``; these tests call the views' implementations directly.
"""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard import context as tb_context
from tensorboard import errors

from tb_gradplugin import reader, views
from tests import eventfiles


def _views(logdir) -> views.ViewData:
    return views.ViewData(reader.CachedReader(reader.provider_for_logdir(logdir)))


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
    data = views.ViewData(reader.CachedReader(reader.provider_for_logdir(tmp_path)))
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
