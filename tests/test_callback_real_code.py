"""The callback on real training code: recompiles, custom steps, several optimizers."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tb_gradplugin import GradientHealthCallback, reader

BATCH = 8
N = 32  # examples: 4 steps per epoch
LR = 0.05
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
FIT = {"batch_size": BATCH, "shuffle": False, "verbose": 0}


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, 6)).astype("float32")
    y = rng.integers(0, 3, N)
    return x, y


def read(logdir):
    provider = reader.provider_for_logdir(os.path.dirname(logdir))
    return reader.read_run(provider, os.path.basename(logdir))


def tape_norms(model, xb, yb):
    """Per-variable gradient L2 norms of one batch by GradientTape, by path."""
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss = LOSS(yb, model(xb, training=True))
    grads = tape.gradient(loss, variables)
    return {
        v.path: float(np.linalg.norm(g.numpy()))
        for v, g in zip(variables, grads, strict=True)
    }


def base_and_head():
    keras.utils.set_random_seed(2)
    base = keras.layers.Dense(5, activation="tanh", name="base")
    head = keras.layers.Dense(3, name="head")
    model = keras.Sequential([keras.Input((6,)), base, head])
    return model, base


def test_refits_after_freezing_keep_steps_increasing_and_labels_right(tmp_path):
    """Freeze, fit, unfreeze, recompile, fit twice: steps go on, labels stay true."""
    x, y = data()
    model, base = base_and_head()
    paths = [v.path for v in model.trainable_variables]
    log_dir = str(tmp_path / "run")
    cb = GradientHealthCallback(log_dir, update_freq=1, on_flag=None)
    fit = dict(batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    base.trainable = False
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=LOSS)
    first_head = tape_norms(model, x[:BATCH], y[:BATCH])
    model.fit(x, y, callbacks=[cb], **fit)
    base.trainable = True
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=LOSS)
    second = tape_norms(model, x[:BATCH], y[:BATCH])
    model.fit(x, y, callbacks=[cb], **fit)
    cb.close()
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=LOSS)
    third = tape_norms(model, x[:BATCH], y[:BATCH])
    other = GradientHealthCallback(log_dir, update_freq=1, on_flag=None)
    model.fit(x, y, callbacks=[other], **fit)
    other.close()
    run = read(log_dir)
    assert run.scalars["step/loss"].steps.tolist() == list(range(1, 13))
    series = run.tensors["layer/grad_norm"]
    assert series.steps.tolist() == list(range(1, 13))
    assert series.names == paths
    rows = {int(s): r for s, r in zip(series.steps, series.values, strict=True)}
    frozen = [i for i, p in enumerate(paths) if p.startswith("base/")]
    assert np.isnan(rows[1][frozen]).all()  # frozen: absent, never 0
    zero = run.tensors["window_layer/zero_fraction"]
    assert zero.steps.tolist() == [4, 8, 12]
    assert np.isnan(zero.values[0][frozen]).all()  # no "always zero" window
    assert np.isfinite(zero.values[1:]).all()
    for step, expected in ((1, first_head), (5, second), (9, third)):
        for path, norm in expected.items():
            value = rows[step][paths.index(path)]
            np.testing.assert_allclose(value, norm, rtol=1e-4, err_msg=path)


class EpochLoss(keras.callbacks.Callback):
    """Keeps the loss Keras logs at each epoch's end."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        """Keeps the epoch's loss."""
        self.epochs.append(float(logs["loss"]))


class ComponentLog(keras.callbacks.Callback):
    """Keeps Keras's per-batch running means of some log entries."""

    def __init__(self, names):
        super().__init__()
        self.names = names
        self.means = {n: [] for n in names}

    def on_train_batch_end(self, batch, logs=None):
        """Keeps the running means."""
        for n in self.names:
            self.means[n].append(float(logs[n]))

    def per_step(self, name, steps_per_epoch):
        """Each step's own value, from the running means of its epoch."""
        out = []
        for start in range(0, len(self.means[name]), steps_per_epoch):
            prev = 0.0
            for k, mean in enumerate(self.means[name][start : start + steps_per_epoch]):
                out.append((k + 1) * mean - k * prev)
                prev = mean
        return out


class VAE(keras.Model):
    """The keras.io VAE's shape: its own Mean trackers and train_step."""

    def __init__(self):
        super().__init__()
        self.encoder = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
        self.decoder = keras.Sequential([keras.Input((2,)), keras.layers.Dense(6)])
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
        self.reconstruction_loss_tracker = keras.metrics.Mean(
            name="reconstruction_loss"
        )
        self.kl_loss_tracker = keras.metrics.Mean(name="kl_loss")

    @property
    def metrics(self):
        """The three trackers."""
        return [
            self.total_loss_tracker,
            self.reconstruction_loss_tracker,
            self.kl_loss_tracker,
        ]

    def train_step(self, data):
        """One step of the summed reconstruction and KL losses."""
        with tf.GradientTape() as tape:
            h = self.encoder(data)
            z_mean, z_log_var = h[:, :2], h[:, 2:]
            reconstruction = self.decoder(z_mean)
            reconstruction_loss = tf.reduce_mean(tf.square(data - reconstruction))
            kl_loss = -0.5 * tf.reduce_mean(
                1 + z_log_var - tf.square(z_mean) - tf.exp(z_log_var)
            )
            total_loss = reconstruction_loss + kl_loss
        grads = tape.gradient(total_loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights, strict=True))
        self.total_loss_tracker.update_state(total_loss)
        self.reconstruction_loss_tracker.update_state(reconstruction_loss)
        self.kl_loss_tracker.update_state(kl_loss)
        return {
            "loss": self.total_loss_tracker.result(),
            "reconstruction_loss": self.reconstruction_loss_tracker.result(),
            "kl_loss": self.kl_loss_tracker.result(),
        }


class OwnLoss(keras.Model):
    """A custom train_step keeping its own ``Mean(name="loss")``."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)
        self.loss_mean = keras.metrics.Mean(name="loss")

    def call(self, x):
        """The logits."""
        return self.dense(x)

    def train_step(self, data):
        """One step; logs the model's own loss tracker."""
        x, y = data
        with tf.GradientTape() as tape:
            loss = LOSS(y, self(x, training=True))
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(
            zip(grads, self.trainable_variables, strict=True)
        )
        self.loss_mean.update_state(loss)
        return {"loss": self.loss_mean.result()}


class NoLoss(VAE):
    """A custom train_step whose logs have no ``loss``."""

    def train_step(self, data):
        """The VAE's step, logged as ``total_loss`` only."""
        logs = super().train_step(data)
        return {"total_loss": logs["loss"]}


def test_custom_train_step_loss_is_the_loss_keras_logs(tmp_path):
    """A VAE's and an own-Mean model's step/loss equal Keras's per-step loss."""
    x, y = data()
    for name, model, args in (
        ("vae", VAE(), (x,)),
        ("own", OwnLoss(), (x, y)),
    ):
        keras.utils.set_random_seed(3)
        model.compile(optimizer=keras.optimizers.SGD(LR))
        log = ComponentLog(["loss"])
        cb = GradientHealthCallback(str(tmp_path / name), update_freq=1, on_flag=None)
        model.fit(*args, epochs=2, callbacks=[cb, log], **FIT)
        cb.close()
        loss = read(str(tmp_path / name)).scalars["step/loss"]
        assert loss.steps.tolist() == list(range(1, 9)), name
        np.testing.assert_allclose(loss.values, log.per_step("loss", 4), rtol=1e-4)
        assert np.all(loss.values > 0), name


def test_custom_train_step_without_a_loss_log_writes_no_loss(tmp_path):
    """No ``loss`` in a custom step's logs: no loss series, never a zero."""
    x, _ = data()
    model = NoLoss()
    model.compile(optimizer=keras.optimizers.SGD(LR))
    cb = GradientHealthCallback(str(tmp_path / "run"), update_freq=1, on_flag=None)
    model.fit(x, batch_size=BATCH, epochs=1, verbose=0, callbacks=[cb])
    cb.close()
    run = read(str(tmp_path / "run"))
    assert "step/loss" not in run.scalars
    assert run.scalars["step/grad_norm"].steps.tolist() == [1, 2, 3, 4]


class GAN(keras.Model):
    """The keras.io GAN's shape: two optimizers of its own, stepped in train_step."""

    def __init__(self, discriminator, generator, latent_dim):
        super().__init__()
        self.discriminator = discriminator
        self.generator = generator
        self.latent_dim = latent_dim
        self.seed_generator = keras.random.SeedGenerator(1337)

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        """Keeps the two optimizers and the loss."""
        super().compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn
        self.d_loss_metric = keras.metrics.Mean(name="d_loss")
        self.g_loss_metric = keras.metrics.Mean(name="g_loss")

    @property
    def metrics(self):
        """The two loss trackers."""
        return [self.d_loss_metric, self.g_loss_metric]

    def train_step(self, real):
        """Steps the discriminator, then the generator."""
        batch_size = tf.shape(real)[0]
        latent = keras.random.normal(
            (batch_size, self.latent_dim), seed=self.seed_generator
        )
        combined = tf.concat([self.generator(latent), real], axis=0)
        labels = tf.concat([tf.ones((batch_size, 1)), tf.zeros((batch_size, 1))], 0)
        with tf.GradientTape() as tape:
            d_loss = self.loss_fn(labels, self.discriminator(combined))
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply_gradients(
            zip(grads, self.discriminator.trainable_weights, strict=True)
        )
        latent = keras.random.normal(
            (batch_size, self.latent_dim), seed=self.seed_generator
        )
        with tf.GradientTape() as tape:
            fake = self.discriminator(self.generator(latent))
            g_loss = self.loss_fn(tf.zeros((batch_size, 1)), fake)
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply_gradients(
            zip(grads, self.generator.trainable_weights, strict=True)
        )
        self.d_loss_metric.update_state(d_loss)
        self.g_loss_metric.update_state(g_loss)
        return {
            "d_loss": self.d_loss_metric.result(),
            "g_loss": self.g_loss_metric.result(),
        }


def gan_nets():
    """The discriminator and generator of the GAN tests, seeded."""
    keras.utils.set_random_seed(4)
    disc = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(4, activation="tanh", name="d1"),
            keras.layers.Dense(1, name="d2"),
        ],
        name="disc",
    )
    gen = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(6, name="g1")], name="gen"
    )
    return disc, gen


GAN_LRS = (0.05, 0.02)  # the discriminator's and the generator's SGD rates


def fit_gan(tmp_path, x, disc, gen, shuffle):
    """Fits the GAN two epochs with the callback, writing the run ``run``."""
    gan = GAN(disc, gen, latent_dim=3)
    gan.compile(
        keras.optimizers.SGD(GAN_LRS[0]),
        keras.optimizers.SGD(GAN_LRS[1]),
        keras.losses.BinaryCrossentropy(from_logits=True),
    )
    cb = GradientHealthCallback(str(tmp_path / "run"), update_freq=1, on_flag=None)
    gan.fit(x, batch_size=BATCH, epochs=2, shuffle=shuffle, verbose=0, callbacks=[cb])
    cb.close()


def test_gan_with_its_own_optimizers_records_every_variable(tmp_path):
    """Both nets of a GAN are recorded, each gradient the one its optimizer applied."""
    x, _ = data()
    disc, gen = gan_nets()
    fit_gan(tmp_path, x, disc, gen, shuffle=True)
    d_lr, g_lr = GAN_LRS
    run = read(str(tmp_path / "run"))
    grad = run.tensors["layer/grad_norm"]
    update = run.tensors["layer/update_norm"]
    assert grad.steps.tolist() == list(range(1, 9))
    paths = [v.path for v in disc.trainable_weights + gen.trainable_weights]
    assert sorted(grad.names) == sorted(paths)
    assert np.all(np.isfinite(grad.values)) and np.all(grad.values > 0)
    # Plain SGD: each update is lr times the gradient its optimizer applied.
    lrs = np.array([d_lr if p.startswith("disc/") else g_lr for p in grad.names])
    np.testing.assert_allclose(update.values, grad.values * lrs, rtol=1e-3)
    assert "step/loss" not in run.scalars
    owners = run.scalars["step/grad_norm"].content["optimizers"]
    assert sorted(owners) == ["d_optimizer", "g_optimizer"]
    assert sorted(owners["d_optimizer"]) == sorted(
        v.path for v in disc.trainable_weights
    )
    assert sorted(owners["g_optimizer"]) == sorted(
        v.path for v in gen.trainable_weights
    )


def replay_gan(x, d_lr, g_lr, epochs):
    """The GAN's train_step replayed eagerly: each optimizer's norms per step."""
    disc, gen = gan_nets()
    seed = keras.random.SeedGenerator(1337)
    loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)
    out = {"d_optimizer": [], "g_optimizer": []}

    def step(name, variables, lr, loss_of):
        with tf.GradientTape() as tape:
            loss = loss_of()
        grads = tape.gradient(loss, variables)
        before = [v.numpy().astype(np.float64) for v in variables]
        for v, g in zip(variables, grads, strict=True):
            v.assign_sub(lr * g)
        after = [v.numpy().astype(np.float64) for v in variables]
        grad = np.sqrt(sum(np.sum(g.numpy().astype(np.float64) ** 2) for g in grads))
        param = np.sqrt(sum(np.sum(a**2) for a in after))
        update = np.sqrt(
            sum(np.sum((a - b) ** 2) for a, b in zip(after, before, strict=True))
        )
        out[name].append([grad, param, update, update / param])

    for _ in range(epochs):
        for i in range(0, N, BATCH):
            real = x[i : i + BATCH]
            latent = keras.random.normal((BATCH, 3), seed=seed)
            combined = tf.concat([gen(latent), real], axis=0)
            labels = tf.concat([tf.ones((BATCH, 1)), tf.zeros((BATCH, 1))], 0)
            step(
                "d_optimizer",
                disc.trainable_weights,
                d_lr,
                lambda c=combined, t=labels: loss_fn(t, disc(c)),
            )
            latent = keras.random.normal((BATCH, 3), seed=seed)
            step(
                "g_optimizer",
                gen.trainable_weights,
                g_lr,
                lambda z=latent: loss_fn(tf.zeros((BATCH, 1)), disc(gen(z))),
            )
    return {name: np.array(rows) for name, rows in out.items()}


def test_gan_per_optimizer_norms_equal_a_gradient_tape_replay(tmp_path):
    """Each GAN optimizer's global norms per step equal a GradientTape replay."""
    x, _ = data()
    fit_gan(tmp_path, x, *gan_nets(), shuffle=False)
    expected = replay_gan(x, *GAN_LRS, epochs=2)
    run = read(str(tmp_path / "run"))
    stats = ("grad_norm", "param_norm", "update_norm", "update_ratio")
    written = {k for k in run.scalars if k.startswith("optimizer/")}
    assert written == {
        f"optimizer/{name}/{stat}" for name in expected for stat in stats
    }
    for name, rows in expected.items():
        for j, stat in enumerate(stats):
            series = run.scalars[f"optimizer/{name}/{stat}"]
            assert series.steps.tolist() == list(range(1, 9))
            np.testing.assert_allclose(
                series.values, rows[:, j], rtol=2e-4, err_msg=f"{name} {stat}"
            )
    # The whole model's norms cover both: the root of the summed squares.
    d_grad, g_grad = expected["d_optimizer"][:, 0], expected["g_optimizer"][:, 0]
    both = np.sqrt(d_grad**2 + g_grad**2)
    np.testing.assert_allclose(run.scalars["step/grad_norm"].values, both, rtol=2e-4)


class TwoOptimizers(keras.Model):
    """model.optimizer steps the head, a second optimizer of its own the base."""

    def __init__(self):
        super().__init__()
        self.base = keras.layers.Dense(5, activation="tanh", name="base")
        self.head = keras.layers.Dense(3, name="head")
        self.base_optimizer = keras.optimizers.SGD(LR / 2)

    def call(self, x):
        """The logits."""
        return self.head(self.base(x))

    def train_step(self, data):
        """Steps the head with model.optimizer, the base with its own."""
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred)
        base, head = self.base.trainable_weights, self.head.trainable_weights
        grads = tape.gradient(loss, base + head)
        self.optimizer.apply(grads[len(base) :], head)
        self.apply_base(grads[: len(base)], base)
        return self.compute_metrics(x, y, y_pred)

    def apply_base(self, grads, base):
        """Steps the base with the model's second optimizer."""
        self.base_optimizer.apply(grads, base)


def test_second_optimizer_part_is_recorded_not_zero(tmp_path):
    """The part a second optimizer steps has its true gradient, not a zero."""
    x, y = data()
    keras.utils.set_random_seed(5)
    model = TwoOptimizers()
    model(x[:1])
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=LOSS)
    expected = tape_norms(model, x[:BATCH], y[:BATCH])
    cb = GradientHealthCallback(str(tmp_path / "run"), update_freq=1, on_flag=None)
    model.fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[cb]
    )
    cb.close()
    grad = read(str(tmp_path / "run")).tensors["layer/grad_norm"]
    assert grad.steps.tolist() == [1, 2, 3, 4]
    assert sorted(grad.names) == sorted(expected)
    first = dict(zip(grad.names, grad.values[0], strict=True))
    owners = grad.content["optimizers"]
    assert owners == {
        "optimizer": [v.path for v in model.head.trainable_weights],
        "base_optimizer": [v.path for v in model.base.trainable_weights],
    }
    for path, norm in expected.items():
        np.testing.assert_allclose(first[path], norm, rtol=1e-4, err_msg=path)


def test_gradient_accumulation_records_one_point_per_applied_update(tmp_path):
    """Under accumulation a step is an update: its gradient is the batches' mean."""
    x, y = data()
    model, _ = base_and_head()
    weights = model.get_weights()
    model.compile(
        optimizer=keras.optimizers.SGD(LR, gradient_accumulation_steps=4), loss=LOSS
    )
    cb = GradientHealthCallback(str(tmp_path / "run"), update_freq=1, on_flag=None)
    log = EpochLoss()
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[cb, log],
    )
    cb.close()
    ref, _ = base_and_head()
    ref.set_weights(weights)
    expected, expected_loss = [], []
    for _ in range(3):  # one update per epoch of 4 batches
        with tf.GradientTape() as tape:
            losses = [
                LOSS(y[i : i + BATCH], ref(x[i : i + BATCH], training=True))
                for i in range(0, N, BATCH)
            ]
            loss = tf.add_n(losses) / len(losses)
        grads = tape.gradient(loss, ref.trainable_variables)
        expected.append(np.sqrt(sum(float(np.sum(g.numpy() ** 2)) for g in grads)))
        expected_loss.append(float(np.mean([float(b) for b in losses])))
        for v, g in zip(ref.trainable_variables, grads, strict=True):
            v.assign_sub(LR * g)
    run = read(str(tmp_path / "run"))
    norm = run.scalars["step/grad_norm"]
    assert norm.steps.tolist() == [1, 2, 3]
    np.testing.assert_allclose(norm.values, expected, rtol=1e-4)
    ratio = run.scalars["step/update_ratio"]
    assert ratio.steps.tolist() == [1, 2, 3] and np.all(ratio.values > 0)
    assert run.tensors["layer/grad_norm"].steps.tolist() == [1, 2, 3]
    # The update's loss is the mean over the 4 batches it applies, not the last.
    loss = run.scalars["step/loss"]
    assert loss.steps.tolist() == [1, 2, 3]
    np.testing.assert_allclose(loss.values, expected_loss, rtol=1e-5)
    # Keras's own epoch loss is the mean over the same 4 batches.
    np.testing.assert_allclose(loss.values, log.epochs, rtol=1e-5)


def test_per_output_losses_created_in_the_first_step_are_recorded_per_step(tmp_path):
    """A two-output model's a_loss/b_loss are per step, equal to Keras's values."""
    x, y = data()
    keras.utils.set_random_seed(6)
    inp = keras.Input((6,))
    h = keras.layers.Dense(4, activation="tanh")(inp)
    model = keras.Model(
        inp, {"a": keras.layers.Dense(1, name="a")(h), "b": keras.layers.Dense(2)(h)}
    )
    model.compile(
        optimizer=keras.optimizers.SGD(LR),
        loss={"a": "mse", "b": "mse"},
        loss_weights={"a": 1.0, "b": 0.5},
    )
    targets = {"a": y[:, None].astype("float32"), "b": x[:, :2]}
    names = ["a_loss", "b_loss"]
    log = ComponentLog([*names, "loss"])
    cb = GradientHealthCallback(
        str(tmp_path / "run"), update_freq=1, on_flag=None, loss_components=names
    )
    model.fit(x, targets, epochs=2, callbacks=[cb, log], **FIT)
    cb.close()
    run = read(str(tmp_path / "run"))
    # Step 1 traced the trackers into being; it has its value too.
    for name in names:
        series = run.scalars[f"loss_component/{name}"]
        assert series.steps.tolist() == list(range(1, 9)), name
        np.testing.assert_allclose(
            series.values, log.per_step(name, 4), rtol=1e-4, err_msg=name
        )
    loss = run.scalars["step/loss"]
    assert loss.steps.tolist() == list(range(1, 9))
    np.testing.assert_allclose(loss.values, log.per_step("loss", 4), rtol=1e-4)


def test_another_model_on_a_used_log_dir_gets_a_run_with_its_own_labels(tmp_path):
    """Other variables on a used log_dir go to a subfolder run, labelled right."""
    x, y = data()
    log_dir = str(tmp_path / "run")
    first, _ = base_and_head()
    first.compile(optimizer=keras.optimizers.SGD(LR), loss=LOSS)
    cb = GradientHealthCallback(log_dir, update_freq=1, on_flag=None)
    first.fit(x, y, epochs=1, callbacks=[cb], **FIT)
    keras.utils.set_random_seed(7)
    second = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(7, name="wide"), keras.layers.Dense(3)]
    )
    second.compile(optimizer=keras.optimizers.SGD(LR), loss=LOSS)
    expected = tape_norms(second, x[:BATCH], y[:BATCH])
    with pytest.warns(RuntimeWarning, match="variables-2"):
        second.fit(x, y, epochs=1, callbacks=[cb], **FIT)
    cb.close()
    other = GradientHealthCallback(log_dir, update_freq=1, on_flag=None)
    with pytest.warns(RuntimeWarning, match="variables-2"):
        second.fit(x, y, epochs=1, callbacks=[other], **FIT)
    other.close()
    run = read(log_dir)
    assert run.tensors["layer/grad_norm"].names == [
        v.path for v in first.trainable_variables
    ]
    assert run.scalars["step/loss"].steps.tolist() == [1, 2, 3, 4]
    sub = read(os.path.join(log_dir, "variables-2"))
    grad = sub.tensors["layer/grad_norm"]
    assert grad.names == [v.path for v in second.trainable_variables]
    assert grad.steps.tolist() == list(range(5, 13))
    for path, norm in expected.items():
        np.testing.assert_allclose(
            grad.values[0][grad.names.index(path)], norm, rtol=1e-4
        )


class GatedBase(TwoOptimizers):
    """Steps the base only at even steps, in a ``tf.cond`` branch."""

    def __init__(self):
        super().__init__()
        self.calls = tf.Variable(0, trainable=False)

    def apply_base(self, grads, base):
        """Steps the base at even steps only."""
        self.calls.assign_add(1)

        def step_base():
            self.base_optimizer.apply(grads, base)
            return tf.constant(True)

        tf.cond(self.calls % 2 == 0, step_base, lambda: tf.constant(False))


def test_update_in_a_conditional_branch_trains_and_is_absent_not_zero(tmp_path):
    """An optimizer stepped in a tf.cond branch: training runs, its part is absent."""
    x, y = data()
    keras.utils.set_random_seed(8)
    model = GatedBase()
    model(x[:1])
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=LOSS)
    before = model.base.kernel.numpy()
    cb = GradientHealthCallback(str(tmp_path / "run"), update_freq=1, on_flag=None)
    with pytest.warns(UserWarning, match="conditional branch"):
        model.fit(x, y, epochs=1, callbacks=[cb], **FIT)
    cb.close()
    assert not np.allclose(model.base.kernel.numpy(), before)  # the base trained
    grad = read(str(tmp_path / "run")).tensors["layer/grad_norm"]
    base = [i for i, p in enumerate(grad.names) if "/base/" in p]
    head = [i for i, p in enumerate(grad.names) if "/head/" in p]
    assert len(base) == len(head) == 2
    assert np.isnan(grad.values[:, base]).all()
    assert np.all(grad.values[:, head] > 0)


def test_nan_gradient_of_a_stepped_variable_is_nan_in_the_global_norms(tmp_path):
    """A diverged training's NaN gradients make the global norms NaN, never 0."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1))).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(5.0), loss="mse")
    logdir = str(tmp_path / "diverged")
    cb = GradientHealthCallback(logdir, update_freq=1, on_flag=None)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[cb])
    run = read(logdir)
    bad = run.scalar("step/nonfinite_grads").values > 0
    assert bad.sum() >= 10  # a long NaN tail, as SGD at lr 5 gives here
    assert not np.isfinite(run.scalar("step/grad_norm").values[bad]).any()
    assert np.isnan(run.tensor("window_layer/grad_variance").values[-1]).all()
    assert not np.isfinite(run.scalar("window/grad_variance").values[-1])
