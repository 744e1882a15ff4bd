"""Training under tf.distribute.MultiWorkerMirroredStrategy with two worker processes on
127.0.0.1: a model with DeformableConv2D and DeformablePSRoIPooling (per-image boxes), trained
with a custom loop (strategy.run), ends with the weights of the same steps in one process.
Keras' model.fit under the same strategy is tried as well, with this model and with a plain
Keras Conv2D model, and what it did is printed (README, "Distributed training")."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

_COMMON = r'''
import json, os, sys
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(2)
import keras
import tf_dcn

GLOBAL_BATCH, STEPS, LR = 4, 3, 0.05
rng = np.random.default_rng(0)
images = rng.uniform(0, 1, (GLOBAL_BATCH * STEPS, 16, 16, 3)).astype(np.float32)
x1 = rng.uniform(0, 8, (GLOBAL_BATCH * STEPS, 2, 2))
boxes = np.concatenate([x1, x1 + rng.uniform(4, 8, x1.shape)], axis=-1).astype(np.float32)
targets = rng.normal(size=(GLOBAL_BATCH * STEPS, 2, 2)).astype(np.float32)


def build_model():
    init = lambda seed: keras.initializers.GlorotUniform(seed=seed)  # noqa: E731
    image = keras.Input((16, 16, 3))
    box = keras.Input((2, 4))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu",
                            kernel_initializer=init(1))(image)
    x = tf_dcn.layers.DeformableConv2D(
        8, 3, padding="same", modulated=True, activation="relu", kernel_initializer=init(2),
        offset_kernel_initializer=keras.initializers.RandomNormal(stddev=0.01, seed=3))(x)
    maps = keras.layers.Conv2D(2 * 9, 1, kernel_initializer=init(4))(x)
    pooled = tf_dcn.layers.DeformablePSRoIPooling(
        output_dim=2, group_size=3, sample_per_part=2, spatial_scale=0.5,
        offset_kernel_initializer=keras.initializers.RandomNormal(stddev=0.01, seed=5))(
            [maps, box])                                              # [N, 2, 3, 3, 2]
    scores = keras.layers.Reshape((2, 2))(keras.layers.AveragePooling2D((1, 9))(
        keras.layers.Reshape((2, 9, 2))(pooled)))
    return keras.Model([image, box], scores)


def per_example_loss(target, prediction):
    return tf.reduce_mean(tf.square(target - prediction), axis=[1, 2])
'''

_WORKER = _COMMON + r'''
out = sys.argv[1]
strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = build_model()
    optimizer = keras.optimizers.SGD(LR)


def dataset_fn(context):
    ds = tf.data.Dataset.from_tensor_slices(((images, boxes), targets))
    ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
    return ds.batch(context.get_per_replica_batch_size(GLOBAL_BATCH))


options = tf.distribute.InputOptions(experimental_fetch_to_device=False)
data = iter(strategy.distribute_datasets_from_function(dataset_fn, options))


@tf.function
def step(batch):
    def replica_step(inputs, target):
        with tf.GradientTape() as tape:
            loss = tf.nn.compute_average_loss(per_example_loss(target, model(inputs, training=True)),
                                              global_batch_size=GLOBAL_BATCH)
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
        return loss
    return strategy.reduce("SUM", strategy.run(replica_step, args=batch), axis=None)


losses = [float(step(next(data))) for _ in range(STEPS)]


def describe(error):
    """The error's type, its first and last words (the middle can be a long repr)."""
    text = " ".join(str(error).split())
    return "%s: %s" % (type(error).__name__, text if len(text) < 240 else
                       text[:60] + " ... " + text[-170:])


result = {"losses": losses, "replicas": strategy.num_replicas_in_sync}
# model.fit under the same strategy, on a fresh model (reported, not required).
try:
    with strategy.scope():
        fit_model = build_model()
        fit_model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    ds = tf.data.Dataset.from_tensor_slices(((images, boxes), targets)).batch(GLOBAL_BATCH)
    history = fit_model.fit(ds, epochs=1, verbose=0)
    result["fit"] = "ok, loss %.6f" % history.history["loss"][0]
except Exception as error:  # noqa: BLE001
    result["fit"] = "failed: %s" % describe(error)
# The same for a plain Keras model without tf-dcn layers, to tell Keras' behaviour from ours.
try:
    with strategy.scope():
        plain = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(2, 3),
                                  keras.layers.GlobalAveragePooling2D()])
        plain.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    ds = tf.data.Dataset.from_tensor_slices((images, targets[:, 0])).batch(GLOBAL_BATCH)
    history = plain.fit(ds, epochs=1, verbose=0)
    result["plain_fit"] = "ok, loss %.6f" % history.history["loss"][0]
except Exception as error:  # noqa: BLE001
    result["plain_fit"] = "failed: %s" % describe(error)
np.savez(out, *[w.numpy() for w in model.weights])
with open(out + ".json", "w") as f:
    json.dump(result, f)
'''

_SINGLE = _COMMON + r'''
out = sys.argv[1]
model = build_model()
np.savez(out + ".initial.npz", *[w.numpy() for w in model.weights])
optimizer = keras.optimizers.SGD(LR)
losses = []
for s in range(STEPS):
    # The global batch of step s in the workers: shard w holds examples w, w + 2, ...; each
    # worker's step-s batch is 2 of them, together examples 4s .. 4s + 3.
    batch = slice(GLOBAL_BATCH * s, GLOBAL_BATCH * (s + 1))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(per_example_loss(targets[batch],
                                               model([images[batch], boxes[batch]], training=True)))
    grads = tape.gradient(loss, model.trainable_weights)
    optimizer.apply_gradients(zip(grads, model.trainable_weights))
    losses.append(float(loss))
np.savez(out, *[w.numpy() for w in model.weights])
with open(out + ".json", "w") as f:
    json.dump({"losses": losses}, f)
'''


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), **extra)
    return env


def _load(path: Path):
    with np.load(path) as data:
        weights = [data[f"arr_{i}"] for i in range(len(data.files))]
    return weights, json.loads(Path(str(path) + ".json").read_text())


def test_two_workers_match_one_process(tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(tmp_path / f"worker{index}.npz")], cwd=REPO,
            env=_env(TF_CONFIG=json.dumps(config)), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    single = subprocess.run([sys.executable, "-c", _SINGLE, str(tmp_path / "single.npz")],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stdout + single.stderr[-4000:]
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output[-4000:]

    expected, reference = _load(tmp_path / "single.npz")
    for index in range(2):
        weights, info = _load(tmp_path / f"worker{index}.npz")
        assert info["replicas"] == 2
        print(f"worker {index}: model.fit under MultiWorkerMirroredStrategy: {info['fit']}; "
              f"a plain Keras Conv2D model: {info['plain_fit']}")
        np.testing.assert_allclose(info["losses"], reference["losses"], rtol=1e-5)
        assert len(weights) == len(expected)
        for a, b in zip(weights, expected):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Every weight moved, the deformable offset branches included.
    with np.load(str(tmp_path / "single.npz") + ".initial.npz") as data:
        initial = [data[f"arr_{i}"] for i in range(len(data.files))]
    assert all(np.any(a != b) for a, b in zip(expected, initial))
