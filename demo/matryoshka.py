"""Seeds 000/001: Matryoshka embeddings, nested (MRL) and sequential (SMRL) losses.

Seeds 000 and 001 compare, per epoch, the average gradient of two slices of a
192-dimensional embedding, ω[0:96] and ω[96:192], and the gradient variance
over all 192 dimensions, between a nested loss (MRL: a classifier on the first
96 dimensions and one on all 192, trained together) and a sequential variant
(SMRL: the loss on the first 96 dimensions first, then on all 192; here the
second phase keeps the 96-dimension loss too, so that no head stops learning).

The model here: a bag-of-tokens text classifier. Tokens go through a
``keras.layers.Embedding`` of width 192 (the weight whose last axis the slices
cut), are averaged, and feed two linear heads, one reading dimensions 0–95 and
one reading all 192. The data: generated documents of 10 topics, each topic
drawing its tokens more often from its own part of the vocabulary.
"""

from __future__ import annotations

import keras
import numpy as np

from demo import RUNS as _ALL_RUNS
from demo import Settings, announce, run_dir, seed_everything
from tb_gradplugin import GradientHealthCallback

RUNS = _ALL_RUNS["matryoshka"]
"""The run names this experiment writes."""

DIM = 192  # embedding width of seeds 000/001
PREFIX = 96  # the nested prefix ω[0:96]
VOCAB = 500  # tokens
LENGTH = 24  # tokens per document
CLASSES = 10
N_EXAMPLES = 2000
BATCH = 50  # 40 steps per epoch
SEED = 0


def make_data(seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Generates the topic-classification documents.

    Each of the 10 topics owns 50 "topic" tokens; a document of 24 tokens draws
    each token from its topic's tokens with probability 0.3, else uniformly
    from the vocabulary.

    Args:
        seed: The numpy seed. Defaults to 0.

    Returns:
        ``(tokens, labels)``: int32 ``[2000, 24]`` and int32 ``[2000]``.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, N_EXAMPLES)
    own = rng.random((N_EXAMPLES, LENGTH)) < 0.3
    topic_tok = labels[:, None] * 50 + rng.integers(0, 50, (N_EXAMPLES, LENGTH))
    any_tok = rng.integers(0, VOCAB, (N_EXAMPLES, LENGTH))
    tokens = np.where(own, topic_tok, any_tok)
    return tokens.astype(np.int32), labels.astype(np.int32)


class MatryoshkaClassifier(keras.Model):
    """Embedding → mean → two heads, on the first 96 and on all 192 dimensions.

    The loss is ``mix[0] · CE(head_96) + mix[1] · CE(head_192)``; ``mix`` is a
    non-trainable variable, so the sequential schedule changes it between
    epochs without retracing the train step.

    Args:
        mix: The initial loss weights of the two heads. Defaults to ``(1, 1)``
            (MRL).

    Example:
        >>> model = MatryoshkaClassifier()
        >>> model.compile(optimizer="adam")
    """

    def __init__(self, mix: tuple[float, float] = (1.0, 1.0), **kwargs):
        super().__init__(**kwargs)
        self.embedding = keras.layers.Embedding(VOCAB, DIM, name="embedding")
        self.pool = keras.layers.GlobalAveragePooling1D()
        self.head_96 = keras.layers.Dense(CLASSES, name="head_96")
        self.head_192 = keras.layers.Dense(CLASSES, name="head_192")
        self.mix = keras.Variable(
            np.asarray(mix, np.float32), trainable=False, name="mix"
        )
        self.ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.loss_96 = keras.metrics.Mean(name="loss_96")
        self.loss_192 = keras.metrics.Mean(name="loss_192")

    def call(self, tokens):
        """Returns the logits of both heads."""
        z = self.pool(self.embedding(tokens))
        return self.head_96(z[:, :PREFIX]), self.head_192(z)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """The weighted sum of the two heads' cross-entropies."""
        l96 = self.ce(y, y_pred[0], sample_weight)
        l192 = self.ce(y, y_pred[1], sample_weight)
        self.loss_96.update_state(l96)
        self.loss_192.update_state(l192)
        return self.mix[0] * l96 + self.mix[1] * l192


class SequentialSchedule(keras.callbacks.Callback):
    """SMRL: the loss on the first 96 dimensions, then the nested loss on all 192.

    Args:
        switch_epoch: The first epoch (0-based) of the second phase.

    Example:
        >>> model.fit(x, y, callbacks=[SequentialSchedule(15)])  # doctest: +SKIP
    """

    def __init__(self, switch_epoch: int):
        super().__init__()
        self.switch_epoch = switch_epoch

    def on_epoch_begin(self, epoch, logs=None):
        """Sets the loss weights of the epoch's phase."""
        mix = (1.0, 0.0) if epoch < self.switch_epoch else (1.0, 1.0)
        self.model.mix.assign(np.asarray(mix, np.float32))


def train_run(name: str, logdir: str, settings: Settings) -> None:
    """Trains one run (``mrl`` or ``smrl``) into ``logdir/name``.

    Args:
        name: One of :data:`RUNS`.
        logdir: The demo's log directory.
        settings: How long to train.

    Raises:
        ValueError: For an unknown run name.
    """
    if name not in RUNS:
        raise ValueError(f"unknown matryoshka run: {name!r}")
    epochs = settings.epochs(full=30, quick=6)  # seeds 000/001 plot 30 epochs
    done = announce(
        name,
        f"seeds 000/001 Matryoshka embedding ({DIM} dims), {epochs} epochs, "
        + ("nested loss" if name == "mrl" else "first 96 dims, then all 192"),
    )
    seed_everything(SEED)  # the same initial weights for both runs
    x, y = make_data()
    model = MatryoshkaClassifier(name=name)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model(x[:1])  # builds the variables, so that the slices can name one
    path = model.embedding.embeddings.path
    cb = GradientHealthCallback(
        run_dir(logdir, name),
        update_freq=1,
        slices={"w_0_96": (path, (0, PREFIX)), "w_96_192": (path, (PREFIX, DIM))},
        loss_components=["loss_96", "loss_192"],
    )
    callbacks = [cb]
    if name == "smrl":
        callbacks.insert(0, SequentialSchedule(epochs // 2))
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=epochs,
        verbose=settings.verbose,
        callbacks=callbacks,
    )
    cb.close()
    done()
