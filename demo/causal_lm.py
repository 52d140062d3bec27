"""Seed 002: a small causal language model with a KL term weighted by HRM.

Seed 002 plots, for HRM coefficients 0.001, 0.5 and 10, the KL loss and the
causal-LM loss of a language model over training: a small coefficient lets the
LM loss fall and settle, larger ones leave both losses swinging.

The model here: each position's context (a causal convolution over token
embeddings) is encoded into a Gaussian latent ``q(z|context) = N(μ, σ²)`` of
16 dimensions; ``z`` is sampled with the reparameterisation trick and decoded
into next-token logits. The loss is ``causal_lm_loss + hrm · kl_loss`` with
``kl_loss = KL(q(z|context) || N(0, I))`` per position. Both terms are
``keras.metrics.Mean`` metrics of the model, so the callback records them at
every logged step as the loss components ``kl_loss`` and ``causal_lm_loss``.

The corpus is real text: the documentation pages that ship with Python
(``pydoc_data.topics``, see :mod:`demo.data`), read character by character;
the 63 commonest characters are tokens of their own, every other character
shares the 64th. The training sequences are 1,024 windows of 33 characters
at random places in the text.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from demo import RUNS as _ALL_RUNS
from demo import Settings, announce, data, run_dir, seed_everything
from tb_gradplugin import GradientHealthCallback

HRM = (0.001, 0.5, 10.0)
"""The KL coefficients of seed 002."""

RUNS = _ALL_RUNS["causal_lm"]

"""The run names this experiment writes: ``hrm_0.001``, ``hrm_0.5``, ``hrm_10.0``."""

VOCAB = 64  # character ids
LENGTH = 33  # characters per window: 32 next-character predictions
N_SEQUENCES = 1024
LATENT = 16
BATCH = 32  # 32 steps per epoch
SEED = 2


def make_corpus(seed: int = SEED) -> np.ndarray:
    """Cuts the training windows out of Python's documentation text.

    Args:
        seed: The numpy seed of the windows' places. Defaults to 2.

    Returns:
        int32 ``[1024, 33]`` character ids.
    """
    ids, _ = data.character_tokens(data.python_documentation_text(), VOCAB)
    starts = np.random.default_rng(seed).choice(
        ids.shape[0] - LENGTH, N_SEQUENCES, replace=False
    )
    return ids[starts[:, None] + np.arange(LENGTH)]


class LatentCausalLM(keras.Model):
    """A causal LM with a Gaussian latent per position and a weighted KL term.

    Args:
        hrm: The weight of the KL term in the loss.

    Example:
        >>> model = LatentCausalLM(hrm=0.5)
        >>> model.compile(optimizer="adam")
    """

    def __init__(self, hrm: float, **kwargs):
        super().__init__(**kwargs)
        self.hrm = float(hrm)
        self.embed = keras.layers.Embedding(VOCAB, 32, name="token_embedding")
        self.context = keras.layers.Conv1D(
            64, 4, padding="causal", activation="relu", name="causal_conv"
        )
        self.posterior = keras.layers.Dense(2 * LATENT, name="posterior")
        self.decoder = keras.layers.Dense(VOCAB, name="decoder")
        self.noise = keras.random.SeedGenerator(SEED)
        self.kl_tracker = keras.metrics.Mean(name="kl_loss")
        self.lm_tracker = keras.metrics.Mean(name="causal_lm_loss")

    def call(self, tokens, training=False):
        """Returns next-token logits, μ and log σ² of every position."""
        h = self.context(self.embed(tokens))
        stats = self.posterior(h)
        mu, logvar = stats[..., :LATENT], stats[..., LATENT:]
        z = mu
        if training:
            eps = keras.random.normal(ops.shape(mu), seed=self.noise)
            z = mu + ops.exp(0.5 * logvar) * eps
        return self.decoder(z), mu, logvar

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """``causal_lm_loss + hrm · kl_loss``; updates both trackers."""
        logits, mu, logvar = y_pred
        lm = ops.mean(
            keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        )
        kl = ops.mean(
            0.5 * ops.sum(ops.square(mu) + ops.exp(logvar) - 1.0 - logvar, axis=-1)
        )
        self.lm_tracker.update_state(lm)
        self.kl_tracker.update_state(kl)
        return lm + self.hrm * kl


def train_run(name: str, logdir: str, settings: Settings) -> None:
    """Trains one HRM run into ``logdir/name``.

    Args:
        name: One of :data:`RUNS`.
        logdir: The demo's log directory.
        settings: How long to train.

    Raises:
        ValueError: For an unknown run name.
    """
    if name not in RUNS:
        raise ValueError(f"unknown causal-LM run: {name!r}")
    hrm = HRM[RUNS.index(name)]
    epochs = settings.epochs(full=40, quick=6)
    done = announce(
        name, f"seed 002 causal LM with KL weight (HRM) {hrm}, {epochs} epochs"
    )
    seed_everything(SEED)
    seq = make_corpus()
    x, y = seq[:, :-1], seq[:, 1:]
    model = LatentCausalLM(hrm, name=name.replace(".", "_"))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    # Built before fit: the callback reads the trainable variables when the
    # training begins, before Keras would build a subclassed model.
    model(x[:1])
    cb = GradientHealthCallback(
        run_dir(logdir, name),
        update_freq=1,
        loss_components=["kl_loss", "causal_lm_loss"],
    )
    model.fit(
        x, y, batch_size=BATCH, epochs=epochs, verbose=settings.verbose, callbacks=[cb]
    )
    cb.close()
    done()
