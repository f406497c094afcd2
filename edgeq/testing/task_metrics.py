"""Task metrics for the real-world test models (tests/models/): fidelity of a quantized output to the
float one (cosine, SQNR), and what each task cares about (top detection, CTC character error rate,
segmentation accuracy and mIoU)."""
from __future__ import annotations

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the angle between two whole tensors, flattened."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else float(np.array_equal(a, b))


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine per row (e.g. per sentence embedding) of two [N, D] arrays."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def sqnr_db(actual: np.ndarray, reference: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``actual`` against ``reference``, in dB."""
    reference = np.asarray(reference, np.float64)
    noise = np.sum((np.asarray(actual, np.float64) - reference) ** 2)
    signal = np.sum(reference ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(signal / noise))


# ----------------------------------------------------------------------------- detection

def box_iou(a, b) -> float:
    """IoU of two boxes given as (x1, y1, x2, y2)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return float(w * h / union) if union > 0 else 0.0


def top_detection(detections: np.ndarray) -> tuple:
    """The highest-scoring (class, score, xyxy box) of one YOLOv8 output [4 + classes, anchors] whose
    first four rows are (cx, cy, w, h)."""
    scores = detections[4:]
    anchor = int(scores.max(0).argmax())
    cls = int(scores[:, anchor].argmax())
    cx, cy, w, h = (float(v) for v in detections[:4, anchor])
    return cls, float(scores[cls, anchor]), (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def same_detection(a: tuple, b: tuple, min_iou: float = 0.5) -> bool:
    return a[0] == b[0] and box_iou(a[2], b[2]) >= min_iou


def top_detection_agrees(reference: np.ndarray, candidate: np.ndarray, score_resolution: float = 0.0,
                         min_iou: float = 0.5) -> bool:
    """Whether the candidate output's top detection is the reference output's top detection: the same
    class and IoU >= ``min_iou`` with a reference detection scoring within ``score_resolution`` of the
    reference's best. An int8 score cannot order detections closer than one quantization step (1/256
    for a Sigmoid output), so several reference detections that close are all "the top" one."""
    cls, _, box = top_detection(candidate)
    scores = reference[4:]
    contenders = np.flatnonzero(scores[cls] >= scores.max() - score_resolution)
    for anchor in contenders:
        cx, cy, w, h = (float(v) for v in reference[:4, anchor])
        if box_iou(box, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)) >= min_iou:
            return True
    return False


def detection_hits_ground_truth(detection: tuple, boxes: np.ndarray, classes: np.ndarray,
                                min_iou: float = 0.5) -> bool:
    """Whether a detection matches one ground-truth object (rows with class -1 are padding)."""
    return any(c == detection[0] and box_iou(detection[2], box) >= min_iou
               for box, c in zip(boxes, classes) if c >= 0)


# ----------------------------------------------------------------------------- text recognition

def ctc_greedy_decode(logits: np.ndarray, blank: int = 0) -> list:
    """Best path of one [steps, classes] CTC output: argmax per step, repeats merged, blanks dropped.
    Returns class indices minus one (class 1 + d is digit d)."""
    path = np.argmax(logits, -1)
    return [int(p) - 1 for i, p in enumerate(path) if p != blank and (i == 0 or p != path[i - 1])]


def edit_distance(a, b) -> int:
    """Levenshtein distance between two sequences."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def character_error_rate(logits: np.ndarray, labels: np.ndarray) -> float:
    """Total edit distance of greedy decodings over total reference length, for [N, steps, classes]
    outputs and [N, max_len] labels padded with -1."""
    errors = total = 0
    for sample_logits, sample_labels in zip(logits, labels):
        truth = [int(v) for v in sample_labels if v >= 0]
        errors += edit_distance(ctc_greedy_decode(sample_logits), truth)
        total += len(truth)
    return errors / max(total, 1)


# ----------------------------------------------------------------------------- segmentation

def pixel_accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(predicted == truth))


def mean_iou(predicted: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """Mean over classes present in either map of |pred ∩ truth| / |pred ∪ truth|."""
    ious = []
    for c in range(num_classes):
        p, t = predicted == c, truth == c
        union = np.count_nonzero(p | t)
        if union:
            ious.append(np.count_nonzero(p & t) / union)
    return float(np.mean(ious))
