"""The "Gradient Health" TensorBoard plugin: HTTP routes over the data provider.

The plugin reads only through ``context.data_provider`` (so it works over the
Rust data server and the Python one alike) and imports no TensorFlow. Each route
is a thin handler, as in TensorBoard's ``scalars_plugin``: ``*_route`` parses the
request, calls a ``*_impl`` of :class:`tb_gradplugin.views.ViewData` that returns
plain data, and responds. Reading and caching live in
:class:`tb_gradplugin.cached_reader.CachedReader`, payload shaping in
:mod:`tb_gradplugin.shaping`. Errors are raised as ``tensorboard.errors`` and
answered by TensorBoard's application as a 4xx with a short text. The routes and
their JSON are documented in ``http_api.md``.
"""

from __future__ import annotations

import mimetypes
import pathlib
from collections.abc import Callable
from typing import Any

from tensorboard import errors, plugin_util
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tb_gradplugin import cached_reader, metadata, reader, shaping, view_refresh, views
from tb_gradplugin.json_encoding import encode_json

STATIC_DIR = pathlib.Path(__file__).resolve().parent / "static"
"""The built frontend bundle (generated from ``frontend/``)."""

MAX_DOWNSAMPLE = 100_000
"""The largest ``downsample`` a route accepts; ``export`` has no limit."""

MAX_HEATMAP_BUCKETS = 5000
"""The largest ``buckets`` the ``layers`` route accepts."""

MAX_RUNS_PER_REQUEST = 200
"""The most ``run`` parameters one multi-run request may carry."""

MAX_STEP = 2**63 - 1
"""The largest ``step`` the ``curvature`` route accepts (TensorBoard's int64 step)."""

_JSON = "application/json"


# --------------------------------------------------------------------------
# Parameter parsing: a bad parameter is a 400 with a short message.


def _int_param(args, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise errors.InvalidArgumentError(
            f"{name} must be an integer, got {raw[:40]!r}"
        ) from None
    if not lo <= value <= hi:
        raise errors.InvalidArgumentError(
            f"{name} must be between {lo} and {hi}, got {value}"
        )
    return value


def _downsample_param(args) -> int:
    return _int_param(args, "downsample", shaping.DEFAULT_DOWNSAMPLE, 1, MAX_DOWNSAMPLE)


def _required_param(args, name: str) -> str:
    values = args.getlist(name)
    if not values or values[0] == "":
        raise errors.InvalidArgumentError(f"missing parameter: {name}")
    if len(values) > 1:
        # Answering for the first of several would hide the others silently.
        raise errors.InvalidArgumentError(
            f"give one {name} parameter, got {len(values)}"
        )
    return values[0]


def _runs_param(args) -> list[str] | None:
    """The repeated ``run`` parameters, or ``None`` for "every run"."""
    runs = args.getlist("run")
    if len(runs) > MAX_RUNS_PER_REQUEST:
        raise errors.InvalidArgumentError(
            f"at most {MAX_RUNS_PER_REQUEST} run parameters"
        )
    if any(not r for r in runs):
        raise errors.InvalidArgumentError("empty run parameter")
    return list(dict.fromkeys(runs)) or None


def _request_scope(request) -> tuple[Any, str]:
    """The request context and experiment id TensorBoard put in the environ."""
    environ = request.environ
    return plugin_util.context(environ), plugin_util.experiment_id(environ)


def _run_view_args(request) -> tuple[Any, str, str, int]:
    """``(ctx, eid, run, downsample)`` of a one-run view's request."""
    run = _required_param(request.args, "run")
    return (*_request_scope(request), run, _downsample_param(request.args))


# --------------------------------------------------------------------------
# The plugin.


class GradientHealthPlugin(base_plugin.TBPlugin):
    """Serves the "Gradient Health" tab and its data.

    Args:
        context: The ``TBContext`` given by TensorBoard; only its
            ``data_provider`` is read.

    Attributes:
        data: The :class:`tb_gradplugin.views.ViewData` the routes answer from.
    """

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext):
        self._reader = cached_reader.CachedReader(context.data_provider)
        self.data = views.ViewData(self._reader)
        self._refresher = view_refresh.ViewRefresher(
            around_pass=cached_reader.fresh_listings
        )

    # -- TBPlugin interface -------------------------------------------------

    def is_active(self) -> bool:
        """Whether a run holds gradient-health data.

        TensorBoard marks the tab active without calling this when its data
        provider's ``list_plugins`` names ``gradient_health``
        (:meth:`data_plugin_names`), as for its own scalars plugin; it asks
        here otherwise, and this looks for the data itself, so a provider
        that does not report plugin names still shows the tab as active.

        Returns:
            True when the provider lists a run with this plugin's series.
        """
        provider = self._reader.provider_or_none
        if provider is None:
            return False
        return bool(reader.list_runs(provider))

    def data_plugin_names(self) -> tuple[str, ...]:
        """Returns the plugin names whose summaries this plugin reads.

        Returns:
            ``("gradient_health",)``.
        """
        return (metadata.PLUGIN_NAME,)

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        """Returns the tab's frontend: the ES module ``index.js``.

        Returns:
            The frontend metadata with the tab name "Gradient Health".
        """
        return base_plugin.FrontendMetadata(
            es_module_path="/index.js", tab_name="Gradient Health"
        )

    def get_plugin_apps(self) -> dict[str, Callable]:
        """Returns the WSGI apps of every route, keyed by path.

        Returns:
            A dict from route path (leading slash) to WSGI application.
        """
        return {
            "/index.js": self._serve_index,
            "/static/*": self._serve_static,
            "/runs": self.runs_route,
            "/tags": self.tags_route,
            "/flags": self.flags_route,
            "/series": self.series_route,
            "/overview": self.overview_route,
            "/layers": self.layers_route,
            "/slices": self.slices_route,
            "/loss_components": self.loss_components_route,
            "/curvature": self.curvature_route,
            "/trajectory": self.trajectory_route,
            "/export": self.export_route,
            "/health": self.health_route,
            "/last_finite": self.last_finite_route,
        }

    # -- routes: parse, call the implementation, respond ----------------------

    def _respond(self, request, payload: Any):
        """Answers JSON; a memoised payload object is encoded once."""
        return http_util.Respond(request, self._encoded(payload), _JSON)

    def _encoded(self, payload: Any) -> str:
        """The JSON text of a payload, cached with the payload object."""
        cached = self._reader.memo(
            ("json", id(payload)), lambda: (payload, encode_json(payload))
        )
        # The entry holds the payload, so its id is not reused while cached.
        return cached[1] if cached[0] is payload else encode_json(payload)

    def _respond_view(self, request, key: tuple, compute: Callable[[], Any]):
        """Answers a data view, and keeps it current while the user looks at it.

        Args:
            request: The request.
            key: The route and its parameters, without the context.
            compute: Makes the payload through the versioned cache.

        Returns:
            The response of :meth:`_respond`.
        """
        payload = compute()
        ctx, eid = _request_scope(request)
        self._refresher.watch((eid, *key), lambda: self._encoded(compute()))
        return self._respond(request, payload)

    @wrappers.Request.application
    def runs_route(self, request):
        """Answers ``runs``: the run names (contract)."""
        return self._respond(request, self.data.runs_impl(*_request_scope(request)))

    @wrappers.Request.application
    def tags_route(self, request):
        """Answers ``tags?run=RUN``."""
        run = _required_param(request.args, "run")
        ctx, eid = _request_scope(request)
        return self._respond_view(
            request, ("tags", run), lambda: self.data.tags_impl(ctx, eid, run)
        )

    @wrappers.Request.application
    def flags_route(self, request):
        """Answers ``flags?run=RUN`` (contract)."""
        run = _required_param(request.args, "run")
        ctx, eid = _request_scope(request)
        return self._respond_view(
            request, ("flags", run), lambda: self.data.flags_impl(ctx, eid, run)
        )

    @wrappers.Request.application
    def series_route(self, request):
        """Answers ``series?run=RUN&key=KEY[&downsample=N]``."""
        args = request.args
        run, key = _required_param(args, "run"), _required_param(args, "key")
        n = _downsample_param(args)
        ctx, eid = _request_scope(request)
        return self._respond_view(
            request,
            ("series", run, key, n),
            lambda: self.data.series_impl(ctx, eid, run, key, n),
        )

    @wrappers.Request.application
    def overview_route(self, request):
        """Answers ``overview?run=RUN[&downsample=N]``."""
        ctx, eid, run, n = _run_view_args(request)
        return self._respond_view(
            request,
            ("overview", run, n),
            lambda: self.data.overview_impl(ctx, eid, run, n),
        )

    @wrappers.Request.application
    def layers_route(self, request):
        """Answers ``layers?run=RUN[&stat=STAT][&buckets=B]``."""
        args = request.args
        run = _required_param(args, "run")
        stat = args.get("stat") or "grad_norm"
        buckets = _int_param(
            args, "buckets", shaping.DEFAULT_HEATMAP_BUCKETS, 1, MAX_HEATMAP_BUCKETS
        )
        ctx, eid = _request_scope(request)
        return self._respond_view(
            request,
            ("layers", run, stat, buckets),
            lambda: self.data.layers_impl(ctx, eid, run, stat, buckets),
        )

    @wrappers.Request.application
    def slices_route(self, request):
        """Answers ``slices[?run=RUN...][&downsample=N]``."""
        ctx, eid, runs, n = self._runs_view_args(request)
        return self._respond_view(
            request,
            ("slices", tuple(runs), n),
            lambda: self.data.slices_impl(ctx, eid, runs, n),
        )

    @wrappers.Request.application
    def loss_components_route(self, request):
        """Answers ``loss_components[?run=RUN...][&downsample=N]``."""
        ctx, eid, runs, n = self._runs_view_args(request)
        return self._respond_view(
            request,
            ("loss_components", tuple(runs), n),
            lambda: self.data.loss_components_impl(ctx, eid, runs, n),
        )

    @wrappers.Request.application
    def curvature_route(self, request):
        """Answers ``curvature?run=RUN[&downsample=N][&step=S]``."""
        # No step: the latest density; a step not logged gives the one before it.
        step = _int_param(request.args, "step", None, 0, MAX_STEP)
        ctx, eid, run, n = _run_view_args(request)
        return self._respond_view(
            request,
            ("curvature", run, n, step),
            lambda: self.data.curvature_impl(ctx, eid, run, n, step),
        )

    @wrappers.Request.application
    def trajectory_route(self, request):
        """Answers ``trajectory[?run=RUN...]``."""
        ctx, eid, runs = self._runs_scope(request)
        return self._respond_view(
            request,
            ("trajectory", tuple(runs)),
            lambda: self.data.trajectory_impl(ctx, eid, runs),
        )

    def _runs_scope(self, request) -> tuple[Any, str, list[str]]:
        """``(ctx, eid, runs)`` of a view that compares runs (no ``run``: all)."""
        ctx, eid = _request_scope(request)
        return ctx, eid, _runs_param(request.args) or self.data.runs_impl(ctx, eid)

    def _runs_view_args(self, request) -> tuple[Any, str, list[str], int]:
        """``(ctx, eid, runs, downsample)`` of a view that compares runs."""
        return (*self._runs_scope(request), _downsample_param(request.args))

    @wrappers.Request.application
    def health_route(self, request):
        """Answers ``health[?run=RUN...]``: the health table."""
        ctx, eid = _request_scope(request)
        runs = _runs_param(request.args)
        return self._respond_view(
            request,
            ("health", None if runs is None else tuple(runs)),
            lambda: self.data.health_impl(ctx, eid, runs),
        )

    @wrappers.Request.application
    def last_finite_route(self, request):
        """Answers ``last_finite?run=RUN&key=KEY``."""
        args = request.args
        run, key = _required_param(args, "run"), _required_param(args, "key")
        payload = self.data.last_finite_impl(*_request_scope(request), run, key)
        return self._respond(request, payload)

    @wrappers.Request.application
    def export_route(self, request):
        """Answers ``export?run=RUN&key=KEY[&format=csv|json]`` as an attachment."""
        args = request.args
        run, key = _required_param(args, "run"), _required_param(args, "key")
        fmt = args.get("format") or "csv"
        body, mime = self.data.export_impl(*_request_scope(request), run, key, fmt)
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{run}_{key}")
        headers = [("Content-Disposition", f'attachment; filename="{stem}.{fmt}"')]
        return http_util.Respond(request, body, mime, headers=headers)

    @wrappers.Request.application
    def _serve_index(self, request):
        return self._static_response(request, "index.js")

    @wrappers.Request.application
    def _serve_static(self, request):
        prefix = f"/data/plugin/{metadata.PLUGIN_NAME}/static/"
        path = request.path
        name = path[path.find(prefix) + len(prefix) :] if prefix in path else ""
        return self._static_response(request, name)

    def _static_response(self, request, name: str):
        target = (STATIC_DIR / name).resolve()
        if not name or STATIC_DIR not in target.parents or not target.is_file():
            raise errors.NotFoundError("no such file")
        if target.suffix in (".js", ".mjs"):
            mime = "text/javascript"
        else:
            mime = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return http_util.Respond(request, target.read_bytes(), mime)


class GradientHealthLoader(base_plugin.TBLoader):
    """Loads the plugin and keeps every point of its data by default.

    TensorBoard keeps only a sample of each series of an unknown plugin (10
    points under the Python ingester, 1,000 scalars / 100 tensors under the
    Rust data server). ``fix_flags`` runs before the data ingester is made
    and adds ``gradient_health=all`` to ``--samples_per_plugin`` unless the
    user set it, so a plain ``tensorboard --logdir DIR`` shows the whole run.

    Example:
        >>> from tensorboard import default, program
        >>> tb = program.TensorBoard(
        ...     plugins=default.get_static_plugins() + [GradientHealthLoader()]
        ... )
        >>> tb.configure(argv=[None, "--logdir", "runs"])  # doctest: +SKIP
    """

    def fix_flags(self, flags) -> None:
        """Keeps all gradient-health points unless ``--samples_per_plugin`` names it.

        Args:
            flags: TensorBoard's parsed flags (an ``argparse.Namespace``).
        """
        spp = getattr(flags, "samples_per_plugin", None)
        if spp is None or isinstance(spp, str):
            spp = _parse_samples(spp or "")
        spp = dict(spp)
        # 0 means "keep all": the Python ingester's reservoir size 0 keeps
        # every point, and server_ingester turns 0 into "all" for the Rust one.
        spp.setdefault(metadata.PLUGIN_NAME, 0)
        flags.samples_per_plugin = spp

    def load(self, context: base_plugin.TBContext) -> GradientHealthPlugin:
        """Makes the plugin.

        Args:
            context: TensorBoard's context.

        Returns:
            The plugin instance.
        """
        return GradientHealthPlugin(context)


def _parse_samples(value: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for token in value.split(","):
        if not token.strip():
            continue
        name, _, count = token.strip().partition("=")
        out[name] = 0 if count == "all" else int(count)
    return out
