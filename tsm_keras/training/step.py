"""One distributed training step: forward, loss over the global batch, gradients, update, counts."""


def make_train_step(strategy, model, optimizer, global_batch, num_classes):
    """A `tf.function` `(clips, labels) batch -> [loss sum, top-1 hits, top-5 hits, count]` summed
    over all replicas (and workers).

    The loss is the mean over the *global* batch on every replica, so the cross-replica sum of the
    gradients is the gradient of the global mean whatever the number of replicas. Under
    `mixed_float16` the optimizer scales the loss (dynamic loss scaling) and unscales the gradients.
    """
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    k = min(5, int(num_classes))

    def replica_step(clips, labels):
        labels = tf.cast(labels, tf.int32)
        with tf.GradientTape() as tape:
            logits = model(clips, training=True)
            per_example = loss_fn(labels, tf.cast(logits, tf.float32))
            loss = tf.reduce_sum(per_example) / global_batch
            scaled_loss = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled_loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        top1 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32))
        top5 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, k), tf.float32))
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return tf.reduce_sum(per_example), top1, top5, count

    @tf.function(reduce_retracing=True)
    def train_step(batch):
        clips, labels = batch
        results = strategy.run(replica_step, args=(clips, labels))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

    return train_step


def epoch_dataset_function(strategy, data, config, global_batch, steps_per_epoch):
    """`(epoch, skip) -> dataset` of the epoch's remaining steps (`skip` already trained on).

    A fixed number of steps per epoch keeps every worker in lockstep; the epoch's order depends only
    on seed + epoch, so a resume skips exactly the batches already seen.
    """
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync

    def epoch_dataset(epoch, skip):
        def dataset_fn(context):
            per_replica = context.get_per_replica_batch_size(global_batch)
            per_pipeline = context.num_replicas_in_sync // context.num_input_pipelines
            ds = data.build_dataset(config, "train", batch_size=per_replica, shuffle=True, repeat=True,
                                    num_shards=context.num_input_pipelines,
                                    shard_index=context.input_pipeline_id, seed=config.seed + epoch)
            return ds.skip(skip * per_pipeline).take((steps_per_epoch - skip) * per_pipeline)

        if replicas == 1 and not tf.config.list_physical_devices("GPU"):
            # One CPU replica: the dataset itself. Distributing it adds a per-device prefetch (a
            # generator dataset, warned about as "will not be optimized" every epoch) with nothing to
            # copy to. GPUs keep it: it overlaps the host-to-device copy with the step.
            return dataset_fn(tf.distribute.InputContext())
        return strategy.distribute_datasets_from_function(dataset_fn)

    return epoch_dataset
