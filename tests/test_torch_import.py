"""PyTorch in: nn.Modules, exported programs, .pt2 and TorchScript files convert straight to .tflite, with
outputs that match PyTorch's (float within 1e-5 relative) and an int8 path that is the ONNX one."""
from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeq.cli import main
from edgeq.converter import convert
from edgeq.runtime.ir import ModelError
from edgeq.testing.referees import integer_tensor_mismatches, nchw_to_nhwc, relative_max_error, run_edgeq, run_litert

if os.environ.get("CI"):
    import torch  # the test extra pins it: in CI a missing torch is a failure, not a skip
else:
    torch = pytest.importorskip("torch")
nn = torch.nn

FLOAT_TOLERANCE = 1e-5


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(x + self.bn2(self.conv2(y)))


class TinyResNet(nn.Module):
    """A torchvision-style classifier: conv-BN-ReLU stem, max pool, a residual block, global pool, linear."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        self.layer1 = BasicBlock(16)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.layer1(self.stem(x))), 1))


class SelfAttention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.dense = nn.Linear(width, width)

    def split_heads(self, x):
        batch, tokens, width = x.shape
        return x.view(batch, tokens, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x, mask_bias):
        q, k, v = self.split_heads(self.query(x)), self.split_heads(self.key(x)), self.split_heads(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask_bias
        context = torch.softmax(scores, dim=-1) @ v
        batch, heads, tokens, head_width = context.shape
        return self.dense(context.transpose(1, 2).reshape(batch, tokens, heads * head_width))


class EncoderLayer(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.attention = SelfAttention(width, heads)
        self.attention_norm = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.output_norm = nn.LayerNorm(width)

    def forward(self, x, mask_bias):
        x = self.attention_norm(x + self.attention(x, mask_bias))
        return self.output_norm(x + self.ffn(x))


class TinyEncoder(nn.Module):
    """A Hugging Face BERT-style encoder: token and position embeddings, post-norm layers with masked
    multi-head attention and a GELU feed-forward, and a dict of outputs as a ModelOutput holds them."""

    def __init__(self, vocab=100, width=32, heads=4, tokens=16, layers=2):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, width)
        self.position_embeddings = nn.Embedding(tokens, width)
        self.embedding_norm = nn.LayerNorm(width)
        self.layers = nn.ModuleList(EncoderLayer(width, heads) for _ in range(layers))
        self.pooler = nn.Linear(width, width)

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(input_ids.shape[1])
        x = self.embedding_norm(self.word_embeddings(input_ids) + self.position_embeddings(positions))
        mask_bias = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        for layer in self.layers:
            x = layer(x, mask_bias)
        return {"last_hidden_state": x, "pooler_output": torch.tanh(self.pooler(x[:, 0]))}


def trained_like(module: nn.Module, seed: int) -> nn.Module:
    """Random weights, and BatchNorm statistics that are not the identity (as after training)."""
    torch.manual_seed(seed)
    for child in module.modules():
        if isinstance(child, nn.BatchNorm2d):
            child.running_mean.uniform_(-0.5, 0.5)
            child.running_var.uniform_(0.5, 2.0)
            child.weight.data.uniform_(0.5, 1.5)
            child.bias.data.uniform_(-0.2, 0.2)
    return module.eval()


@pytest.fixture(scope="module")
def resnet():
    return trained_like(TinyResNet(), 0)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(16, 3, 32, 32)


@pytest.fixture(scope="module")
def encoder():
    return trained_like(TinyEncoder(), 2)


@pytest.fixture(scope="module")
def tokens():
    torch.manual_seed(3)
    input_ids = torch.randint(0, 100, (1, 16))
    attention_mask = torch.ones(1, 16, dtype=torch.int64)
    attention_mask[0, 11:] = 0
    return input_ids, attention_mask


def torch_outputs(module, *inputs) -> list:
    with torch.no_grad():
        outputs = module(*inputs)
    if isinstance(outputs, dict):
        return [value.numpy() for value in outputs.values()]
    return [outputs.numpy()]


def test_a_torchvision_style_cnn_converts_from_its_module_and_matches_pytorch(resnet, images):
    x = images[:1]
    result = convert(resnet, example_inputs=(x,))
    assert [(t.name, t.shape) for t in result.inputs] == [("x", (1, 32, 32, 3))]  # NHWC, named after forward's x
    (expected,) = torch_outputs(resnet, x)
    (ours,) = run_edgeq(result.content, [nchw_to_nhwc(x.numpy())])
    (litert,) = run_litert(result.content, [nchw_to_nhwc(x.numpy())])
    assert relative_max_error(ours, expected) < FLOAT_TOLERANCE
    assert relative_max_error(litert, expected) < FLOAT_TOLERANCE
    assert "TRANSPOSE" not in {op.type for op in result.graph.ops}


def test_a_hugging_face_style_encoder_converts_from_its_module_and_matches_pytorch(encoder, tokens):
    result = convert(encoder, example_inputs=tokens)
    assert [t.name for t in result.inputs] == ["input_ids", "attention_mask"]
    assert [t.name for t in result.outputs] == ["last_hidden_state", "pooler_output"]
    feeds = [t.numpy() for t in tokens]
    expected = torch_outputs(encoder, *tokens)
    for ours, litert, want in zip(run_edgeq(result.content, feeds), run_litert(result.content, feeds), expected):
        assert relative_max_error(ours, want) < FLOAT_TOLERANCE
        assert relative_max_error(litert, want) < FLOAT_TOLERANCE


def export_onnx_file(module, inputs, path: Path, input_names, output_names) -> Path:
    """The ONNX file a user would export by hand, with the settings the importer is tested with."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=17, input_names=input_names,
                          output_names=output_names, do_constant_folding=True)
    return path


def test_int8_from_the_module_is_the_int8_file_from_its_onnx_export(resnet, images, tmp_path):
    x = images[:1]
    calibration = images.numpy()
    onnx_file = export_onnx_file(resnet, (x,), tmp_path / "resnet.onnx", ["x"], ["output"])
    from_module = convert(resnet, example_inputs=(x,), quantize="int8", calibration=calibration)
    from_onnx = convert(str(onnx_file), quantize="int8", calibration=calibration)
    assert from_module.content == from_onnx.content
    mismatches = integer_tensor_mismatches(from_module.content, [nchw_to_nhwc(x.numpy())])
    assert mismatches and not any(mismatches.values())


def test_int8_encoder_from_its_module_gives_litert_reference_integers(encoder, tokens):
    samples = ((torch.randint(0, 100, (1, 16)), torch.ones(1, 16, dtype=torch.int64)) for _ in range(8))
    result = convert(encoder, example_inputs=tokens, quantize="int8", calibration=samples)
    assert "FULLY_CONNECTED" in {op.type for op in result.graph.ops}
    int8_weights = [t for t in result.graph.tensors.values() if t.is_constant and t.dtype == np.int8]
    assert int8_weights
    mismatches = integer_tensor_mismatches(result.content, [t.numpy() for t in tokens])
    assert not any(mismatches.values()), {k: v for k, v in mismatches.items() if v}


def test_an_exported_program_converts_with_its_own_example_inputs(resnet, images):
    x = images[:1]
    program = torch.export.export(resnet, (x,))
    result = convert(program)
    (ours,) = run_edgeq(result.content, [nchw_to_nhwc(x.numpy())])
    assert relative_max_error(ours, torch_outputs(resnet, x)[0]) < FLOAT_TOLERANCE


def test_cli_converts_a_pt2_file_saved_by_torch_export(resnet, images, tmp_path):
    x = images[:1]
    torch.export.save(torch.export.export(resnet, (x,)), str(tmp_path / "resnet.pt2"))
    result = invoke("convert", tmp_path / "resnet.pt2", "-o", tmp_path / "resnet.tflite")
    assert result.exit_code == 0, result.output
    content = (tmp_path / "resnet.tflite").read_bytes()
    (litert,) = run_litert(content, [nchw_to_nhwc(x.numpy())])
    assert relative_max_error(litert, torch_outputs(resnet, x)[0]) < FLOAT_TOLERANCE


def test_cli_converts_a_pt2_file_to_int8_with_an_npz(resnet, images, tmp_path):
    x = images[:1]
    torch.export.save(torch.export.export(resnet, (x,)), str(tmp_path / "resnet.pt2"))
    np.savez(tmp_path / "calib.npz", x=images.numpy())
    result = invoke("convert", tmp_path / "resnet.pt2", "-o", tmp_path / "int8.tflite", "--quantize", "int8",
                    "--calibration", tmp_path / "calib.npz")
    assert result.exit_code == 0, result.output
    mismatches = integer_tensor_mismatches((tmp_path / "int8.tflite").read_bytes(), [nchw_to_nhwc(x.numpy())])
    assert mismatches and not any(mismatches.values())


def test_cli_converts_a_torchscript_file_with_input_shapes_as_example_inputs(resnet, images, tmp_path):
    x = images[:1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, and still in use
        torch.jit.trace(resnet, (x,)).save(str(tmp_path / "resnet.pt"))
    result = invoke("convert", tmp_path / "resnet.pt", "-o", tmp_path / "resnet.tflite", "--input-shape",
                    "image:1,3,32,32", "--json")
    assert result.exit_code == 0, result.output
    content = (tmp_path / "resnet.tflite").read_bytes()
    (litert,) = run_litert(content, [nchw_to_nhwc(x.numpy())])
    assert relative_max_error(litert, torch_outputs(resnet, x)[0]) < FLOAT_TOLERANCE


def test_a_module_without_example_inputs_is_refused_with_what_to_give(resnet):
    with pytest.raises(ModelError, match="needs example_inputs"):
        convert(resnet)


def test_cli_refuses_a_pt2_file_that_is_not_one_in_one_line(tmp_path):
    bogus = tmp_path / "model.pt2"
    bogus.write_bytes(b"not a zip archive")
    result = invoke("convert", bogus, "-o", tmp_path / "m.tflite")
    assert result.exit_code == 2
    assert "not a torch.export .pt2 file" in result.output
    assert "Traceback" not in result.output


def test_without_torch_a_pt2_file_is_refused_naming_the_extra(tmp_path, monkeypatch):
    (tmp_path / "model.pt2").write_bytes(b"PK")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    result = invoke("convert", tmp_path / "model.pt2", "-o", tmp_path / "m.tflite")
    assert result.exit_code == 2
    assert 'pip install "edgeq[torch]"' in result.output
