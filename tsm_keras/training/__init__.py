"""Training: the loop (`loop.train`), Paddle's optimizer recipe, schedules, checkpoints, strategies, precision."""
