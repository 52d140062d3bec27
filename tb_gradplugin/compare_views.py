"""The views that compare several runs: slices, loss components, trajectories.

:class:`CompareViews` is a part of :class:`tb_gradplugin.views.ViewData`: each
``*_impl`` lists the runs' series in one listing where it can, reads them
through the :class:`tb_gradplugin.cached_reader.CachedReader` the view data
holds, and shapes them with :mod:`tb_gradplugin.shaping`. Errors are raised as
``tensorboard.errors``. Imports no TensorFlow.
"""

from __future__ import annotations

from typing import Any

from tensorboard import errors

from tb_gradplugin import (
    cached_reader,
    diagnosis,
    metadata,
    reader,
    shaping,
    trajectory,
)

_TRAJECTORY_KEY = metadata.tag_key(metadata.TRAJECTORY_TAG)


class CompareViews:
    """The several-run views of :class:`tb_gradplugin.views.ViewData`.

    Attributes:
        _reader: The cached reader (set by the class that holds this part).
    """

    _reader: cached_reader.CachedReader

    def _scalar_families(
        self, ctx, eid: str, runs: list[str], families: tuple[str, ...]
    ) -> dict[str, dict[str, reader.Series]]:
        """Every scalar series of some key families of several runs, by run.

        Raises:
            tensorboard.errors.NotFoundError: For an unknown run.
        """
        listing = self._reader.scalar_versions_of_runs(ctx, eid, runs)
        out = {}
        for run in runs:
            versions = listing[run]
            keys = [k for k in versions if k.startswith(families)]
            out[run] = self._reader.read_series(ctx, eid, run, keys, versions)
        return out

    def slices_impl(self, ctx, eid: str, runs: list[str], n: int) -> dict[str, Any]:
        """Slice and window gradient statistics of several runs.

        Args:
            ctx: The request context.
            eid: The experiment.
            runs: The runs.
            n: Most points per series.

        Returns:
            ``{"runs": {run: shaping.slices_json}}``.

        Raises:
            tensorboard.errors.NotFoundError: For an unknown run.
        """
        found = self._scalar_families(ctx, eid, runs, ("slice/", "window/"))
        return {
            "runs": {run: shaping.slices_json(got, n) for run, got in found.items()}
        }

    def loss_components_impl(
        self, ctx, eid: str, runs: list[str], n: int
    ) -> dict[str, Any]:
        """Loss components of several runs with each one's volatility.

        Args are those of :meth:`slices_impl`.

        Returns:
            ``{"runs": {run: {name: {**series_json, "volatility": float|null}}}}``;
            the volatility (:func:`tb_gradplugin.diagnosis.volatility`) uses every
            point.

        Raises:
            tensorboard.errors.NotFoundError: For an unknown run.
        """
        out: dict[str, Any] = {}
        found = self._scalar_families(ctx, eid, runs, ("loss_component/",))
        for run, got in found.items():
            out[run] = {
                key.partition("/")[2]: {
                    **shaping.series_json(s, n),
                    "volatility": diagnosis.volatility(s.values),
                }
                for key, s in sorted(got.items())
            }
        return {"runs": out}

    def trajectory_impl(self, ctx, eid: str, runs: list[str]) -> dict[str, Any]:
        """PCA of the parameter trajectories of several runs, in one basis.

        Args:
            ctx: The request context.
            eid: The experiment.
            runs: The runs.

        Returns:
            ``{"available": bool, "runs": {run: {"steps", "xy"}},
            "explained_variance_ratio": [r1, r2], "excluded": [run]}``;
            ``available`` is false (and ``excluded`` absent) when no run has a
            ``trajectory/projection``. ``excluded`` names the runs projected
            with another matrix (:func:`tb_gradplugin.trajectory.comparable_runs`).

        Raises:
            tensorboard.errors.NotFoundError: For an unknown run.
            tensorboard.errors.InvalidArgumentError: When the kept runs cannot
                share a PCA.
        """
        projections = {}
        for run in runs:
            versions = self._reader.known_run(ctx, eid, run, keys=[_TRAJECTORY_KEY])
            got = self._reader.read_series(ctx, eid, run, [_TRAJECTORY_KEY], versions)
            s = got.get(_TRAJECTORY_KEY)
            if s is not None and len(s) >= 1:
                projections[run] = (s.steps, s.values, s.content)
        kept, excluded = trajectory.comparable_runs(projections)
        if not kept:
            return {"available": False, "runs": {}, "explained_variance_ratio": []}
        try:
            result = trajectory.pca_trajectories(kept)
        except ValueError as err:
            raise errors.InvalidArgumentError(
                f"trajectories cannot be compared: {err}"
            ) from err
        return {"available": bool(result.get("runs")), "excluded": excluded, **result}
