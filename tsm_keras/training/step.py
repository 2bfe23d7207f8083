"""One distributed training step: forward, loss over the global batch, gradients, update, counts."""


def make_train_step(strategy, model, optimizer, global_batch, num_classes, *, label_smoothing=0.0, mixup_alpha=0.0,
                    seed=0):
    """A `tf.function` `(clips, labels) batch -> [loss sum, top-1 hits, top-5 hits, count]` summed
    over all replicas (and workers).

    The loss is the mean over the *global* batch on every replica, so the cross-replica sum of the
    gradients is the gradient of the global mean whatever the number of replicas. Under
    `mixed_float16` the optimizer scales the loss (dynamic loss scaling) and unscales the gradients.
    `label_smoothing` > 0: the loss is over smoothed targets (`training.losses`). `mixup_alpha` > 0:
    each replica mixes its clips (`training.mixup`, lam and perm from `seed`, the optimizer step and
    the replica), the loss and the hits are lam-weighted over the two label sets, as PaddleVideo's
    `BaseHead.loss`; accuracy is always over hard labels.
    """
    import tensorflow as tf

    from tsm_keras.training.losses import mixup_cross_entropy, smoothed_cross_entropy
    from tsm_keras.training.mixup import mix_clips, replica_mixup_seed, sample_mixup

    k = min(5, int(num_classes))
    num_classes = int(num_classes)

    def hits(labels, logits, top):
        return tf.cast(tf.math.in_top_k(labels, logits, top), tf.float32)

    def replica_step(clips, labels):
        labels = tf.cast(labels, tf.int32)
        if mixup_alpha:
            lam, perm = sample_mixup(tf.shape(labels)[0], mixup_alpha, replica_mixup_seed(seed, optimizer.iterations))
            clips, labels, labels_b = mix_clips(clips, labels, lam, perm)
        with tf.GradientTape() as tape:
            logits = tf.cast(model(clips, training=True), tf.float32)
            if mixup_alpha:
                per_example = mixup_cross_entropy(labels, labels_b, lam, logits, num_classes, label_smoothing)
            else:
                per_example = smoothed_cross_entropy(labels, logits, num_classes, label_smoothing)
            loss = tf.reduce_sum(per_example) / global_batch
            scaled_loss = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled_loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        top1, top5 = hits(labels, logits, 1), hits(labels, logits, k)
        if mixup_alpha:
            top1 = lam * top1 + (1.0 - lam) * hits(labels_b, logits, 1)
            top5 = lam * top5 + (1.0 - lam) * hits(labels_b, logits, k)
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return tf.reduce_sum(per_example), tf.reduce_sum(top1), tf.reduce_sum(top5), count

    @tf.function(reduce_retracing=True)
    def train_step(batch):
        clips, labels = batch
        results = strategy.run(replica_step, args=(clips, labels))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

    return train_step


def make_statistics_sync(strategy, model):
    """A `tf.function` that sets every replica's BatchNorm moving mean and variance to their mean over all
    replicas (and workers); None with one replica.

    Without `--sync_bn` each replica updates the moving statistics from its own share of the batch, and
    TensorFlow keeps one copy of these variables a replica (they are not aggregated), so the copies drift
    apart: validation on several replicas would use different statistics on each, and the weights saved (the
    first replica's) would not be the model that was validated. The loop calls it at each epoch's end and
    before each checkpoint (periodic, or written on a stop signal), on every worker at the same step (it is
    a collective). Over equal shards
    the mean of the moving means is what one device would track from the same activations; the mean of the
    moving variances leaves out the spread between the shards' means, as each per-replica variance does.
    PyTorch's DDP copies rank 0's buffers to every rank instead; the mean uses every replica's data.
    """
    if strategy.num_replicas_in_sync == 1:
        return None
    import tensorflow as tf

    from tsm_keras.training.precise_bn import batch_norm_layers

    # Frozen BatchNorms never update their statistics, so their copies cannot drift.
    variables = [variable for layer in batch_norm_layers(model)
                 for variable in (layer.moving_mean, layer.moving_variance)]
    if not variables:
        return None

    def replica_sync():
        context = tf.distribute.get_replica_context()
        # Tensors, not the variables: multi-worker all-reduces take a variable's devices as the destinations.
        values = [tf.identity(variable.value) for variable in variables]
        means = context.all_reduce(tf.distribute.ReduceOp.MEAN, values)
        for variable, mean in zip(variables, means):
            variable.assign(mean)

    @tf.function
    def sync():
        strategy.run(replica_sync)

    return sync


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
