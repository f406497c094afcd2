#!/usr/bin/env python3
"""Build tests/models/qat_cnn_qdq.onnx: a small CNN trained a few steps with PyTorch's eager-mode
quantization-aware training and exported as PyTorch exports QAT models, its fake quantization as
QuantizeLinear/DequantizeLinear pairs (activations uint8 per tensor, weights int8 per channel, the float
weights themselves behind Q and DQ). tests/test_qdq_models.py converts it without torch:

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 onnx numpy
    /tmp/torchvenv/bin/python scripts/make_qat_model.py

The model: conv 3x3 (8) + ReLU, conv 3x3 stride 2 (16) + ReLU, adaptive average pool, flatten, linear
(10), on a [1, 3, 16, 16] image. The export has no QuantizeLinear after the pool and the flatten (PyTorch's
quantized kernels keep their input's params there). Seeded; torch is needed by this script only.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.ao.quantization as tq

OUT = Path(__file__).resolve().parent.parent / "tests" / "models" / "qat_cnn_qdq.onnx"
SEED = 0


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv1, self.relu1 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()
        self.conv2, self.relu2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU()
        self.pool, self.fc = torch.nn.AdaptiveAvgPool2d(1), torch.nn.Linear(16, 10)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(self.quant(x)))))
        return self.dequant(self.fc(torch.flatten(self.pool(x), 1)))


def qat_config():
    """uint8 activations, int8 symmetric per-channel weights; plain FakeQuantize, since the fused
    observer op of the default QAT config has no ONNX export."""
    return tq.QConfig(
        activation=tq.FakeQuantize.with_args(observer=tq.MovingAverageMinMaxObserver, quant_min=0,
                                             quant_max=255, dtype=torch.quint8),
        weight=tq.FakeQuantize.with_args(observer=tq.MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                                         quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric))


def main():
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    model = Net().train()
    model.qconfig = qat_config()
    model = tq.prepare_qat(tq.fuse_modules_qat(model, [["conv1", "relu1"], ["conv2", "relu2"]]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(20):  # a few steps so the observers hold trained ranges
        x = torch.randn(8, 3, 16, 16)
        loss = (model(x) - x.mean(dim=(2, 3)).repeat(1, 4)[:, :10]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.apply(tq.disable_observer)  # the export cannot write an observer's update
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.randn(1, 3, 16, 16), str(OUT), dynamo=False, opset_version=13,
                          input_names=["x"], output_names=["y"])
    onnx.checker.check_model(onnx.load(str(OUT)), full_check=True)
    ops = [node.op_type for node in onnx.load(str(OUT)).graph.node]
    print(f"{OUT.name}: {OUT.stat().st_size:,} bytes, {ops.count('QuantizeLinear')} QuantizeLinear, "
          f"ops {sorted(set(ops))}; numpy {np.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
