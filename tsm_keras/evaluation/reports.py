"""Evaluation reports next to the weights: `eval_metrics.json`, `per_class_accuracy.csv`,
`confusion_matrix.png` (label names on both axes; drawn with OpenCV)."""

import csv
import json
import os

import numpy as np


def write_reports(directory, metrics, label_names, prefix=""):
    """`<prefix>eval_metrics.json`, `<prefix>per_class_accuracy.csv`, `<prefix>confusion_matrix.png`."""
    os.makedirs(directory, exist_ok=True)
    names = list(label_names) if label_names else [str(i) for i in range(len(metrics["per_class_support"]))]
    summary = {k: v for k, v in metrics.items() if k not in ("confusion",)}
    summary["label_names"] = names
    paths = dict(json=os.path.join(directory, f"{prefix}eval_metrics.json"),
                 csv=os.path.join(directory, f"{prefix}per_class_accuracy.csv"),
                 png=os.path.join(directory, f"{prefix}confusion_matrix.png"))
    with open(paths["json"], "w") as f:
        json.dump(_json_safe(summary), f, indent=2)
    confusion = metrics["confusion"]
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class_index", "class_name", "support", "correct", "accuracy",
                         "most_confused_with", "most_confused_count"])
        for i, name in enumerate(names):
            row = confusion[i].copy()
            row[i] = -1
            j = int(row.argmax())
            accuracy = metrics["per_class_accuracy"][i]
            writer.writerow([i, name, int(confusion[i].sum()), int(confusion[i, i]),
                             "" if np.isnan(accuracy) else f"{accuracy:.4f}",
                             names[j] if row[j] > 0 else "", max(int(row[j]), 0)])
    write_confusion_png(paths["png"], confusion, names)
    return paths


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_confusion_png(path, confusion, label_names, max_side=1600):
    """Row-normalized confusion matrix as a PNG (white = 0, dark blue = all of the row), true classes
    down the left, predictions along the top (rotated names), drawn with OpenCV."""
    import cv2

    confusion = np.asarray(confusion, np.float64)
    classes = confusion.shape[0]
    cell = int(np.clip(max_side // max(classes, 1), 2, 48))
    rows = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, min(0.5, max(cell - 1, 1) / 24.0)
    thickness = 1
    names = [str(n) for n in label_names]
    label_width = max(cv2.getTextSize(n, font, scale, thickness)[0][0] for n in names) + 8
    grid = classes * cell
    margin = 10
    height = margin + label_width + grid + margin + 24
    width = margin + label_width + grid + margin
    image = np.full((height, width, 3), 255, np.uint8)
    top, left = margin + label_width, margin + label_width
    # Blue ramp: white (0) -> (BGR) 120, 40, 0 (1).
    shade = rows[..., None]
    colours = (255 - shade * (255 - np.array([120.0, 40.0, 0.0]))).astype(np.uint8)
    image[top:top + grid, left:left + grid] = np.repeat(np.repeat(colours, cell, 0), cell, 1)
    if cell >= 3:
        for i in range(classes + 1):
            cv2.line(image, (left, top + i * cell), (left + grid, top + i * cell), (210, 210, 210), 1)
            cv2.line(image, (left + i * cell, top), (left + i * cell, top + grid), (210, 210, 210), 1)
    if cell >= 6:
        baseline = cell // 2 + int(cv2.getTextSize("0", font, scale, thickness)[0][1] / 2)
        for i, name in enumerate(names):
            size = cv2.getTextSize(name, font, scale, thickness)[0]
            cv2.putText(image, name, (left - size[0] - 4, top + i * cell + baseline), font, scale, (0, 0, 0),
                        thickness, cv2.LINE_AA)
        # Column names: drawn horizontally on a strip, rotated 90 degrees counter-clockwise.
        strip = np.full((grid, label_width, 3), 255, np.uint8)
        for j, name in enumerate(names):
            cv2.putText(strip, name, (4, j * cell + baseline), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
        image[margin:margin + label_width, left:left + grid] = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
        if cell >= 20:
            for i in range(classes):
                for j in range(classes):
                    if confusion[i, j]:
                        text = str(int(confusion[i, j]))
                        colour = (255, 255, 255) if rows[i, j] > 0.5 else (0, 0, 0)
                        size = cv2.getTextSize(text, font, scale * 0.8, thickness)[0]
                        cv2.putText(image, text, (left + j * cell + (cell - size[0]) // 2,
                                                  top + i * cell + (cell + size[1]) // 2),
                                    font, scale * 0.8, colour, thickness, cv2.LINE_AA)
    cv2.putText(image, "rows: true class, columns: predicted (row-normalized)", (margin, height - 8),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    if not cv2.imwrite(path, image):
        raise OSError(f"could not write {path}")
    return path
