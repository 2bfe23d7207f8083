"""`make_statistics_sync`: after it, every replica holds the mean of the replicas' BatchNorm moving statistics.

Two logical CPUs must be configured before TensorFlow starts, so the check runs in a fresh process.
"""

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import numpy as np
    import tsm_keras  # first: oneDNN as for every user
    import keras
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tsm_keras.training.step import make_statistics_sync

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        inputs = keras.Input((4, 4, 3))
        x = tsm_keras.layers.FusedBatchNormalization(momentum=0.5, name="fused")(inputs)
        x = keras.layers.BatchNormalization(momentum=0.5, name="plain")(x)
        model = keras.Model(inputs, x)
    assert make_statistics_sync(tf.distribute.get_strategy(), model) is None  # one replica: nothing to do
    sync = make_statistics_sync(strategy, model)

    rng = np.random.default_rng(0)
    shards = [rng.normal(4.0 * r, 1.0 + r, (2, 4, 4, 3)).astype(np.float32) for r in range(2)]
    batch = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(shards[context.replica_id_in_sync_group]))
    tf.function(lambda b: strategy.run(lambda x: model(x, training=True), args=(b,)))(batch)

    def per_replica():
        return {v.path: [t.numpy() for t in v.value.values] for v in model.non_trainable_variables}

    before = per_replica()
    # Each replica updated its copy from its own shard (momentum 0.5 from mean 0 / variance 1).
    fused_mean = before["fused/moving_mean"]
    for r in range(2):
        np.testing.assert_allclose(fused_mean[r], 0.5 * shards[r].mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    assert np.abs(fused_mean[0] - fused_mean[1]).min() > 1.0
    sync()
    for path, (a, b) in per_replica().items():
        expected = (before[path][0] + before[path][1]) / 2
        np.testing.assert_array_equal(a, b, err_msg=path)
        np.testing.assert_allclose(a, expected, rtol=1e-6, err_msg=path)
    print("ok", sorted(before))
""")


def test_every_replica_holds_the_mean_of_the_replicas_moving_statistics():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "ok ['fused/moving_mean', 'fused/moving_variance', 'plain/moving_mean', 'plain/moving_variance']" \
        in run.stdout, run.stdout[-2000:]
