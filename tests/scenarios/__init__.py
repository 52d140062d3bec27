"""A labelled suite of real Keras trainings, each built to have one pathology.

Each :class:`Scenario` builds a model and data from a seed, trains it with
:class:`~tb_gradplugin.GradientHealthCallback`, and says which flag kinds a
correct diagnosis must raise (``expected``), which it may also raise as a
consequence (``allowed``: an explosion that ends in NaN is also ``non_finite``),
and the step where the pathology begins (for the detection delay). Healthy
scenarios expect no flag of severity warning or error.

Used by ``tests/test_scenarios.py`` (one seed, in CI) and
``benchmarks/detection.py`` (several seeds; precision, recall and delay).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import keras
import numpy as np

from tb_gradplugin import GradientHealthCallback, diagnosis, reader

SERIOUS = ("warning", "error")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One labelled training.

    Attributes:
        name: The run name.
        build: ``build(seed) -> (model, x, y, fit_kwargs, callback_kwargs)``.
        expected: Flag kinds that must be raised (empty for a healthy run).
        allowed: Further kinds that are correct consequences.
        onset: First step of the pathology (for the detection delay).
    """

    name: str
    build: Callable[[int], tuple]
    expected: frozenset[str]
    allowed: frozenset[str] = frozenset()
    onset: int = 1

    @property
    def healthy(self) -> bool:
        """Whether the training is healthy (no flag expected)."""
        return not self.expected


def _binary(seed: int, n: int = 512, dim: int = 20):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    w = rng.normal(size=(dim,))
    y = (x @ w + 0.3 * rng.normal(size=n) > 0).astype("int64")
    return x, y


def _classes(seed: int, n: int = 600, dim: int = 32, classes: int = 5):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(classes, dim))
    y = rng.integers(0, classes, n)
    x = (centers[y] + rng.normal(size=(n, dim))).astype("float32")
    return x, y


def _images(seed: int, n: int = 384, classes: int = 4):
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(classes, 12, 12, 1))
    y = rng.integers(0, classes, n)
    x = (protos[y] + 0.8 * rng.normal(size=(n, 12, 12, 1))).astype("float32")
    return x, y


def _mlp(dim, widths, out, activation="relu", **dense_kwargs):
    layers = [keras.Input((dim,))]
    layers += [
        keras.layers.Dense(w, activation=activation, **dense_kwargs) for w in widths
    ]
    layers.append(keras.layers.Dense(out))
    return keras.Sequential(layers)


def _compile(model, optimizer):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _fit(epochs, batch_size=32):
    return {"epochs": epochs, "batch_size": batch_size}


# -- pathologies ------------------------------------------------------------
def exploding(seed):
    """SGD with a far too high learning rate: norms blow up, then NaN."""
    keras.utils.set_random_seed(seed)
    x, y = _classes(seed)
    model = _compile(_mlp(32, [64, 64], 5), keras.optimizers.SGD(3.0, momentum=0.9))
    return model, x, y, _fit(6), {}


def vanishing(seed):
    """A deep sigmoid MLP with tiny initial weights: stuck at ln 2."""
    keras.utils.set_random_seed(seed)
    x, y = _binary(seed)
    init = keras.initializers.RandomNormal(stddev=0.01)
    model = _mlp(20, [32] * 8, 2, activation="sigmoid", kernel_initializer=init)
    return _compile(model, keras.optimizers.SGD(0.01)), x, y, _fit(8), {}


def dead_relu(seed):
    """ReLU layers with strongly negative biases: most units never fire."""
    keras.utils.set_random_seed(seed)
    x, y = _classes(seed)
    model = _mlp(32, [64, 64], 5, bias_initializer=keras.initializers.Constant(-8.0))
    return _compile(model, keras.optimizers.Adam(1e-3)), x, y, _fit(6), {}


def dead_blocking(seed):
    """A healthy first layer before a layer whose ReLUs never fire.

    The second layer's bias of -20 keeps every unit off for every example:
    it passes no gradient back, so the first layer's gradient is exactly zero
    too, through no fault of its own (it is starved, not dead).
    """
    keras.utils.set_random_seed(seed)
    x, y = _classes(seed)
    model = keras.Sequential(
        [
            keras.Input((32,)),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(
                32,
                activation="relu",
                bias_initializer=keras.initializers.Constant(-20.0),
                name="blocker",
            ),
            keras.layers.Dense(5, name="out"),
        ]
    )
    return _compile(model, keras.optimizers.Adam(1e-3)), x, y, _fit(4), {}


def oscillating(seed):
    """Momentum SGD, batch size 1, high learning rate: the loss swings, no NaN."""
    keras.utils.set_random_seed(seed)
    x, y = _binary(seed, n=300)
    model = _compile(_mlp(20, [16], 2), keras.optimizers.SGD(0.02, momentum=0.9))
    return model, x, y, _fit(3, batch_size=1), {}


def oscillating_alternating(seed):
    """Momentum SGD at batch size 1 on examples whose classes alternate.

    Each step pushes the output towards the other class, so the loss
    alternates step to step (about 0.5 and 0.9, with rare spikes) around
    chance level for the whole run, while most hidden units fall silent: an
    oscillation, not a plateau (the kind AutoTrainer calls oscillating loss).
    """
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 20)).astype("float32")
    y = (x @ rng.normal(size=20) > 0).astype("int64")  # separable, no label noise
    first, second = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    pairs = min(len(first), len(second))
    order = np.stack([first[:pairs], second[:pairs]], axis=1).reshape(-1)
    model = _compile(_mlp(20, [16, 16], 2), keras.optimizers.SGD(0.05, momentum=0.9))
    return (
        model,
        x[order],
        y[order],
        {**_fit(3, batch_size=1), "shuffle": False},
        {},
    )


def nan_input(seed):
    """A NaN in the input data from the middle of the first epoch on."""
    keras.utils.set_random_seed(seed)
    x, y = _classes(seed)
    x[320] = np.nan  # batch 11 with batch size 32
    model = _compile(_mlp(32, [32], 5), keras.optimizers.Adam(1e-3))
    return model, x, y, {**_fit(3), "shuffle": False}, {}


def saddle(seed):
    """All-zero initial weights of a tanh network: zero gradient at a saddle."""
    keras.utils.set_random_seed(seed)
    x, y = _classes(seed, n=256, dim=6, classes=3)
    zeros = keras.initializers.Zeros()
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="tanh", kernel_initializer=zeros),
            keras.layers.Dense(3, kernel_initializer=zeros),
        ]
    )
    model = _compile(model, keras.optimizers.SGD(0.5))
    # Full batches: the gradient really goes to zero once the output bias has
    # fitted the class prior, while the weights stay at the saddle.
    return model, x, y, _fit(40, batch_size=256), {"hessian_freq": 5}


# -- healthy ----------------------------------------------------------------
def healthy_mlp_adam(seed):
    """A small ReLU MLP with Adam on separable classes."""
    keras.utils.set_random_seed(seed)
    x, y = _classes(seed)
    return (
        _compile(_mlp(32, [64, 32], 5), keras.optimizers.Adam(1e-3)),
        x,
        y,
        _fit(8),
        {},
    )


def healthy_mlp_sgd(seed):
    """A tanh MLP with momentum SGD at a sensible learning rate."""
    keras.utils.set_random_seed(seed)
    x, y = _binary(seed)
    model = _mlp(20, [32, 32], 2, activation="tanh")
    return _compile(model, keras.optimizers.SGD(0.05, momentum=0.9)), x, y, _fit(8), {}


def healthy_sgd_batch1(seed):
    """Momentum SGD with batch size 1 at a small learning rate.

    Per-example gradients swing by decades (a well-fitted example gives ~0,
    a misfit one a large norm): noise, not an explosion.
    """
    keras.utils.set_random_seed(seed)
    x, y = _binary(seed, n=300)
    model = _compile(_mlp(20, [16], 2), keras.optimizers.SGD(0.005, momentum=0.9))
    return model, x, y, _fit(3, batch_size=1), {}


def healthy_sgd_batch2(seed):
    """Momentum SGD at batch size 2 that learns: noise around a falling loss.

    The loss of a 2-example batch swings from ~0 to ~1 while its epoch mean
    falls (about 0.49, 0.34, 0.22): minibatch noise, not oscillation.
    """
    keras.utils.set_random_seed(seed)
    x, y = _binary(seed, n=300)
    model = _compile(_mlp(20, [16, 16], 2), keras.optimizers.SGD(0.03, momentum=0.9))
    return model, x, y, _fit(3, batch_size=2), {}


def healthy_rnn_clipped(seed):
    """A character-level SimpleRNN with a clipped Adam on Markov-chain text.

    Its epoch loss falls steadily (about 2.87, 2.46, 2.26 from ln 20 = 3.0)
    while the per-batch loss is noisy: a falling trend, not oscillation.
    """
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    vocab, n, length = 20, 1200, 20
    transitions = rng.dirichlet(np.full(vocab, 0.3), size=vocab)
    text = np.zeros(n * length + 1, dtype=np.int64)
    for i in range(1, text.shape[0]):
        text[i] = rng.choice(vocab, p=transitions[text[i - 1]])
    x = text[:-1].reshape(n, length).astype("int32")
    y = text[1:].reshape(n, length)
    model = keras.Sequential(
        [
            keras.Input((length,), dtype="int32"),
            keras.layers.Embedding(vocab, 16),
            keras.layers.SimpleRNN(64, return_sequences=True),
            keras.layers.Dense(vocab),
        ]
    )
    model = _compile(model, keras.optimizers.Adam(3e-3, clipnorm=1.0))
    return model, x, y, _fit(3), {}


def healthy_rmsprop(seed):
    """A ReLU MLP with RMSprop and logging every 5 steps."""
    keras.utils.set_random_seed(seed)
    x, y = _classes(seed, classes=3)
    model = _compile(_mlp(32, [48], 3), keras.optimizers.RMSprop(1e-3))
    return model, x, y, _fit(8), {"update_freq": 5}


def healthy_cnn(seed):
    """A two-conv CNN with Adam on noisy prototypes."""
    keras.utils.set_random_seed(seed)
    x, y = _images(seed)
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4),
        ]
    )
    return _compile(model, keras.optimizers.Adam(3e-3)), x, y, _fit(6), {}


def healthy_embedding(seed):
    """A bag-of-embeddings text classifier (sparse gradients) with Adam."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    n, length, vocab = 512, 12, 200
    x = rng.integers(1, vocab, size=(n, length))
    y = (x < vocab // 2).sum(axis=1) > length // 2
    model = keras.Sequential(
        [
            keras.Input((length,), dtype="int32"),
            keras.layers.Embedding(vocab, 16),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(2),
        ]
    )
    model = _compile(model, keras.optimizers.Adam(5e-3))
    return model, x.astype("int32"), y.astype("int64"), _fit(8), {}


SCENARIOS = [
    Scenario(
        "exploding",
        exploding,
        frozenset({"exploding_gradient"}),
        frozenset({"non_finite", "oscillating_loss"}),
    ),
    Scenario(
        "vanishing",
        vanishing,
        frozenset({"vanishing_gradient"}),
        frozenset({"loss_plateau"}),
    ),
    Scenario(
        "dead_relu",
        dead_relu,
        frozenset({"dead_layer"}),
        frozenset({"vanishing_gradient", "loss_plateau"}),
    ),
    Scenario(
        "dead_blocking",
        dead_blocking,
        frozenset({"dead_layer"}),
        frozenset({"loss_plateau", "vanishing_gradient"}),
    ),
    Scenario("oscillating", oscillating, frozenset({"oscillating_loss"})),
    Scenario(
        "oscillating_alternating",
        oscillating_alternating,
        frozenset({"oscillating_loss"}),
        # Most hidden units fall silent (a warning) and the gradient norm
        # spikes when an example lands on the wrong side: consequences.
        frozenset({"dead_layer", "exploding_gradient"}),
    ),
    Scenario("nan_input", nan_input, frozenset({"non_finite"}), onset=11),
    Scenario(
        "saddle",
        saddle,
        frozenset({"saddle_point"}),
        frozenset({"vanishing_gradient", "loss_plateau", "dead_layer"}),
    ),
    Scenario("healthy_mlp_adam", healthy_mlp_adam, frozenset()),
    Scenario("healthy_mlp_sgd", healthy_mlp_sgd, frozenset()),
    Scenario("healthy_sgd_batch1", healthy_sgd_batch1, frozenset()),
    Scenario("healthy_sgd_batch2", healthy_sgd_batch2, frozenset()),
    Scenario("healthy_rnn_clipped", healthy_rnn_clipped, frozenset()),
    Scenario("healthy_rmsprop", healthy_rmsprop, frozenset()),
    Scenario("healthy_cnn", healthy_cnn, frozenset()),
    Scenario("healthy_embedding", healthy_embedding, frozenset()),
]


def run_scenario(scenario: Scenario, logdir: str, seed: int = 0) -> dict:
    """Trains a scenario with the callback and diagnoses its run.

    Args:
        scenario: The scenario.
        logdir: Parent directory; the run is written to ``logdir/<name>``.
        seed: The seed of the model and data. Defaults to ``0``.

    Returns:
        The run's report (``diagnosis.run_report``) plus ``"serious"``: the
        kinds flagged with severity warning or error.
    """
    model, x, y, fit_kwargs, cb_kwargs = scenario.build(seed)
    run_dir = os.path.join(logdir, scenario.name)
    cb = GradientHealthCallback(run_dir, on_flag=None, **cb_kwargs)
    model.fit(x, y, verbose=0, callbacks=[cb], **fit_kwargs)
    cb.close()
    provider = reader.provider_for_logdir(logdir)
    report = diagnosis.run_report(reader.read_run(provider, scenario.name))
    report["serious"] = sorted(
        {f["kind"] for f in report["flags"] if f["severity"] in SERIOUS}
    )
    return report
