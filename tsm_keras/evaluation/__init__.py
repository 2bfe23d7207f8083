"""Evaluation: metrics (numpy), one Evaluator (validation and `--mode=eval`, one device or every
replica), reports (JSON, per-class CSV, confusion-matrix PNG).

`python app.py --mode=eval` loads a trained model (`--weights` or `--model_dir`), runs the
validation/test list, averages the logits over `test_clips x test_crops` views per video, prints
`top1=<fraction> top5=<fraction>` and writes its reports next to the weights.
"""

from tsm_keras.evaluation.evaluator import (MAX_CLIPS_PER_FORWARD, Evaluator, distributed_metrics_function,
                                            evaluate, predict_dataset)
from tsm_keras.evaluation.metrics import average_views, compute_metrics, metrics_from_counts, topk_hits
from tsm_keras.evaluation.reports import write_confusion_png, write_reports

__all__ = ["MAX_CLIPS_PER_FORWARD", "Evaluator", "average_views", "compute_metrics", "distributed_metrics_function",
           "evaluate", "metrics_from_counts", "predict_dataset", "topk_hits", "write_confusion_png", "write_reports"]
