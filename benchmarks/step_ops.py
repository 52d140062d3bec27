"""The compiled train step alone: ops it holds and CPU time per call, with and without.

Builds seed 003's MLP (784-20-20-10 by default, Adam, batch 200, a cached
``tf.data`` pipeline), fits one step plain and one with
``GradientHealthCallback`` (defaults), then:

* counts the ops of the traced train function, nested function bodies
  included (the step's ``PartitionedCall`` bodies run every step; the
  branches of an ``If``/``While`` are counted apart, as "conditional"), and
  the ops of the graph TensorFlow runs after grappler's rewrites (identities
  removed, constants folded: what costs per step), and prints the op types
  the callback adds, with how many;
* times the train function alone (the compiled function Keras calls, without
  the callback's host side) over a repeated batch iterator, in process CPU
  time and wall time: per repetition two fresh models, built in alternating
  order, whose calls alternate in ``--blocks`` blocks; the ratio of a
  repetition is the median of its blocks' ratios, and the script prints the
  median over repetitions, with the load average.

Usage::

    python benchmarks/step_ops.py                      # counts and 5 repetitions
    python benchmarks/step_ops.py --repeats 9 --calls 2000
    python benchmarks/step_ops.py --hidden 650         # the 1 M MLP
    python benchmarks/step_ops.py --counts-only
    python benchmarks/step_ops.py --threads 1           # steadier when loaded
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time


def _parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=20, help="MLP hidden width")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--calls", type=int, default=1000, help="timed calls per model and repetition"
    )
    parser.add_argument(
        "--blocks", type=int, default=10, help="alternating blocks the calls make"
    )
    parser.add_argument("--counts-only", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="TensorFlow's inter- and intra-op threads (0: its default); 1 "
        "steadies the ratio on a loaded machine",
    )
    parser.add_argument(
        "--update-freq", default="auto", help="the callback's update_freq"
    )
    return parser.parse_args()


ARGS = _parse() if __name__ == "__main__" else None

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if ARGS is not None and ARGS.threads:
    tf.config.threading.set_inter_op_parallelism_threads(ARGS.threads)
    tf.config.threading.set_intra_op_parallelism_threads(ARGS.threads)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tb_gradplugin import GradientHealthCallback  # noqa: E402

_FUNCTION_ATTRS = ("f", "then_branch", "else_branch", "cond", "body", "branches")
_CONDITIONAL_OPS = {"If", "StatelessIf", "While", "StatelessWhile", "Case"}


def build(hidden: int, batch: int, callback: bool, logdir: str):
    """A fresh compiled MLP fitted one step; its data and callbacks."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(mlp_layers(hidden))
    pairs = compile_with_batches(model, batch)
    data = pairs.cache()
    cbs = []
    if callback:
        freq = ARGS.update_freq if ARGS is not None else "auto"
        freq = int(freq) if freq.isdigit() else freq
        cbs = [GradientHealthCallback(logdir, update_freq=freq)]
    model.fit(pairs.take(1), epochs=1, verbose=0, callbacks=cbs)
    return model, data, cbs


def mlp_layers(hidden: int) -> list:
    """The layers of seed 003's MLP shape, 784-``hidden``-``hidden``-10 (ReLU)."""
    return [
        keras.Input((784,)),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(10),
    ]


def compile_with_batches(model, batch: int):
    """Compiles ``model`` (Adam, cross-entropy); returns 10 batches of MNIST shape.

    Args:
        model: A model of ``[batch, 784]`` inputs and 10 logits.
        batch: The batch size.

    Returns:
        A ``tf.data.Dataset`` of 10 random ``(x, y)`` batches.
    """
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * 10, 784)).astype("float32")
    y = rng.integers(0, 10, batch * 10)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def compiled_function(model):
    """The train function Keras compiled, without the callback's host wrapper."""
    fn = model.train_function
    while getattr(fn, "_gradient_health_monitor", None) is not None:
        # The callback's wrapper calls the original train function first.
        cells = [c.cell_contents for c in fn.__closure__ or ()]
        fn = next(c for c in cells if callable(c) and c is not fn and not _is_shim(c))
    return fn


def _is_shim(value) -> bool:
    return hasattr(value, "cb") and hasattr(value, "model")


def _tf_functions(fn, seen=None):
    """The ``tf.function`` objects reachable through ``fn``'s closure."""
    seen = set() if seen is None else seen
    found = []
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if id(value) in seen:
            continue
        seen.add(id(value))
        if hasattr(value, "get_concrete_function"):
            found.append(value)
        elif callable(value) and getattr(value, "__closure__", None):
            found.extend(_tf_functions(value, seen))
    return found


def traced_counts(model, data) -> tuple[collections.Counter, collections.Counter]:
    """Op types of the traced train function: ``(every step, conditional)``."""
    outer = [
        f
        for f in _tf_functions(compiled_function(model))
        if "iterator" in getattr(getattr(f, "python_function", None), "__name__", "")
    ]
    concrete = outer[0].get_concrete_function(iter(data.repeat()))
    graph_def = concrete.graph.as_graph_def()
    library = {f.signature.name: f for f in graph_def.library.function}
    always, conditional = collections.Counter(), collections.Counter()

    def walk(nodes, counter, visiting):
        for node in nodes:
            counter[node.op] += 1
            inner = conditional if node.op in _CONDITIONAL_OPS else counter
            for key in _FUNCTION_ATTRS:
                if key not in node.attr:
                    continue
                attr = node.attr[key]
                names = [attr.func.name] if attr.func.name else []
                names += [f.name for f in attr.list.func]
                for name in names:
                    if name in library and name not in visiting:
                        walk(library[name].node_def, inner, visiting | {name})

    walk(graph_def.node, always, frozenset())
    return always, conditional


def executed_counts(hidden: int, batch: int, callback: bool, logdir: str):
    """Op types of the graph TensorFlow runs (after grappler), for a fresh model.

    The runtime records the optimised partition graphs of the functions it
    instantiates while run metadata is on; the train step's is the one that
    holds the loss kernel. A ``tf.cond`` there is lowered to ``Switch`` and
    ``Merge``, both branches in the graph.
    """
    from tensorflow.python.eager import context

    ctx = context.context()
    ctx.enable_run_metadata()
    try:
        model, data, cbs = build(hidden, batch, callback, logdir)
        compiled_function(model)(iter(data.repeat()))
        metadata = ctx.export_run_metadata()
    finally:
        ctx.disable_run_metadata()
    for cb in cbs:
        cb.close()
    found = collections.Counter()
    for function in metadata.function_graphs:
        for graph in function.partition_graphs:
            ops = collections.Counter(n.op for n in graph.node)
            if ops["SparseSoftmaxCrossEntropyWithLogits"]:
                found = ops
    return found


class Timer:
    """Times calls of one model's compiled train function over repeated batches."""

    def __init__(self, model, data):
        self.fn = compiled_function(model)
        self.iterator = iter(data.repeat())
        self.run(20)

    def run(self, calls: int) -> tuple[float, float]:
        """CPU and wall seconds per call over ``calls`` calls."""
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(calls):
            logs = self.fn(self.iterator)
        # The last call's outputs are ready before the clocks stop.
        float(logs["loss"])
        return (time.process_time() - cpu) / calls, (time.perf_counter() - wall) / calls


def _print_counts(plain, monitored, label):
    print(
        f"\n{label}: plain {sum(plain.values())}, callback "
        f"{sum(monitored.values())} (+{sum(monitored.values()) - sum(plain.values())})"
    )
    diff = monitored.copy()
    diff.subtract(plain)
    rows = sorted((n, op) for op, n in diff.items() if n)
    for n, op in sorted(rows, key=lambda r: (-abs(r[0]), r[1])):
        print(f"  {op:<28}{n:+5d}")


def main() -> None:
    args = ARGS
    with tempfile.TemporaryDirectory() as workdir:
        plain_model, data, _ = build(args.hidden, args.batch, False, workdir)
        cb_model, _, cbs = build(args.hidden, args.batch, True, workdir + "/run")
        p_always, p_cond = traced_counts(plain_model, data)
        c_always, c_cond = traced_counts(cb_model, data)
        _print_counts(p_always, c_always, "traced ops, every step")
        _print_counts(p_cond, c_cond, "traced ops, conditional branches")
        _print_counts(
            executed_counts(args.hidden, args.batch, False, workdir + "/x0"),
            executed_counts(args.hidden, args.batch, True, workdir + "/x1"),
            "ops TensorFlow runs (after grappler; a cond's two branches included)",
        )
        for cb in cbs:
            cb.close()
        if args.counts_only:
            return
        loads = os.getloadavg()
        cpu_ratios, wall_ratios, per_step = [], [], {"plain": [], "callback": []}
        for rep in range(args.repeats):
            # Fresh models, built in alternating order; then blocks of calls
            # alternate between them, so drift in the machine's load hits both.
            order = ("plain", "callback") if rep % 2 == 0 else ("callback", "plain")
            timers, all_cbs = {}, []
            for variant in order:
                model, data, cbs = build(
                    args.hidden,
                    args.batch,
                    variant == "callback",
                    f"{workdir}/{variant}{rep}",
                )
                timers[variant] = Timer(model, data)
                all_cbs += cbs
            block = max(args.calls // args.blocks, 1)
            rounds = {"plain": [], "callback": []}
            for k in range(args.blocks):
                for variant in order if k % 2 == 0 else order[::-1]:
                    rounds[variant].append(timers[variant].run(block))
            for variant, runs in rounds.items():
                per_step[variant].append(
                    tuple(statistics.median(r[q] for r in runs) for q in (0, 1))
                )
            pairs = list(zip(rounds["callback"], rounds["plain"], strict=True))
            cpu_ratios.append(statistics.median(m[0] / p[0] for m, p in pairs))
            wall_ratios.append(statistics.median(m[1] / p[1] for m, p in pairs))
            for cb in all_cbs:
                cb.close()
        print(
            f"\n{args.repeats} repetitions x {args.blocks} alternating blocks of "
            f"{args.calls // args.blocks} calls, load average {loads[0]:.2f} at the "
            f"start, {os.getloadavg()[0]:.2f} at the end"
        )
        for name, runs in per_step.items():
            print(
                f"  {name:<10} CPU {1e6 * statistics.median(r[0] for r in runs):8.1f}"
                f" µs/step   wall {1e6 * statistics.median(r[1] for r in runs):8.1f}"
                " µs/step"
            )
        print(
            f"  ratio      CPU {statistics.median(cpu_ratios):.3f} "
            f"(each: {', '.join(f'{r:.3f}' for r in cpu_ratios)})   "
            f"wall {statistics.median(wall_ratios):.3f}"
        )


if __name__ == "__main__":
    main()
