"""The views of every point of one series: export and the last finite row.

:class:`PointViews` is a part of :class:`tb_gradplugin.views.ViewData`; unlike
the drawn views it never downsamples or reads block summaries: ``export``
returns every logged point. Errors are raised as ``tensorboard.errors``.
Imports no TensorFlow.
"""

from __future__ import annotations

from typing import Any

from tensorboard import errors

from tb_gradplugin import cached_reader, health, reader, shaping
from tb_gradplugin.json_encoding import encode_json, float_list

_JSON = "application/json"


class PointViews:
    """The every-point views of :class:`tb_gradplugin.views.ViewData`.

    Attributes:
        _reader: The cached reader (set by the class that holds this part).
    """

    _reader: cached_reader.CachedReader

    def last_finite_impl(self, ctx, eid: str, run: str, key: str) -> dict[str, Any]:
        """The last row of a series where every value is finite.

        Args:
            ctx: The request context.
            eid: The experiment.
            run: The run.
            key: The series' key.

        Returns:
            ``{"run", "key", "last_step", "step", "variables", "values"}``;
            ``step`` and ``values`` are ``None`` when no row is finite.

        Raises:
            tensorboard.errors.NotFoundError: For an unknown run or key.
        """
        series, _ = self._one_series(ctx, eid, run, key)
        step, values = health.last_finite_row(series)
        return {
            "run": run,
            "key": key,
            "last_step": int(series.steps[-1]) if len(series) else None,
            "step": step,
            "variables": shaping.variable_names(series),
            "values": None if values is None else float_list(values.reshape(-1)),
        }

    def _one_series(
        self, ctx, eid: str, run: str, key: str
    ) -> tuple[reader.Series, cached_reader.TagVersion]:
        """Every point of one series of a run, and its listing; unknown: 404."""
        versions = self._reader.known_run(ctx, eid, run, keys=[key])
        if key not in versions:
            raise errors.NotFoundError(f"run {run[:200]!r} has no series {key[:200]!r}")
        series = self._reader.read_series(ctx, eid, run, [key], versions)[key]
        return series, versions[key]

    def export_impl(
        self, ctx, eid: str, run: str, key: str, fmt: str
    ) -> tuple[str, str]:
        """Every point of one series, as CSV or JSON.

        Args:
            ctx: The request context.
            eid: The experiment.
            run: The run.
            key: The series' key.
            fmt: ``"csv"`` or ``"json"``.

        Returns:
            ``(body, mime_type)``.

        Raises:
            tensorboard.errors.InvalidArgumentError: For another ``fmt``.
            tensorboard.errors.NotFoundError: For an unknown run or key.
        """
        if fmt not in ("csv", "json"):
            raise errors.InvalidArgumentError("format must be csv or json")
        series, version = self._one_series(ctx, eid, run, key)
        tensor = version.kind == "tensor"
        if fmt == "csv":
            return shaping.export_csv(series, tensor), "text/csv"
        body = shaping.export_json(series, tensor)
        payload = {"run": run, "key": key, "kind": version.kind, **body}
        return encode_json(payload), _JSON
