"""Tests of tb_gradplugin.curvature_summary: every curvature tag read back from disk."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tb_gradplugin import curvature, curvature_summary, metadata, reader  # noqa: E402
from tb_gradplugin.event_writer import EventWriter  # noqa: E402
from tests.test_curvature import EPS32, _small_regression  # noqa: E402


def _read_back(tmp_path, result, step, probe_size):
    """Writes a result with write_summary and reads the run back from disk."""
    writer = EventWriter(tmp_path / "run")
    curvature_summary.write_summary(result, step, probe_size, writer)
    writer.close()
    return reader.read_run(reader.provider_for_logdir(tmp_path), "run")


@pytest.mark.parametrize("max_exact_params", [100, 10])
def test_every_curvature_tag_is_read_back_from_the_event_files(
    tmp_path, max_exact_params
):
    """Every hessian scalar, layer tensor and the density come back as computed."""
    model, x, y = _small_regression()
    result = curvature.compute_curvature(model, x, y, max_exact_params=max_exact_params)
    run = _read_back(tmp_path, result, step=7, probe_size=32)
    prefix = metadata.TAG_PREFIX
    keys = set(run.scalars) | set(run.tensors)
    assert keys == (
        {f"hessian/{stat}" for stat in metadata.HESSIAN_SCALARS}
        | {f"hessian_layer/{stat}" for stat in metadata.HESSIAN_LAYER_STATS}
        | {metadata.HESSIAN_SPECTRUM_TAG[len(prefix) :]}
    )
    for stat in metadata.HESSIAN_SCALARS:
        series = run.scalar(f"hessian/{stat}")
        assert series.steps.tolist() == [7]
        np.testing.assert_allclose(
            series.values[0], np.float32(getattr(result, stat)), rtol=1e-6
        )
        assert series.content["method"] == result.method
        assert series.content["probe_size"] == 32
        assert series.content["resolution"] == result.resolution
        assert series.content["eps"] == EPS32
    for stat in metadata.HESSIAN_LAYER_STATS:
        layer = run.tensor(f"hessian_layer/{stat}")
        np.testing.assert_allclose(
            layer.values[0], getattr(result, "layer_" + stat).astype(np.float32)
        )
        assert layer.names == list(result.variables)
    spectrum = run.tensor(metadata.HESSIAN_SPECTRUM_TAG[len(prefix) :])
    points = spectrum.content["points"]
    assert spectrum.values.shape == (1, 1 + 3 * points)
    np.testing.assert_allclose(spectrum.values[0, 0], result.broadening, rtol=1e-6)
    grid, density, histogram = spectrum.values[0, 1:].reshape(3, points)
    np.testing.assert_allclose(grid, result.density_grid, rtol=1e-6)
    np.testing.assert_allclose(density, result.density, rtol=1e-6)
    if result.method == "exact":
        np.testing.assert_allclose(histogram, result.histogram, rtol=1e-6)
        assert run.scalar("hessian/tolerance").values[0] == 0.0
    else:
        assert np.all(np.isnan(histogram))
        assert np.isnan(run.scalar("hessian/zero_ratio").values[0])
        assert run.scalar("hessian/tolerance").values[0] > 0


def test_curvature_module_writes_through_the_same_function():
    """``curvature.write_summary`` is the summary module's writer, not a copy."""
    assert curvature.write_summary is curvature_summary.write_summary
