"""Log directories and a TensorBoard launcher for the plugin's tests and benchmarks.

Synthetic runs follow docs/INTERFACES.md exactly (the tags and summary metadata of
``tb_gradplugin.metadata``, float32 values, data class set) and are written with
TensorBoard's own ``EventFileWriter`` so that a test knows every value it reads
back; :func:`train_runs` adds real Keras trainings written by the callback.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer import event_file_writer
from tensorboard.util import tensor_util

from tb_gradplugin import metadata, spectral_density

HOSTILE = "<img src=x onerror=alert(1)>"
"""A run directory name that is HTML: it must render as text."""
SYN_STEPS = 3000  # > the Rust server's default 1,000 scalars / 100 tensors
NAN_AT = 1234
SPIKE_AT = 2222
REPO = pathlib.Path(__file__).resolve().parent.parent


class Writer:
    """Writes gradient-health summaries of one run, metadata on each tag's first write.

    Args:
        logdir: The run's directory.
    """

    def __init__(self, logdir: str | os.PathLike):
        os.makedirs(logdir, exist_ok=True)
        self._w = event_file_writer.EventFileWriter(
            os.fspath(logdir), max_queue_size=1000
        )
        self._seen: set[str] = set()
        self.wall = 1_700_000_000.0

    def _meta(self, tag, content, tensor):
        if tag in self._seen:
            return None
        self._seen.add(tag)
        return metadata.create_summary_metadata(tag, content, tensor=tensor)

    def write(self, step: int, values: dict[str, tuple]) -> None:
        """Writes one event with several tags: ``{tag: (value, content, tensor)}``."""
        summary = summary_pb2.Summary()
        for tag, (value, content, tensor) in values.items():
            arr = np.asarray(value, dtype=np.float32)
            v = summary.value.add(tag=tag, tensor=tensor_util.make_tensor_proto(arr))
            meta = self._meta(tag, content, tensor)
            if meta is not None:
                v.metadata.CopyFrom(meta)
        self.wall += 0.01
        self._w.add_event(
            event_pb2.Event(wall_time=self.wall, step=step, summary=summary)
        )

    def write_plain_scalar(self, step: int, tag: str, value: float, meta) -> None:
        """Writes a scalar with the given metadata (e.g. TensorBoard's own scalars)."""
        summary = summary_pb2.Summary()
        arr = np.asarray(value, dtype=np.float32)
        v = summary.value.add(tag=tag, tensor=tensor_util.make_tensor_proto(arr))
        if tag not in self._seen:
            self._seen.add(tag)
            v.metadata.CopyFrom(meta)
        event = event_pb2.Event(wall_time=self.wall, step=step, summary=summary)
        self._w.add_event(event)

    def close(self) -> None:
        """Flushes and closes the event file."""
        self._w.close()


@dataclasses.dataclass
class SyntheticRun:
    """What :func:`write_run` wrote, to compare the routes with.

    Attributes:
        steps: The logged steps.
        scalars: ``{key: values}`` per-step scalars (``step/*``).
        layers: ``{key: values [n, k]}`` per-layer tensors (``layer/*``).
        variables: The variable names.
        window_steps: Steps of the window / slice / loss-component points.
        window: ``{key: values}`` of ``window/*``, ``slice/*``, ``loss_component/*``.
    """

    steps: np.ndarray
    scalars: dict
    layers: dict
    variables: list
    window_steps: np.ndarray
    window: dict


def write_run(
    logdir: str | os.PathLike,
    *,
    n_steps: int = 300,
    n_vars: int = 4,
    nan_at: int | None = None,
    spike_at: int | None = None,
    seed: int = 0,
    window_every: int = 10,
    hessian: bool = False,
    trajectory: bool = False,
    loss_components: tuple[str, ...] = ("kl_loss", "lm_loss"),
    slices: tuple[str, ...] = ("emb_lo", "emb_hi"),
    layer_stats: tuple[str, ...] = tuple(metadata.LAYER_STATS),
) -> SyntheticRun:
    """Writes a synthetic gradient-health run with known values.

    Args:
        logdir: The run's directory.
        n_steps: Logged steps 1..n_steps. Defaults to 300.
        n_vars: Variables per layer tensor. Defaults to 4.
        nan_at: A step whose loss and grad norm are NaN. Defaults to ``None``.
        spike_at: A step whose grad norm is 1e6. Defaults to ``None``.
        seed: Random seed. Defaults to 0.
        window_every: Steps per window. Defaults to 10.
        hessian: Whether to write ``hessian/*`` every 50 steps. Defaults to False.
        trajectory: Whether to write projections every 50 steps. Defaults to False.
        loss_components: Loss component names. Defaults to KL and LM losses.
        slices: Slice names. Defaults to two halves of an embedding.
        layer_stats: Per-layer statistics written. Defaults to all.

    Returns:
        The values written.
    """
    rng = np.random.default_rng(seed)
    steps = np.arange(1, n_steps + 1)
    t = steps / n_steps
    loss = (2.3 * np.exp(-3 * t) + 0.05 + 0.01 * rng.random(n_steps)).astype(np.float32)
    grad = (5.0 * np.exp(-2 * t) + 0.1 * rng.random(n_steps)).astype(np.float32)
    param = (10.0 + t).astype(np.float32)
    if nan_at is not None:
        loss[nan_at - 1] = np.nan
        grad[nan_at - 1] = np.nan
    if spike_at is not None:
        grad[spike_at - 1] = 1e6
    upd = (1e-3 * grad / 5.0).astype(np.float32)
    scalars = {
        "step/loss": loss,
        "step/grad_norm": grad,
        "step/param_norm": param,
        "step/update_ratio": upd,
        "step/learning_rate": np.full(n_steps, 1e-3, np.float32),
    }
    variables = [f"dense_{i}/kernel" for i in range(n_vars)]
    scale = np.logspace(0, -3, n_vars)
    base = grad[:, None] * scale[None, :]
    layers = {}
    for stat in layer_stats:
        if stat == "zero_fraction":
            val = np.tile(np.linspace(0, 0.9, n_vars), (n_steps, 1))
        elif stat == "update_ratio":
            val = 1e-3 * np.tile(scale, (n_steps, 1))
        else:
            val = base * (1.0 + 0.1 * rng.random((n_steps, n_vars)))
        layers[f"layer/{stat}"] = val.astype(np.float32)
    w = Writer(logdir)
    wsteps = []
    window: dict[str, list] = {}
    for i, step in enumerate(steps):
        vals = {
            metadata.TAG_PREFIX + k: (v[i], None, False) for k, v in scalars.items()
        }
        for k, v in layers.items():
            vals[metadata.TAG_PREFIX + k] = (v[i], {"variables": variables}, True)
        if step % window_every == 0:
            wsteps.append(step)
            extra = {
                "window/grad_variance": 1e-4 * np.exp(-3 * t[i]),
                "window/grad_mean_abs": 1e-2 * np.exp(-2 * t[i]),
                "window/noise_scale": 100 + 50 * t[i],
            }
            for j, name in enumerate(slices):
                extra[f"slice/{name}/grad_mean_abs"] = 1e-3 * (j + 1) * np.exp(-t[i])
                extra[f"slice/{name}/grad_variance"] = 1e-6 * (j + 1) * np.exp(-t[i])
            for j, name in enumerate(loss_components):
                extra[f"loss_component/{name}"] = 1.0 + j + 0.3 * np.sin(step * (j + 1))
            for k, v in extra.items():
                window.setdefault(k, []).append(np.float32(v))
                content = None
                if k.startswith("slice/"):
                    content = {"variable": variables[0], "start": 0, "stop": 96}
                vals[metadata.TAG_PREFIX + k] = (v, content, False)
        if hessian and step % 50 == 0:
            hcontent = {"method": "exact", "tolerance": 1e-6, "probe_size": 64}
            hcontent["n_params"] = 100
            vals[metadata.hessian_tag("min_ratio")] = (
                0.5 + 0.4 * t[i],
                hcontent,
                False,
            )
            vals[metadata.hessian_tag("top_eigenvalue")] = (
                10 * t[i] + 1,
                hcontent,
                False,
            )
            vals[metadata.hessian_tag("probe_loss")] = (loss[i], hcontent, False)
            band = {**hcontent, "resolution": 1e-3}
            for name, value in (
                ("near_zero_ratio", 0.6 - 0.2 * t[i]),
                ("band_min_ratio", 0.7 + 0.25 * t[i]),
                ("min_ratio_low", 0.45 + 0.4 * t[i]),
                ("min_ratio_high", 0.55 + 0.4 * t[i]),
            ):
                vals[metadata.hessian_tag(name)] = (value, band, False)
            vals[metadata.HESSIAN_SPECTRUM_TAG] = (
                _spectrum_row(int(step), t[i]),
                {"method": "exact", "points": DENSITY_POINTS},
                True,
            )
        if trajectory and step % 50 == 0:
            vals[metadata.TRAJECTORY_TAG] = (
                rng.normal(size=8) + t[i] * np.arange(8),
                {"seed": 0, "dim": 8, "n_params": 100},
                True,
            )
        w.write(int(step), vals)
    w.close()
    return SyntheticRun(
        steps=steps,
        scalars=scalars,
        layers=layers,
        variables=variables,
        window_steps=np.array(wsteps),
        window={k: np.array(v, np.float32) for k, v in window.items()},
    )


DENSITY_POINTS = 96
"""Grid points of the synthetic run's spectral densities."""


def _spectrum_row(step: int, t: float) -> np.ndarray:
    """A logged density row ``[σ, grid, density, histogram]`` of 100 eigenvalues.

    A bulk at 0, a few negatives that shrink with ``t`` and an outlier that
    grows: far from them the density underflows to exactly 0, as logged ones do.
    Its own generator: the run's other values do not depend on it.
    """
    rng = np.random.default_rng(step)
    eig = np.concatenate(
        [
            rng.normal(0.0, 1e-3, 80),
            -(1.0 - 0.8 * t) * rng.uniform(0.5, 1.0, 10),
            rng.uniform(0.5, 2.0, 9),
            [10 * t + 1],
        ]
    )
    sigma, grid, dens = spectral_density.density_of(
        [eig], [np.full(eig.size, 1 / eig.size)], 100, DENSITY_POINTS
    )
    hist = spectral_density.histogram(eig, grid)
    return np.concatenate([[sigma], grid, dens, hist])


def write_corrupt_neighbour(run_dir: str | os.PathLike) -> pathlib.Path:
    """Writes a truncated, garbage event file next to a run's good one.

    Args:
        run_dir: The run's directory.

    Returns:
        The path of the corrupt file.
    """
    path = pathlib.Path(run_dir) / "events.out.tfevents.9999999999.corrupt"
    path.write_bytes(b"\x18\x00\x00\x00\x00\x00\x00\x00garbage-half-written")
    return path


def regression_data() -> tuple[np.ndarray, np.ndarray]:
    """256 examples of a noiseless linear regression from 8 inputs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    return x, (x @ rng.normal(size=(8, 1))).astype("float32")


def mlp(name: str):
    """The 8-16-1 ReLU network the test runs train (layers "hidden" and "out")."""
    import keras

    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(1, name="out"),
        ],
        name=name,
    )


def train_runs(logdir: str) -> None:
    """Trains two tiny Keras models with the callback (a few seconds)."""
    import keras

    from tb_gradplugin import GradientHealthCallback

    x, y = regression_data()

    def model(lr: float, name: str):
        m = mlp(name)
        m.compile(optimizer=keras.optimizers.SGD(lr), loss="mse", metrics=["mae"])
        return m

    keras.utils.set_random_seed(0)
    m = model(0.01, "healthy")
    cb = GradientHealthCallback(
        os.path.join(logdir, "healthy"),
        update_freq=1,  # the views are checked at every step
        on_flag=None,
        slices={
            "lo": ("healthy/hidden/kernel", (0, 8)),
            "hi": ("healthy/hidden/kernel", (8, 16)),
        },
        loss_components=["mae"],
        variance_window=4,
    )
    m.fit(x, y, batch_size=32, epochs=5, verbose=0, callbacks=[cb])
    m = model(5.0, "diverged")  # SGD at lr 5 on this data overflows within steps
    cb = GradientHealthCallback(
        os.path.join(logdir, "diverged"), update_freq=1, on_flag=None
    )
    m.fit(x, y, batch_size=32, epochs=5, verbose=0, callbacks=[cb])


def make_logdir(root: str) -> dict:
    """Writes the test log directory and returns what the synthetic run holds."""
    train_runs(root)
    syn = write_run(
        os.path.join(root, "synthetic"),
        n_steps=SYN_STEPS,
        nan_at=NAN_AT,
        spike_at=SPIKE_AT,
        hessian=True,
        trajectory=True,
    )
    write_corrupt_neighbour(os.path.join(root, "synthetic"))
    write_run(os.path.join(root, HOSTILE), n_steps=50, seed=3)
    return {"synthetic": syn}


LAUNCHER = (
    "import sys; from tensorboard import default, program; "
    "from tb_gradplugin.plugin import GradientHealthLoader; "
    "tb = program.TensorBoard(plugins=default.get_static_plugins()"
    " + [GradientHealthLoader()]); "
    "tb.configure(argv=[None] + sys.argv[1:]); sys.exit(tb.main())"
)
"""`tensorboard` with this checkout's plugin, for when the package is not installed."""


def plugin_installed() -> bool:
    """Whether tb_gradplugin is installed with its tensorboard_plugins entry point."""
    from importlib import metadata as importlib_metadata

    eps = importlib_metadata.entry_points(group="tensorboard_plugins")
    return any(ep.name == "gradient_health" for ep in eps)


def start_tensorboard(logdir: str, port: int, *flags: str) -> subprocess.Popen:
    """Starts a real TensorBoard process on 127.0.0.1:port.

    Uses the `tensorboard` command when the package is installed (the entry point
    loads the plugin), else the same program with the plugin passed explicitly.
    """
    args = ["--logdir", str(logdir), "--port", str(port), "--host", "127.0.0.1", *flags]
    if plugin_installed() and shutil.which("tensorboard"):
        cmd = [shutil.which("tensorboard"), *args]
    else:
        cmd = [sys.executable, "-c", LAUNCHER, *args]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def free_port() -> int:
    """Returns a TCP port that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
