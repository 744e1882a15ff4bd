"""onnxruntime (CPU) against TensorFlow with the tf-dcn op, on the same model and inputs.

Exports a model with ``tf_dcn.export_onnx`` and times, alternating call by call in one process,
its inference in onnxruntime's CPU provider and in TensorFlow (a ``tf.function`` of the Keras
model, custom ops), both with the same number of intra-op threads. Prints the median times, the
quartiles of the paired ratios ORT / TF and the largest difference of the outputs.

    python bench/bench_onnx_cpu.py                      # DeformableResNet(50) c3-c5 DCNv2, 1x224x224
    python bench/bench_onnx_cpu.py --model block --size 56 --batch 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _model(name: str, size: int):
    import keras

    import tf_dcn

    if name == "resnet50":
        model = tf_dcn.applications.DeformableResNet(50, modulated=True, out_indices=(3,))
    else:  # one bottleneck-like block: 1x1, deformable 3x3 (v2), 1x1, at 64 channels
        inputs = keras.Input((None, None, 64))
        x = keras.layers.Conv2D(64, 1, activation="relu")(inputs)
        x = tf_dcn.layers.DeformableConv2D(64, 3, padding="same", modulated=True)(x)
        x = keras.layers.Conv2D(256, 1)(keras.layers.ReLU()(x))
        model = keras.Model(inputs, x)
    rng = np.random.default_rng(0)
    for weight in model.weights:
        if "offset" in weight.path or "mask" in weight.path:
            weight.assign(rng.normal(scale=0.02, size=weight.shape).astype("float32"))
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("resnet50", "block"), default="resnet50")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of both")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import onnxruntime as ort

    import tf_dcn

    model = _model(args.model, args.size)
    channels = model.inputs[0].shape[-1]
    images = np.random.default_rng(1).normal(
        size=(args.batch, args.size, args.size, channels)).astype("float32")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        tic = time.perf_counter()
        tf_dcn.export_onnx(model, path)
        export_seconds = time.perf_counter() - tic
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    run_tf = tf.function(lambda x: model(x, training=False))
    variable = tf.Variable(images)  # not a constant: nothing is folded away

    def tf_call():
        return np.asarray(tf.nest.flatten(run_tf(variable))[-1])

    def ort_call():
        return session.run(None, {name: images})[-1]

    reference = tf_call()
    difference = float(np.abs(reference - ort_call()).max())
    magnitude = float(np.abs(reference).max())
    for _ in range(2):  # warm-up
        tf_call(), ort_call()
    tf_times, ort_times = [], []
    for _ in range(args.repeats):
        for call, times in ((tf_call, tf_times), (ort_call, ort_times)):
            tic = time.perf_counter()
            call()
            times.append(time.perf_counter() - tic)
    ratios = np.array(ort_times) / np.array(tf_times)
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    print(f"model {args.model}, input {images.shape}, {args.threads} intra-op threads, "
          f"onnxruntime {ort.__version__}, TensorFlow {tf.__version__}")
    print(f"export_onnx: {export_seconds:.1f} s; max |ORT - TF| of the last output = "
          f"{difference:.2e} (max |TF| {magnitude:.2f}: relative {difference / magnitude:.1e})")
    print(f"TensorFlow (tf-dcn op): median {1000 * np.median(tf_times):.1f} ms")
    print(f"onnxruntime CPU:        median {1000 * np.median(ort_times):.1f} ms")
    print(f"ratio ORT / TF: median {median:.2f} (quartiles {q1:.2f}-{q3:.2f}) over "
          f"{args.repeats} paired calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
