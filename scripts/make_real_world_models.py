#!/usr/bin/env python3
"""Build four small "real-world" architectures in PyTorch, train them briefly on synthetic data, and
export them to ONNX with dynamic axes, so the converter meets the patterns of real exported models:
shape arithmetic (Shape/Gather/Concat/Reshape chains), layout moves, and int8-hostile output tails.

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 onnx numpy onnxruntime scikit-learn
    /tmp/torchvenv/bin/pip install -e .   # edgeq.testing: the export, the task metrics
    /tmp/torchvenv/bin/python scripts/make_real_world_models.py      # writes tests/models/

    yolo_detector   [B, 3, H, W] image in [0, 1]  -> [B, 4 + 3, anchors]: boxes (cx, cy, w, h) in
                    pixels and class probabilities, as YOLOv8 exports it (DFL head, Sigmoid scores)
    crnn_text       [B, 1, 32, W] grey text line in [0, 1] -> [B, W / 4, 11] CTC logits (0 = blank)
    unet_segmenter  [B, 3, H, W] image in [0, 1]  -> [B, 3, H, W] per-pixel class logits
    bert_encoder    input_ids, attention_mask [B, S] int64 -> [B, 32] mean-pooled sentence embedding

Each model gets tests/models/<name>.onnx and tests/models/<name>_data.npz holding calibration inputs
(key calib_<input name>), evaluation inputs (eval_<input name>) and the evaluation targets; images
are stored as uint8 (divide by 255 to get the model input) to keep the files small.

Everything is seeded and torch runs deterministic algorithms on one thread. Torch is needed by this
script only; edgeq imports it only inside edgeq.testing.model_export's export and readme.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeq.testing.model_export import OUT_DIR, export, from_uint8, readme, to_uint8
# The task metrics the tests use (plain numpy), so the README's float figures are measured alike.
from edgeq.testing.task_metrics import box_iou, character_error_rate

SEED = 0
CALIB_SAMPLES = 32
EVAL_SAMPLES = 64


def seed_everything(seed: int = SEED) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def conv_bn(c_in, c_out, k=3, s=1, act=None):
    """Conv (no bias) + BatchNorm + activation, the unit of every CNN here."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out),
                         act if act is not None else nn.SiLU())


def train(model, batches, epochs, lr, loss_fn, name):
    """AdamW with a one-cycle schedule over ``batches()`` (a fresh list of tensors per epoch)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * len(batches(0))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    start = time.time()
    model.train()
    for epoch in range(epochs):
        total, count = 0.0, 0
        for batch in batches(epoch):
            loss = loss_fn(model, *batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + loss.item(), count + 1
        print(f"  {name} epoch {epoch + 1}/{epochs}: loss {total / count:.4f} ({time.time() - start:.0f} s)")
    model.eval()


def batched(arrays, batch_size, rng):
    order = rng.permutation(len(arrays[0]))
    return [tuple(torch.from_numpy(a[order[i:i + batch_size]]) for a in arrays)
            for i in range(0, len(order), batch_size)]


# ============================================================================ (a) YOLOv8-style detector

DET_SIZE = 64
DET_CLASSES = 3  # red, green, blue objects (rectangles or ellipses)
DET_COLOURS = np.array([[0.85, 0.15, 0.15], [0.15, 0.75, 0.2], [0.15, 0.25, 0.9]], np.float32)
REG_MAX = 8
DET_STRIDES = (8, 16)


def draw_objects(rng, size, count, colours, class_of):
    """An image with ``count`` non-overlapping rectangles/ellipses on a smooth grey gradient.

    ``class_of(rng)`` picks each object's class; with ``colours`` the class sets the colour and the
    shape is random, without them the class sets the shape (0 rectangle, 1 ellipse) and the colour
    is random. Returns (image [3, size, size] in [0, 1], boxes [count, 4] xyxy pixels, classes
    [count], mask [size, size] with class + 1 per pixel, 0 background)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    level = rng.uniform(0.35, 0.65)
    gradient = rng.uniform(-0.15, 0.15, 2)
    background = level + gradient[0] * (xx / size - 0.5) + gradient[1] * (yy / size - 0.5)
    image = np.repeat(background[None], 3, 0)
    mask = np.zeros((size, size), np.int64)
    boxes, classes = [], []
    for _ in range(50):  # rejection sampling for non-overlapping boxes
        if len(boxes) == count:
            break
        w, h = rng.integers(size // 6, size // 2, 2)
        x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
        box = np.array([x0, y0, x0 + w, y0 + h], np.float32)
        if any(overlap(box, b) for b in boxes):
            continue
        kind = class_of(rng)
        shape_is_ellipse = rng.random() < 0.5 if colours is not None else kind == 1
        if shape_is_ellipse:
            cx, cy = x0 + w / 2, y0 + h / 2
            inside = ((xx + 0.5 - cx) / (w / 2)) ** 2 + ((yy + 0.5 - cy) / (h / 2)) ** 2 <= 1
        else:
            inside = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
        colour = (np.clip(colours[kind] + rng.uniform(-0.12, 0.12, 3), 0, 1) if colours is not None
                  else distinct_colour(rng, background))
        image[:, inside] = colour[:, None]
        mask[inside] = kind + 1
        boxes.append(box)
        classes.append(kind)
    return image.astype(np.float32), np.array(boxes, np.float32).reshape(-1, 4), np.array(classes), mask


def distinct_colour(rng, background):
    """A random colour at least 0.25 away from the background's mean grey in some channel."""
    while True:
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        if np.max(np.abs(colour - background.mean())) > 0.25:
            return colour


def overlap(a, b, margin=2):
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def detection_dataset(rng, n):
    images, boxes, classes = [], [], []
    for _ in range(n):
        image, b, c, _ = draw_objects(rng, DET_SIZE, rng.integers(1, 4), DET_COLOURS,
                                      lambda r: int(r.integers(DET_CLASSES)))
        padded_boxes = np.full((3, 4), -1, np.float32)
        padded_classes = np.full(3, -1, np.int64)
        padded_boxes[:len(b)], padded_classes[:len(c)] = b, c
        images.append(image), boxes.append(padded_boxes), classes.append(padded_classes)
    return np.stack(images), np.stack(boxes), np.stack(classes)


class Bottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cv1, self.cv2 = conv_bn(c, c), conv_bn(c, c)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8's C2f: 1x1 conv, split in two halves, bottlenecks on the second, concat all, 1x1 conv."""

    def __init__(self, c_in, c_out, n=1):
        super().__init__()
        self.c = c_out // 2
        self.cv1 = conv_bn(c_in, 2 * self.c, 1)
        self.cv2 = conv_bn((2 + n) * self.c, c_out, 1)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss integral: softmax over REG_MAX bins, then a 1x1 conv with weights
    0..REG_MAX-1 takes the expectation, exactly as ultralytics writes it."""

    def __init__(self, bins=REG_MAX):
        super().__init__()
        self.bins = bins
        self.conv = nn.Conv2d(bins, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(bins, dtype=torch.float32).view(1, bins, 1, 1)

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.bins, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(feats, strides, offset=0.5):
    """Anchor centres (grid units) and strides from the feature maps' shapes: under dynamic axes this
    exports as Shape/Gather/Range arithmetic, as in ultralytics."""
    points, stride_list = [], []
    for feat, stride in zip(feats, strides):
        h, w = feat.shape[2:]
        sx = torch.arange(w, dtype=feat.dtype) + offset
        sy = torch.arange(h, dtype=feat.dtype) + offset
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_list.append(torch.full((h * w, 1), stride, dtype=feat.dtype))
    return torch.cat(points).transpose(0, 1), torch.cat(stride_list).transpose(0, 1)


class YoloDetector(nn.Module):
    def __init__(self, nc=DET_CLASSES):
        super().__init__()
        self.nc = nc
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), conv_bn(16, 32, 3, 2), C2f(32, 32))  # stride 4
        self.down3 = nn.Sequential(conv_bn(32, 48, 3, 2), C2f(48, 48))  # stride 8
        self.down4 = nn.Sequential(conv_bn(48, 64, 3, 2), C2f(64, 64))  # stride 16
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.neck3 = C2f(64 + 48, 48)
        self.box_heads = nn.ModuleList(
            nn.Sequential(conv_bn(c, 32), conv_bn(32, 32), nn.Conv2d(32, 4 * REG_MAX, 1)) for c in (48, 64))
        self.cls_heads = nn.ModuleList(
            nn.Sequential(conv_bn(c, 32), conv_bn(32, 32), nn.Conv2d(32, nc, 1)) for c in (48, 64))
        self.dfl = DFL()
        for head in self.cls_heads:  # YOLO's prior: objects are rare, start class scores near 0.01
            nn.init.constant_(head[-1].bias, -4.6)

    def raw(self, x):
        p3 = self.down3(self.stem(x))
        p4 = self.down4(p3)
        n3 = self.neck3(torch.cat((self.up(p4), p3), 1))
        feats = (n3, p4)
        b = x.shape[0]
        box = torch.cat([h(f).view(b, 4 * REG_MAX, -1) for h, f in zip(self.box_heads, feats)], 2)
        cls = torch.cat([h(f).view(b, self.nc, -1) for h, f in zip(self.cls_heads, feats)], 2)
        anchors, strides = make_anchors(feats, DET_STRIDES)
        return box, cls, anchors, strides

    def forward(self, x):
        box, cls, anchors, strides = self.raw(x)
        lt, rb = self.dfl(box).chunk(2, 1)
        x1y1, x2y2 = anchors - lt, anchors + rb
        boxes = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides  # cx, cy, w, h in pixels
        return torch.cat((boxes, cls.sigmoid()), 1)


def detection_loss(model, images, gt_boxes, gt_classes):
    """Each anchor whose centre lies inside a ground-truth box learns that box (the smallest one if
    several): DFL cross-entropy + L1 on the four distances, and BCE on class scores whose target is
    the IoU of the predicted box with its ground truth (as YOLOv8's task-aligned targets), so scores
    say how well a box fits rather than saturating at 1."""
    box, cls, anchors, strides = model.raw(images)
    centres = (anchors * strides).T  # [A, 2] pixels
    stride = strides[0]  # [A]
    b, _, a = box.shape
    valid = gt_classes >= 0  # [B, G]
    x, y = centres[:, 0][None, None], centres[:, 1][None, None]  # [1, 1, A]
    gb = gt_boxes[..., None]  # [B, G, 4, 1]
    inside = (x > gb[:, :, 0]) & (x < gb[:, :, 2]) & (y > gb[:, :, 1]) & (y < gb[:, :, 3]) & valid[..., None]
    area = ((gt_boxes[..., 2] - gt_boxes[..., 0]) * (gt_boxes[..., 3] - gt_boxes[..., 1]))[..., None]
    cost = torch.where(inside, area, torch.full_like(area.expand_as(inside), 1e9))
    best = cost.argmin(1)  # [B, A]
    positive = inside.any(1)  # [B, A]
    assigned_box = torch.gather(gt_boxes, 1, best[..., None].expand(b, a, 4))[positive]  # [P, 4]
    assigned_class = torch.gather(gt_classes, 1, best)[positive]  # [P]
    num_pos = positive.sum().clamp(min=1)
    pos_centres = centres[None].expand(b, a, 2)[positive]  # [P, 2]
    pos_stride = stride[None, :, None].expand(b, a, 1)[positive]  # [P, 1]
    ltrb = torch.cat((pos_centres - assigned_box[:, :2], assigned_box[:, 2:] - pos_centres), -1)
    target = (ltrb / pos_stride).clamp(0, REG_MAX - 1.01)  # [P, 4] in bins
    logits = box.view(b, 4, REG_MAX, a).permute(0, 3, 1, 2)[positive]  # [P, 4, REG_MAX]
    left = target.floor().long()
    weight_right = target - left
    log_p = logits.log_softmax(-1)
    dfl = -(log_p.gather(-1, left[..., None])[..., 0] * (1 - weight_right)
            + log_p.gather(-1, (left + 1)[..., None])[..., 0] * weight_right)
    expected = (log_p.exp() * torch.arange(REG_MAX, dtype=torch.float32)).sum(-1)  # [P, 4]
    box_loss = (dfl.sum() + (expected - target).abs().sum()) / num_pos
    predicted = torch.cat((pos_centres - expected[:, :2] * pos_stride, pos_centres + expected[:, 2:] * pos_stride), -1)
    target_cls = torch.zeros_like(cls.transpose(1, 2))  # [B, A, classes]
    fit = iou_torch(predicted, assigned_box).detach()
    target_cls[positive] = F.one_hot(assigned_class, model.nc).float() * fit[:, None]
    cls_loss = F.binary_cross_entropy_with_logits(cls.transpose(1, 2), target_cls, reduction="sum") / num_pos
    return cls_loss + box_loss


def iou_torch(a, b):
    """IoU of matching rows of two [N, 4] xyxy box tensors."""
    w = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    h = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - w * h
    return w * h / union.clamp(min=1e-6)


def build_detector(rng):
    images, boxes, classes = detection_dataset(rng, 2000)
    model = YoloDetector()
    train(model, lambda epoch: batched((images, boxes, classes), 32, rng), epochs=12, lr=4e-3,
          loss_fn=detection_loss, name="yolo_detector")
    calib, _, _ = detection_dataset(rng, CALIB_SAMPLES)
    eval_images, eval_boxes, eval_classes = detection_dataset(rng, EVAL_SAMPLES)
    data = {"calib_images": to_uint8(calib), "eval_images": to_uint8(eval_images),
            "eval_boxes": eval_boxes, "eval_classes": eval_classes}
    dummy = torch.from_numpy(from_uint8(data["eval_images"][:1]))
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "detections": {0: "batch", 2: "anchors"}}
    return model, (dummy,), ["images"], ["detections"], axes, data


# ============================================================================ (b) CRNN text recogniser

TEXT_HEIGHT, TEXT_WIDTH = 32, 128
TEXT_CLASSES = 11  # 0 = CTC blank, 1 + d = digit d
MAX_DIGITS = 5


def load_digit_images():
    """scikit-learn's digits split as sample_models/ splits them: train images build the training
    and calibration strings, test images (sample_models/digits_cnn_test.npz) the evaluation strings."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.25, random_state=0, stratify=digits.target)
    return (x_train, y_train), (x_test, y_test)


def render_text_line(rng, digit_images, digit_labels):
    """3..5 digits, each scaled to 18..26 x 14..20 pixels with its own ink level, placed left to right
    with random gaps (touching or slightly overlapping at times) and vertical jitter, on a dark
    background of random level with pixel noise: hard enough that the float model makes a few errors."""
    canvas = np.zeros((TEXT_HEIGHT, TEXT_WIDTH), np.float32)
    count = int(rng.integers(3, MAX_DIGITS + 1))
    x = int(rng.integers(0, 8))
    labels = []
    for _ in range(count):
        h, w = int(rng.integers(18, 27)), int(rng.integers(14, 21))
        if x + w > TEXT_WIDTH:
            break
        index = int(rng.integers(len(digit_images)))
        glyph = F.interpolate(torch.from_numpy(digit_images[index])[None, None], size=(h, w),
                              mode="bilinear", align_corners=False)[0, 0].numpy()
        y = int(rng.integers(0, TEXT_HEIGHT - h + 1))
        canvas[y:y + h, x:x + w] = np.maximum(canvas[y:y + h, x:x + w], glyph * rng.uniform(0.45, 1.0))
        labels.append(int(digit_labels[index]))
        x += w + int(rng.integers(-4, 4))
    canvas = np.clip(canvas + rng.uniform(0, 0.25) + rng.normal(0, 0.08, canvas.shape), 0, 1).astype(np.float32)
    padded = np.full(MAX_DIGITS, -1, np.int64)
    padded[:len(labels)] = labels
    return canvas[None], padded


def text_dataset(rng, digits, n):
    lines = [render_text_line(rng, *digits) for _ in range(n)]
    return np.stack([l[0] for l in lines]), np.stack([l[1] for l in lines])


class CRNN(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        relu = nn.ReLU
        self.cnn = nn.Sequential(
            conv_bn(1, 16, act=relu()), nn.MaxPool2d(2),  # 16 x W/2
            conv_bn(16, 32, act=relu()), nn.MaxPool2d(2),  # 8 x W/4
            conv_bn(32, 64, act=relu()), nn.MaxPool2d((2, 1)),  # 4 x W/4
            nn.Conv2d(64, 64, (4, 1), bias=False), nn.BatchNorm2d(64), relu())  # 1 x W/4
        self.rnn = nn.LSTM(64, hidden, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(2 * hidden, TEXT_CLASSES)

    def forward(self, x):
        features = self.cnn(x)
        b, c, h, w = features.shape
        sequence = features.reshape(b, c * h, w).permute(0, 2, 1)  # [B, T, C]
        return self.fc(self.rnn(sequence)[0])  # [B, T, classes]


def ctc_loss(model, images, labels):
    log_probs = model(images).log_softmax(-1).permute(1, 0, 2)  # [T, B, C]
    lengths = (labels >= 0).sum(1)
    targets = labels[labels >= 0] + 1
    input_lengths = torch.full((len(images),), log_probs.shape[0], dtype=torch.long)
    return F.ctc_loss(log_probs, targets, input_lengths, lengths, blank=0, zero_infinity=True)


def build_crnn(rng):
    (x_train, y_train), (x_test, y_test) = load_digit_images()
    images, labels = text_dataset(rng, (x_train, y_train), 3000)
    model = CRNN()
    train(model, lambda epoch: batched((images, labels), 32, rng), epochs=8, lr=5e-3,
          loss_fn=ctc_loss, name="crnn_text")
    calib, _ = text_dataset(rng, (x_train, y_train), CALIB_SAMPLES)
    eval_images, eval_labels = text_dataset(rng, (x_test, y_test), EVAL_SAMPLES)
    data = {"calib_images": to_uint8(calib), "eval_images": to_uint8(eval_images), "eval_labels": eval_labels}
    dummy = torch.from_numpy(from_uint8(data["eval_images"][:1]))
    axes = {"images": {0: "batch", 3: "width"}, "logits": {0: "batch", 1: "steps"}}
    return model, (dummy,), ["images"], ["logits"], axes, data


# ============================================================================ (c) U-Net segmenter

SEG_SIZE = 64
SEG_CLASSES = 3  # background, rectangles, ellipses (any colour)


def segmentation_dataset(rng, n):
    images, masks = [], []
    for _ in range(n):
        image, _, _, mask = draw_objects(rng, SEG_SIZE, rng.integers(1, 4), None,
                                         lambda r: int(r.integers(2)))
        images.append(image), masks.append(mask)
    return np.stack(images), np.stack(masks)


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        relu = nn.ReLU

        def block(c_in, c_out):
            return nn.Sequential(conv_bn(c_in, c_out, act=relu()), conv_bn(c_out, c_out, act=relu()))

        self.enc1, self.enc2, self.bottom = block(3, 16), block(16, 32), block(32, 64)
        self.up1 = nn.ConvTranspose2d(64, 32, 2, 2)
        self.dec1 = block(64, 32)
        self.up2_proj = nn.Conv2d(32, 16, 1)
        self.dec2 = block(32, 16)
        self.head = nn.Conv2d(16, SEG_CLASSES, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        bottom = self.bottom(F.max_pool2d(e2, 2))
        d1 = self.dec1(torch.cat((self.up1(bottom), e2), 1))
        # resized to the skip's size, as U-Nets write it so odd sizes still line up: under dynamic
        # axes this exports as Shape/Slice/Concat feeding Resize's sizes
        up2 = self.up2_proj(F.interpolate(d1, size=e1.shape[2:], mode="bilinear", align_corners=False))
        return self.head(self.dec2(torch.cat((up2, e1), 1)))


def build_unet(rng):
    images, masks = segmentation_dataset(rng, 960)
    model = UNet()
    train(model, lambda epoch: batched((images, masks), 32, rng), epochs=6, lr=5e-3,
          loss_fn=lambda m, x, y: F.cross_entropy(m(x), y), name="unet_segmenter")
    calib, _ = segmentation_dataset(rng, CALIB_SAMPLES)
    eval_images, eval_masks = segmentation_dataset(rng, EVAL_SAMPLES)
    data = {"calib_images": to_uint8(calib), "eval_images": to_uint8(eval_images),
            "eval_masks": eval_masks.astype(np.uint8)}
    dummy = torch.from_numpy(from_uint8(data["eval_images"][:1]))
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    return model, (dummy,), ["images"], ["logits"], axes, data


# ============================================================================ (d) BERT-style encoder

VOCAB, HIDDEN, HEADS, FFN, LAYERS, MAX_POSITIONS, SEQ_LEN = 100, 32, 4, 64, 2, 32, 16


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(HIDDEN, HIDDEN) for _ in range(4))
        self.head_size = HIDDEN // HEADS

    def split_heads(self, x):  # [B, S, hidden] -> [B, heads, S, head_size], as HF BERT writes it
        return x.view(x.size()[:-1] + (HEADS, self.head_size)).permute(0, 2, 1, 3)

    def forward(self, h, additive_mask):
        q, k, v = self.split_heads(self.q(h)), self.split_heads(self.k(h)), self.split_heads(self.v(h))
        scores = torch.matmul(q, k.transpose(-1, -2)) / self.head_size ** 0.5 + additive_mask
        context = torch.matmul(scores.softmax(-1), v).permute(0, 2, 1, 3).contiguous()
        return self.out(context.view(context.size()[:-2] + (HIDDEN,)))


class EncoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = SelfAttention()
        self.norm1, self.norm2 = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)
        self.ffn = nn.Sequential(nn.Linear(HIDDEN, FFN), nn.GELU(), nn.Linear(FFN, HIDDEN))  # exact erf GELU

    def forward(self, h, additive_mask):
        h = self.norm1(h + self.attention(h, additive_mask))
        return self.norm2(h + self.ffn(h))


class BertEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, HIDDEN)
        self.positions = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.register_buffer("position_ids", torch.arange(MAX_POSITIONS)[None], persistent=False)
        self.norm = nn.LayerNorm(HIDDEN)
        self.layers = nn.ModuleList(EncoderLayer() for _ in range(LAYERS))

    def forward(self, input_ids, attention_mask):
        positions = self.position_ids[:, :input_ids.shape[1]]
        h = self.norm(self.tokens(input_ids) + self.positions(positions))
        mask = attention_mask.to(h.dtype)
        additive_mask = (1.0 - mask[:, None, None, :]) * -10000.0
        for layer in self.layers:
            h = layer(h, additive_mask)
        weights = mask[..., None]
        return (h * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def token_dataset(rng, n):
    """Random sentences of 4..16 tokens (ids 1..99), padded with 0 to SEQ_LEN, and their masks."""
    ids = rng.integers(1, VOCAB, (n, SEQ_LEN)).astype(np.int64)
    lengths = rng.integers(4, SEQ_LEN + 1, n)
    mask = (np.arange(SEQ_LEN)[None] < lengths[:, None]).astype(np.int64)
    return ids * mask, mask


def build_bert(rng):
    model = BertEncoder().eval()  # random weights: the metric is the embedding's fidelity
    calib_ids, calib_mask = token_dataset(rng, CALIB_SAMPLES)
    eval_ids, eval_mask = token_dataset(rng, EVAL_SAMPLES)
    data = {"calib_input_ids": calib_ids, "calib_attention_mask": calib_mask,
            "eval_input_ids": eval_ids, "eval_attention_mask": eval_mask}
    dummy = (torch.from_numpy(eval_ids[:1]), torch.from_numpy(eval_mask[:1]))
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "embedding": {0: "batch"}}
    return model, dummy, ["input_ids", "attention_mask"], ["embedding"], axes, data


# ============================================================================ export and checks

BUILDERS = {"yolo_detector": build_detector, "crnn_text": build_crnn, "unet_segmenter": build_unet,
            "bert_encoder": build_bert}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(BUILDERS), help="subset of " + ", ".join(BUILDERS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    manifest_path = OUT_DIR / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name in args.models:
        seed_everything()
        rng = np.random.default_rng(SEED)
        start = time.time()
        model, dummy, input_names, output_names, axes, data = BUILDERS[name](rng)
        facts = export(name, model, dummy, input_names, output_names, axes, data)
        facts["float_metric"] = float_task_metric(name, facts.pop("outputs")[0], data)
        facts["inputs"] = {n: [axes[n].get(i, d) for i, d in enumerate(dummy[k].shape)]
                           for k, n in enumerate(input_names)}
        facts["data_keys"] = {k: list(v.shape) for k, v in data.items()}
        manifest[name] = facts
        print(f"{name}: {facts['params']:,} parameters, ONNX {facts['bytes']:,} bytes, data "
              f"{facts['data_bytes']:,} bytes, onnxruntime vs torch {facts['onnx_vs_torch']:.1e}, "
              f"{time.time() - start:.0f} s\n  ops: {', '.join(facts['ops'])}\n  float: {facts['float_metric']}")
    # Entries of other builders (scripts/make_hf_models.py) are kept, after these.
    manifest = {**{name: manifest[name] for name in BUILDERS if name in manifest},
                **{name: facts for name, facts in manifest.items() if name not in BUILDERS}}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    (OUT_DIR / "README.md").write_text(readme(manifest))


def float_task_metric(name, output, data) -> str:
    """The float model's own quality on the evaluation set, for the README."""
    if name == "yolo_detector":
        hits = 0
        for detections, boxes, classes in zip(output, data["eval_boxes"], data["eval_classes"]):
            anchor = detections[4:].max(0).argmax()
            cls = int(detections[4:, anchor].argmax())
            cx, cy, w, h = detections[:4, anchor]
            top = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            hits += any(c == cls and box_iou(top, b) >= 0.5 for b, c in zip(boxes, classes) if c >= 0)
        return f"top detection matches a ground-truth object (class, IoU >= 0.5) in {hits / len(output):.1%}"
    if name == "crnn_text":
        return f"greedy CTC character error rate {character_error_rate(output, data['eval_labels']):.2%}"
    if name == "unet_segmenter":
        predicted = output.argmax(1)
        return f"pixel accuracy {np.mean(predicted == data['eval_masks']):.2%}"
    return "random weights; embedding norm mean %.3f" % float(np.linalg.norm(output, axis=1).mean())


if __name__ == "__main__":
    main()
