"""Interpreter: LiteRT's Python API over a list of prepared kernels and one tensor arena.

Tensor indices are positions in ``graph.tensors``; for a graph read from a flatbuffer that is the
file's tensor order, so an index means the same tensor here and in LiteRT.

``allocate_tensors`` prepares every op once (``runtime.op_runner.prepare_op``); ``invoke`` then only
calls ``eval(*inputs)`` per op over the arena, a list indexed by tensor index whose last slot stays
None for omitted optional inputs. Intermediate tensors are released after their last use unless they
are preserved (``experimental_preserve_all_tensors`` or ``run(..., keep=...)``). When no tensor has
to be preserved, a zero PAD feeding only a VALID convolution is folded into it (``_fold_pads``), so
the padded copy is never made, and an int8 -> DEQUANTIZE -> MAX_POOL_2D -> QUANTIZE chain with the same
quantization at both ends runs as one int8 max pool (``_int8_max_pool_islands``); the model itself is not
changed.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional

import numpy as np

from edgeq.runtime.threads import thread_limit
from edgeq.runtime.ir import Graph, InvokeError, ModelError, Op, naming_file
from edgeq.runtime.kernels.buffers import holders_made_by
from edgeq.runtime.op_runner import has_kernel, prepare_op, run_op
from edgeq.runtime.tflite_format.reader import read_tflite
from edgeq.runtime.validate import validate_graph, with_implied_shapes

_TFLITE_TYPE_NAMES = {
    np.dtype(np.float32): "FLOAT32",
    np.dtype(np.float16): "FLOAT16",
    np.dtype(np.float64): "FLOAT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.bool_): "BOOL",
}


def _type_name(dtype) -> str:
    return _TFLITE_TYPE_NAMES.get(np.dtype(dtype), str(np.dtype(dtype)).upper())


class Interpreter:
    """Runs a TFLite model (file, bytes or IR ``Graph``) with numpy kernels.

    The model is checked (``runtime.validate``) before any kernel touches it; ``max_memory_bytes``
    caps the bytes its tensors may need together (default: the memory available now).
    """

    def __init__(self, model_path=None, model_content=None, num_threads=None,
                 experimental_preserve_all_tensors=False, max_memory_bytes=None, **_litert_only_options):
        if num_threads is not None:
            if not isinstance(num_threads, int):
                raise ValueError("type of num_threads should be int")
            if num_threads < 1:
                raise ValueError("num_threads should >= 1")
        if isinstance(model_path, Graph):
            graph = model_path
        elif model_path is not None and model_content is not None:
            raise ValueError("Can't both provide `model_path` and `model_content`")
        elif model_path is not None:
            try:
                with open(model_path, "rb") as f:
                    model_content = f.read()
            except OSError:
                raise ValueError(f"Failed to open {model_path}") from None
            try:  # a bad file's messages name it
                self._init_from_graph(read_tflite(model_content), experimental_preserve_all_tensors, num_threads,
                                      max_memory_bytes)
            except ModelError as error:
                raise naming_file(error, model_path) from None
            return
        elif model_content is not None:
            graph = read_tflite(bytes(model_content))
        else:
            raise ValueError("`model_path` or `model_content` must be specified.")
        self._init_from_graph(graph, experimental_preserve_all_tensors, num_threads, max_memory_bytes)

    @classmethod
    def from_graph(cls, graph: Graph, experimental_preserve_all_tensors=False, num_threads=None,
                   max_memory_bytes=None) -> "Interpreter":
        interpreter = cls.__new__(cls)
        interpreter._init_from_graph(graph, experimental_preserve_all_tensors, num_threads, max_memory_bytes)
        return interpreter

    def _init_from_graph(self, graph: Graph, preserve_all_tensors: bool, num_threads=None,
                         max_memory_bytes=None) -> None:
        self._thread_limit = thread_limit(num_threads)
        graph = with_implied_shapes(graph, validate_graph(graph, max_memory_bytes))
        graph = fold_constant_ops(graph)
        self._graph = graph
        self._preserve_all_tensors = bool(preserve_all_tensors)
        self._names = list(graph.tensors)
        self._tensors = [graph.tensors[name] for name in self._names]
        self._index = {name: i for i, name in enumerate(self._names)}
        self._absent = len(self._names)  # arena slot that always holds None
        for name in list(graph.inputs) + list(graph.outputs):
            if name not in self._index:
                raise ModelError(f"graph boundary tensor '{name}' is not in the graph")
        self._input_indices = [self._index[name] for name in graph.inputs]
        self._output_indices = [self._index[name] for name in graph.outputs]
        self._op_io = [(self._indices(op.inputs, op), self._indices(op.outputs, op)) for op in graph.ops]
        self._arena: Optional[list] = None
        self._steps = None
        self._invoke_steps = None
        self._buffer_holders = {}  # prepared kernel -> the output-buffer holders it made

    def _indices(self, names, op):
        indices = []
        for name in names:
            if not name:
                indices.append(self._absent)
            elif name in self._index:
                indices.append(self._index[name])
            else:
                raise ModelError(f"op {op} refers to unknown tensor '{name}'")
        return tuple(indices)

    # -- preparation -------------------------------------------------------------------------
    def allocate_tensors(self) -> None:
        if self._steps is None:
            islands = {} if self._preserve_all_tensors else self._int8_max_pool_islands()
            self._steps = self._prepare_ops(lazy={p for skipped, _ in islands.values() for p in skipped})
            if self._preserve_all_tensors:  # every tensor must be readable: run each op as written
                self._fused_steps, self._fused_ops = self._steps, list(range(len(self._steps)))
            else:
                self._fused_steps, self._fused_ops = self._fold_max_pool_islands(
                    *self._fold_pointwise_into_depthwise(*self._fold_pads(self._steps)), islands)
            self._readable = sorted(i for i in self._keep_for_invoke()
                                    if self._tensors[i].data is None and i not in self._input_indices)
            self._invoke_steps = self._with_releases(self._keep_for_invoke(), self._fused_steps)
            self._reserve_buffers(self._invoke_steps)
            self._invoke_ops = [self._graph.ops[position] for position in self._fused_ops]
        arena = [None] * (self._absent + 1)
        for i, tensor in enumerate(self._tensors):
            if tensor.data is not None:
                arena[i] = tensor.data
        for i in self._input_indices:
            tensor = self._tensors[i]
            if tensor.data is None:
                arena[i] = np.zeros(tensor.shape, tensor.dtype)
        self._arena = arena
        self._produced = False

    def _prepare(self, op, graph=None):
        """``op``'s prepared kernel; the output buffers it made are noted, for ``_reserve_buffers``."""
        with holders_made_by() as made:
            evaluate = prepare_op(op, self._graph if graph is None else graph)
        if made:
            self._buffer_holders[evaluate] = made
        return evaluate

    def _reserve_buffers(self, steps) -> None:
        """Make and touch now the output buffers ``steps`` write on the graph's own shapes, so that the
        first invoke finds them as every later one does instead of paying for their pages."""
        tensors = self._tensors + [None]
        for evaluate, inputs, outputs, _ in steps:
            holders = self._buffer_holders.get(evaluate)
            if not holders:
                continue
            first_input = tensors[inputs[0]] if inputs else None
            output = tensors[outputs[0] if type(outputs) is tuple else outputs]
            for holder in holders:
                holder.reserve(first_input.shape if first_input is not None else None, output.shape)

    def _prepare_ops(self, lazy=()):
        """Every op's prepared kernel; those at positions in ``lazy`` are prepared on their first call
        (ops that invoke skips: only ``run(keep=...)`` and ``observe`` run them)."""
        unsupported = sorted({op.kind for op in self._graph.ops if not has_kernel(op)})
        if unsupported:
            raise ModelError(f"no kernel for op type(s): {', '.join(unsupported)}")
        return [(_prepared_on_first_call(op, self._graph) if position in lazy else self._prepare(op), inputs,
                 outputs[0] if len(outputs) == 1 else outputs)
                for position, (op, (inputs, outputs)) in enumerate(zip(self._graph.ops, self._op_io))]

    def _int8_max_pool_islands(self) -> dict:
        """{QUANTIZE position: (positions of the ops it replaces, the int8 MAX_POOL_2D op)} for every
        int8 -> DEQUANTIZE -> float MAX_POOL_2D -> QUANTIZE chain that the int8 max pool computes
        exactly: the same scale and zero point in and out, no fused activation, and intermediates no
        other op reads. Dequantizing is strictly increasing, so it commutes with the max, and
        quantizing a dequantized int8 value with the same parameters gives it back. A spatial PAD before
        the DEQUANTIZE that fills with -128 joins the island as the pool's own padding: the int8 pool
        takes the max over the window's positions inside the input, and -128 never exceeds it (a window
        wholly in the padding gives -128 either way)."""
        from edgeq.runtime.ir import Op

        graph, islands = self._graph, {}
        readers = {}
        for position, op in enumerate(graph.ops):
            for name in set(op.inputs):
                readers.setdefault(name, []).append(position)
        producer = {name: position for position, op in enumerate(graph.ops) for name in op.outputs}
        boundary = set(graph.inputs) | set(graph.outputs)
        for position, quantize in enumerate(graph.ops):
            if quantize.type != "QUANTIZE" or len(quantize.inputs) != 1:
                continue
            pool_position = producer.get(quantize.inputs[0])
            pool = graph.ops[pool_position] if pool_position is not None else None
            if (pool is None or pool.type != "MAX_POOL_2D" or len(pool.inputs) != 1
                    or pool.options.get("fused_activation_function", "NONE") != "NONE"
                    or pool.options.get("padding", "SAME") != "VALID"):
                continue
            dequantize_position = producer.get(pool.inputs[0])
            dequantize = graph.ops[dequantize_position] if dequantize_position is not None else None
            if dequantize is None or dequantize.type != "DEQUANTIZE":
                continue
            source, result = graph[dequantize.inputs[0]], graph[quantize.outputs[0]]
            if source.dtype != np.int8 or result.dtype != np.int8 or source.quant is None or result.quant is None:
                continue
            if (np.asarray(source.quant.scale).size != 1 or not np.array_equal(source.quant.scale, result.quant.scale)
                    or not np.array_equal(source.quant.zero_point, result.quant.zero_point)):
                continue
            middles = (dequantize.outputs[0], pool.outputs[0])
            if any(name in boundary or len(readers.get(name, ())) != 1 for name in middles):
                continue
            skipped, source_name, options = (dequantize_position, pool_position), dequantize.inputs[0], dict(pool.options)
            pad_position = producer.get(source_name)
            pads = _lowest_value_padding(graph.ops[pad_position], graph) if pad_position is not None else None
            if (pads is not None and source_name not in boundary and len(readers.get(source_name, ())) == 1
                    and not any(pads[:2]) and not any(pads[6:])):
                skipped += (pad_position,)
                source_name = graph.ops[pad_position].inputs[0]
                options["explicit_padding"] = tuple(int(p) for p in pads[2:6])
            islands[position] = (skipped, Op("MAX_POOL_2D", [source_name], list(quantize.outputs), options))
        return islands

    def _fold_max_pool_islands(self, steps, positions, islands):
        """``steps`` (at graph positions ``positions``) with each island's QUANTIZE step running the
        int8 max pool on the DEQUANTIZE's input, and its DEQUANTIZE and MAX_POOL_2D steps gone."""
        skipped = {p for replaced, _ in islands.values() for p in replaced}
        fused, kept = [], []
        for step, position in zip(steps, positions):
            if position in skipped:
                continue
            if position in islands:
                op = islands[position][1]
                _, _, outputs = step
                step = (self._prepare(op), (self._index[op.inputs[0]],), outputs)
            fused.append(step)
            kept.append(position)
        return fused, kept

    def _fold_pads(self, steps):
        """(steps, graph op position of each step) with every zero PAD whose only reader is a VALID
        CONV_2D or DEPTHWISE_CONV_2D folded into that convolution, prepared once more with the
        padding as its own: it pads from precomputed indices instead of copying the whole input.
        The model is not changed; the padded tensor just never exists during invoke."""
        graph = self._graph
        readers = {}
        for position, (_, inputs, _) in enumerate(steps):
            for i in set(inputs):
                readers.setdefault(i, []).append(position)
        boundary = set(self._output_indices) | set(self._input_indices)
        replaced, skipped = {}, set()
        for position, op in enumerate(graph.ops):
            if op.type != "PAD" or len(op.inputs) != 2 or len(op.outputs) != 1:
                continue
            padded = self._index[op.outputs[0]]
            consumers = readers.get(padded, [])
            if padded in boundary or len(consumers) != 1:
                continue
            if graph.ops[consumers[0]].type == "DEQUANTIZE":
                folds = self._fold_pad_through_dequantize(op, consumers[0], steps, readers, boundary)
                if folds:
                    replaced.update(folds)
                    skipped.add(position)
                continue
            conv_position = consumers[0]
            conv = graph.ops[conv_position]
            folded = _conv_with_folded_pad(op, conv, graph)
            if folded is None:
                continue
            try:
                evaluate = self._prepare(folded)
            except Exception:  # the op as written still runs; folding is only a shortcut
                continue
            _, inputs, outputs = steps[conv_position]
            replaced[conv_position] = (evaluate, (self._index[op.inputs[0]],) + inputs[1:], outputs)
            skipped.add(position)
        fused, positions = [], []
        for position, step in enumerate(steps):
            if position not in skipped:
                fused.append(replaced.get(position, step))
                positions.append(position)
        return fused, positions

    def _fold_pad_through_dequantize(self, pad, dequantize_position, steps, readers, boundary) -> dict:
        """For int8 PAD -> DEQUANTIZE -> VALID float convolution (an int8 model's float island), the
        replaced steps {position: step} that dequantize the unpadded tensor and give the convolution the
        padding: the PAD fills with the zero point, which dequantizes to exactly 0.0, the float
        convolution's own padding value. Empty when the chain does not have that form."""
        graph = self._graph
        dequantize = graph.ops[dequantize_position]
        source = graph[pad.inputs[0]]
        dequantized = self._index[dequantize.outputs[0]]
        consumers = readers.get(dequantized, [])
        if dequantized in boundary or len(consumers) != 1 or len(dequantize.outputs) != 1:
            return {}
        if source.dtype != np.int8 or not _pads_with_zero_point(pad, graph):
            return {}
        conv_position = consumers[0]
        conv = graph.ops[conv_position]
        # The convolution reads the dequantized tensor at the unpadded shape: prepare it on a copy of
        # the graph that says so, as if it read the source directly.
        unpadded = graph.copy()
        unpadded.tensors[dequantize.outputs[0]] = dataclasses.replace(
            unpadded.tensors[dequantize.outputs[0]], shape=tuple(source.shape))
        virtual_pad = Op("PAD", [dequantize.outputs[0]] + list(pad.inputs[1:]), [dequantize.outputs[0]], {})
        folded = _conv_with_folded_pad(virtual_pad, conv, unpadded)
        if folded is None:  # (it also needs float weights: an int8 convolution reads no DEQUANTIZE)
            return {}
        try:
            evaluate = self._prepare(folded, unpadded)
        except Exception:  # the ops as written still run; folding is only a shortcut
            return {}
        dequantize_evaluate, _, dequantize_outputs = steps[dequantize_position]
        _, conv_inputs, conv_outputs = steps[conv_position]
        return {dequantize_position: (dequantize_evaluate, (self._index[pad.inputs[0]],), dequantize_outputs),
                conv_position: (evaluate, conv_inputs, conv_outputs)}

    def _fold_pointwise_into_depthwise(self, steps, positions):
        """(steps, positions) with every float CONV_2D step whose output only a 3x3 DEPTHWISE_CONV_2D
        step reads run together with it as one kernel (kernels/pointwise_depthwise.py), where it
        qualifies, and with the 1x1 CONV_2D that alone reads the depthwise's output if there is one:
        the tensors between them never exist during invoke."""
        from edgeq.runtime.kernels.pointwise_depthwise import isa_of_native_gemm, prepare_pointwise_then_depthwise

        if isa_of_native_gemm() is None:
            return steps, positions
        graph = self._graph
        readers, producer = {}, {}
        for j, (_, inputs, outputs) in enumerate(steps):
            for i in set(inputs):
                readers.setdefault(i, []).append(j)
            if not isinstance(outputs, tuple):
                producer[outputs] = j
        boundary = set(self._output_indices) | set(self._input_indices)
        made_by = {name: op for op in graph.ops for name in op.outputs}
        replaced, skipped = {}, set()
        for j, (_, inputs, outputs) in enumerate(steps):
            depthwise = graph.ops[positions[j]]
            if depthwise.type != "DEPTHWISE_CONV_2D" or not inputs:
                continue
            middle = inputs[0]
            i = producer.get(middle)
            if i is None or i in replaced or middle in boundary or readers.get(middle) != [j]:
                continue  # (a convolution already fused as the last of three is not the first of more)
            conv = graph.ops[positions[i]]
            if conv.type != "CONV_2D" or self._index[conv.outputs[0]] != middle:
                continue
            if self._index[conv.inputs[0]] != steps[i][1][0]:  # a PAD before it, folded into its step
                pad = made_by.get(conv.inputs[0])
                conv = None if pad is None else _conv_with_folded_pad(pad, conv, graph)
                if conv is None or self._index[conv.inputs[0]] != steps[i][1][0]:
                    continue
            if self._index[depthwise.inputs[0]] != middle:  # a PAD in between, folded into the step
                pad = made_by.get(depthwise.inputs[0])
                depthwise = None if pad is None else _conv_with_folded_pad(pad, depthwise, graph)
                if depthwise is None or self._index[depthwise.inputs[0]] != middle:
                    continue
            # The 1x1 CONV_2D that is the depthwise's only reader, if there is one, joins them.
            k = None if isinstance(outputs, tuple) or outputs in boundary else readers.get(outputs, [None])
            k = k[0] if k is not None and len(k) == 1 else None
            project = graph.ops[positions[k]] if k is not None else None
            if project is not None and (project.type != "CONV_2D" or steps[k][1][0] != outputs):
                k = project = None
            for last, last_op in ((k, project), (j, None)) if k is not None else ((j, None),):
                try:  # the ops as written still run; fusing is only a shortcut
                    evaluate = prepare_pointwise_then_depthwise(conv, depthwise, graph, last_op)
                except Exception:
                    evaluate = None
                if evaluate is not None:
                    replaced[last] = (evaluate, (steps[i][1][0],), steps[last][2])
                    skipped.update({i, j} - {last})
                    break
        fused, kept = [], []
        for j, (step, position) in enumerate(zip(steps, positions)):
            if j not in skipped:
                fused.append(replaced.get(j, step))
                kept.append(position)
        return fused, kept

    def _keep_for_invoke(self) -> set:
        if self._preserve_all_tensors:
            return set(range(self._absent))
        return set(self._output_indices) | set(self._input_indices)

    def _with_releases(self, keep: set, steps=None):
        """The prepared steps, each with the tensors whose last reader it is (to drop afterwards)."""
        steps = self._steps if steps is None else steps
        last_reader = {}
        for position, (_, inputs, _) in enumerate(steps):
            for i in inputs:
                last_reader[i] = position
        produced = set()
        for _, _, outputs in steps:
            produced.update(outputs if isinstance(outputs, tuple) else (outputs,))
        releases = [[] for _ in steps]
        for i, position in last_reader.items():
            if i in produced and i not in keep:
                releases[position].append(i)
        return [(evaluate, inputs, outputs, tuple(released))
                for (evaluate, inputs, outputs), released in zip(steps, releases)]

    # -- running -----------------------------------------------------------------------------
    def invoke(self) -> None:
        if self._arena is None:
            raise RuntimeError("Invoke called on model that is not ready.")
        with self._thread_limit():
            _execute(self._invoke_steps, self._arena, self._invoke_ops)
        self._keep_readable_tensors()
        self._produced = True

    def _keep_readable_tensors(self) -> None:
        # Kernels reuse their output buffers, and run() shares the kernels: what get_tensor() shows
        # must be a copy, or a run() after invoke() would change it.
        arena = self._arena
        for i in self._readable:
            if arena[i] is not None:
                arena[i] = arena[i].copy()

    def profile(self, runs: int = 10, warmup: int = 1) -> list:
        """Invoke ``warmup + runs`` times on the current inputs, timing every op; returns one dict
        per op in execution order: ``index``, ``type``, ``output`` (first output's name), ``seconds``
        (median over the timed runs). A separate timed loop, so ``invoke`` pays nothing for it."""
        if self._arena is None:
            raise RuntimeError("Invoke called on model that is not ready.")
        samples = [[] for _ in self._invoke_steps]
        with self._thread_limit():
            for run in range(warmup + runs):
                times = _execute_timed(self._invoke_steps, self._arena, self._invoke_ops)
                if run >= warmup:
                    for op_samples, seconds in zip(samples, times):
                        op_samples.append(seconds)
        self._keep_readable_tensors()
        self._produced = True
        entries = [{"index": position, "type": op.type, "output": op.outputs[0] if op.outputs else "",
                    "seconds": float(np.median(op_samples)) if op_samples else 0.0}
                   for position, op, op_samples in zip(self._fused_ops, self._invoke_ops, samples)]
        # One entry per op of the model, as inspect counts them: a PAD folded into the convolution after it
        # (see _fold_pads) takes no time of its own, which its entry says.
        stepped = set(self._fused_ops)
        for position, op in enumerate(self._graph.ops):
            if position not in stepped:
                into = next((p for p in self._fused_ops if p > position), None)
                entries.append({"index": position, "type": op.type, "output": op.outputs[0] if op.outputs else "",
                                "seconds": 0.0, "folded_into": into})
        return sorted(entries, key=lambda entry: entry["index"])

    def run(self, inputs, keep=None, observe=None) -> dict:
        """Run once on ``inputs`` (a dict name -> array, or a list in graph-input order) and return
        the graph outputs by name, plus the tensors in ``keep``: a set of names, or ``"all"`` for
        every tensor that is not a constant. The first axis may hold a batch of samples when the
        graph's batch size is 1. The interpreter's own tensors (``get_tensor``) are not touched.

        ``observe(name, array)``, if given, sees every tensor an op produces right after it is
        produced; unlike ``keep``, it lets each intermediate be released after its last use, so
        calibration can look at all of them while holding only a few."""
        if self._steps is None:
            self.allocate_tensors()
        arena = [None] * (self._absent + 1)
        for i, tensor in enumerate(self._tensors):
            if tensor.data is not None:
                arena[i] = tensor.data
        for i, value in zip(self._input_indices, self._inputs_in_order(inputs)):
            arena[i] = self._checked_input(i, value, allow_batch=True)
        if keep is None:
            keep_indices = set()
        elif keep == "all":
            keep_indices = {i for i, t in enumerate(self._tensors) if t.data is None}
        else:
            missing = [name for name in keep if name not in self._index]
            if missing:
                raise ValueError(f"no tensor named {', '.join(map(repr, missing))} in the model")
            keep_indices = {self._index[name] for name in keep}
        keep_indices |= set(self._output_indices)
        if keep is None and observe is None:
            steps, ops = self._with_releases(keep_indices, self._fused_steps), self._invoke_ops
        else:  # every tensor the caller may look at is made
            steps, ops = self._with_releases(keep_indices), self._graph.ops
        if observe is not None:
            steps = _observed(steps, self._names, observe)
        with self._thread_limit():
            _execute(steps, arena, ops)
        # Copies: kernels write into output buffers that they reuse on the next run.
        return {self._names[i]: np.array(arena[i], copy=True) for i in sorted(keep_indices, key=self._order_key)}

    def _order_key(self, index):
        # Graph outputs first, in their order; the rest in tensor order.
        if index in self._output_indices:
            return (0, self._output_indices.index(index))
        return (1, index)

    def _inputs_in_order(self, inputs):
        names = self._graph.inputs
        if isinstance(inputs, dict):
            unknown = set(inputs) - set(names)
            missing = [name for name in names if name not in inputs]
            if unknown or missing:
                raise ValueError(f"inputs must be exactly {names}; missing {missing}, unknown {sorted(unknown)}")
            return [inputs[name] for name in names]
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        inputs = list(inputs)
        if len(inputs) != len(names):
            raise ValueError(f"the model has {len(names)} inputs {names}, got {len(inputs)} arrays")
        return inputs

    # -- tensors -----------------------------------------------------------------------------
    def _check_index(self, tensor_index) -> int:
        if isinstance(tensor_index, (bool, np.bool_)) or not isinstance(tensor_index, (int, np.integer)):
            raise TypeError(f"tensor_index must be an int, got {type(tensor_index).__name__}")  # as LiteRT's binding
        index = int(tensor_index)
        if not 0 <= index < self._absent:
            raise ValueError(f"Invalid tensor index {index} exceeds max tensor index {self._absent}")
        return index

    def _checked_input(self, index, value, allow_batch=False):
        tensor = self._tensors[index]
        value = np.asarray(value)
        if value.dtype != tensor.dtype:
            raise ValueError(
                f"Cannot set tensor: Got value of type {_type_name(value.dtype)} but expected type "
                f"{_type_name(tensor.dtype)} for input {index}, name: {tensor.name} ")
        if value.ndim != len(tensor.shape):
            raise ValueError(
                f"Cannot set tensor: Dimension mismatch. Got {value.ndim} but expected "
                f"{len(tensor.shape)} for input {index}.")
        for axis, (got, expected) in enumerate(zip(value.shape, tensor.shape)):
            if got != expected and not (allow_batch and axis == 0 and expected == 1):
                raise ValueError(
                    f"Cannot set tensor: Dimension mismatch. Got {got} but expected {expected} "
                    f"for dimension {axis} of input {index}.")
        return value

    def set_tensor(self, tensor_index, value) -> None:
        index = self._check_index(tensor_index)
        if self._arena is None:
            raise ValueError("Cannot set tensor: Tensor is unallocated. Try calling allocate_tensors() first")
        if self._tensors[index].data is not None:
            raise ValueError(f"Cannot set tensor: tensor {index} ('{self._names[index]}') is a constant")
        self._arena[index] = np.array(self._checked_input(index, value), copy=True)

    def get_tensor(self, tensor_index, subgraph_index=0) -> np.ndarray:
        if subgraph_index != 0:
            raise ValueError(f"Invalid subgraph index {subgraph_index} exceeds max subgraph index 1")
        index = self._check_index(tensor_index)
        if self._arena is None:
            raise ValueError("Tensor data is null. Run allocate_tensors() first")
        value = self._arena[index]
        if value is None:
            if self._produced:
                raise ValueError(
                    f"tensor {index} ('{self._names[index]}') is an intermediate that was released; "
                    "create the Interpreter with experimental_preserve_all_tensors=True to read it")
            tensor = self._tensors[index]
            return np.zeros(tensor.shape, tensor.dtype)
        return np.array(value, copy=True)

    def tensor(self, tensor_index):
        """A function returning the current array of the tensor (a read-only view)."""
        index = self._check_index(tensor_index)

        def current():
            value = self._arena[index] if self._arena is not None else None
            if value is None:
                raise ValueError("Tensor data is null. Run allocate_tensors() first")
            view = value.view()
            if not (index in self._input_indices):
                view.flags.writeable = False
            return view

        return current

    def resize_tensor_input(self, input_index, tensor_size, strict=False):
        raise NotImplementedError(
            "resize_tensor_input is not supported: edgeq models have static shapes; "
            "use Interpreter.run() to run a batch on the first axis")

    # -- details -----------------------------------------------------------------------------
    def _tensor_details(self, index) -> dict:
        tensor = self._tensors[index]
        quant = tensor.quant
        if quant is None:
            scales, zero_points, axis = np.zeros(0, np.float32), np.zeros(0, np.int32), 0
        else:
            scales = quant.scale.astype(np.float32)
            zero_points = quant.zero_point.astype(np.int32)
            axis = int(quant.axis)
        per_tensor = (float(scales[0]), int(zero_points[0])) if scales.size == 1 else (0.0, 0)
        shape = np.array(tensor.shape, dtype=np.int32)
        return {
            "name": tensor.name,
            "index": index,
            "shape": shape,
            "shape_signature": shape.copy(),
            "dtype": np.dtype(tensor.dtype).type,
            "quantization": per_tensor,
            "quantization_parameters": {
                "scales": scales,
                "zero_points": zero_points,
                "quantized_dimension": axis,
                "block_size": 0,
            },
            "sparsity_parameters": {},
        }

    def get_input_details(self) -> list:
        return [self._tensor_details(i) for i in self._input_indices]

    def get_output_details(self) -> list:
        return [self._tensor_details(i) for i in self._output_indices]

    def get_tensor_details(self, subgraph_index=0) -> list:
        if subgraph_index != 0:
            raise ValueError(f"Invalid subgraph index {subgraph_index} exceeds max subgraph index 1")
        return [self._tensor_details(i) for i in range(self._absent)]

    def get_signature_list(self) -> dict:
        return {"serving_default": {"inputs": list(self._graph.inputs), "outputs": list(self._graph.outputs)}}

    @property
    def graph(self) -> Graph:
        return self._graph


def fold_constant_ops(graph: Graph) -> Graph:
    """Run once, here, every op whose inputs are all constants, and make its outputs constants.

    A float16 model DEQUANTIZEs its weights this way; folding them (as LiteRT does in prepare) lets
    the convolution after it lay out a constant filter once instead of on every invoke. Tensor
    order, and so tensor indices, stay as they are.
    """
    foldable = [
        op for op in graph.ops
        if op.inputs and all(not name or graph.tensors[name].is_constant for name in op.inputs)
    ]
    if not foldable:
        return graph
    graph = graph.copy()
    kept = []
    for op in graph.ops:
        inputs = [graph.tensors[name] if name else None for name in op.inputs]
        if not op.inputs or not has_kernel(op) or any(t is not None and not t.is_constant for t in inputs):
            kept.append(op)  # an op without a kernel is refused, with the others, when the model is prepared
            continue
        values = run_op(op, graph, [t.data if t is not None else None for t in inputs])
        for name, value in zip(op.outputs, values):
            tensor = graph.tensors[name]
            graph.tensors[name] = dataclasses.replace(tensor, data=np.asarray(value, dtype=tensor.dtype).reshape(tensor.shape))
    graph.ops = kept
    return graph


def _conv_with_folded_pad(pad, conv, graph):
    """``conv`` reading ``pad``'s input with the padding as its own explicit padding, or None when
    that would not give the same result: only zero spatial padding (a float 0, or the zero point
    of an int8 tensor whose PAD keeps its quantization) into a VALID convolution's data input."""
    from edgeq.runtime.ir import Op

    if conv.type not in ("CONV_2D", "DEPTHWISE_CONV_2D") or not conv.inputs or conv.inputs[0] != pad.outputs[0]:
        return None
    if pad.outputs[0] in conv.inputs[1:] or conv.options.get("padding", "SAME") != "VALID":
        return None
    source, padded, paddings = graph[pad.inputs[0]], graph[pad.outputs[0]], graph[pad.inputs[1]]
    if paddings.data is None or len(source.shape) != 4 or source.dtype != padded.dtype:
        return None
    pads = np.asarray(paddings.data).reshape(-1, 2)
    if pads.shape != (4, 2) or np.any(pads < 0) or np.any(pads[0]) or np.any(pads[3]):
        return None
    if source.dtype == np.int8:
        same = (source.quant is not None and padded.quant is not None
                and np.array_equal(source.quant.scale, padded.quant.scale)
                and np.array_equal(source.quant.zero_point, padded.quant.zero_point))
        if not same:
            return None
    elif source.dtype != np.float32 or graph[conv.inputs[1]].dtype != np.float32:
        return None
    (top, bottom), (left, right) = pads[1].tolist(), pads[2].tolist()
    options = dict(conv.options, explicit_padding=(top, bottom, left, right))
    return Op(conv.type, [pad.inputs[0]] + list(conv.inputs[1:]), list(conv.outputs), options)


def _pads_with_zero_point(pad, graph) -> bool:
    """Whether an int8 PAD fills with its input's zero point and keeps its quantization (per tensor)."""
    return pad.type == "PAD" and _keeps_quantization(pad, graph)


def _lowest_value_padding(pad, graph):
    """The paddings (8 values, NHWC before/after) of an int8 PAD or PADV2 that fills with -128 and keeps
    its input's quantization, or None."""
    if pad.type not in ("PAD", "PADV2") or len(pad.inputs) < 2 or not _keeps_quantization(pad, graph):
        return None
    source, paddings = graph[pad.inputs[0]], graph[pad.inputs[1]]
    if source.dtype != np.int8 or paddings.data is None or np.asarray(paddings.data).size != 8:
        return None
    if pad.type == "PADV2" and len(pad.inputs) > 2 and pad.inputs[2]:
        value = graph[pad.inputs[2]].data
        fill = None if value is None or np.asarray(value).size != 1 else int(np.ravel(value)[0])
    else:  # PAD fills a quantized tensor with its zero point
        fill = int(source.quant.zero_point[0])
    pads = np.asarray(paddings.data).reshape(-1)
    return pads if fill == -128 and np.all(pads >= 0) else None


def _keeps_quantization(op, graph) -> bool:
    source, result = graph[op.inputs[0]], graph[op.outputs[0]]
    return (source.quant is not None and result.quant is not None and np.asarray(source.quant.scale).size == 1
            and np.array_equal(source.quant.scale, result.quant.scale)
            and np.array_equal(source.quant.zero_point, result.quant.zero_point))


def _prepared_on_first_call(op, graph):
    """A kernel for ``op`` that is prepared when first called."""
    prepared = []

    def evaluate(*inputs):
        if not prepared:
            prepared.append(prepare_op(op, graph))
        return prepared[0](*inputs)

    return evaluate


def _execute(steps, arena, ops) -> None:
    """The hot loop: one kernel call per op; multi-output kernels return a tuple.

    A kernel failing on data its prepare could not foresee raises InvokeError (a ModelError and a
    RuntimeError, as LiteRT's invoke raises) naming the op: never a bare numpy error. The try costs
    nothing until something is raised."""
    position = 0
    try:
        for position, (evaluate, inputs, outputs, released) in enumerate(steps):
            result = evaluate(*[arena[i] for i in inputs])
            if type(result) is tuple:
                for i, value in zip(outputs if type(outputs) is tuple else (outputs,), result):
                    arena[i] = value
            else:
                arena[outputs] = result
            for i in released:
                arena[i] = None
    except (InvokeError, MemoryError):
        raise
    except Exception as error:
        raise _invoke_error(position, ops[position], error) from error


def _invoke_error(position: int, op, error: Exception) -> InvokeError:
    # A Ctrl-C inside a compiled kernel surfaces as a SystemError ("returned a result with an exception
    # set") around the KeyboardInterrupt: it is an interrupt, not a failing op.
    interrupt = error.__cause__ or error.__context__
    if isinstance(interrupt, KeyboardInterrupt):
        raise KeyboardInterrupt from None
    detail = str(error) if isinstance(error, ModelError) else f"{type(error).__name__}: {error}"
    return InvokeError(f"op #{position} ({op}) failed to invoke: {detail}")


def _execute_timed(steps, arena, ops) -> list:
    """``_execute`` with a clock read around every op: the seconds each step took."""
    clock = time.perf_counter
    times = []
    for position, (evaluate, inputs, outputs, released) in enumerate(steps):
        start = clock()
        try:
            result = evaluate(*[arena[i] for i in inputs])
        except (InvokeError, MemoryError):
            raise
        except Exception as error:
            raise _invoke_error(position, ops[position], error) from error
        if type(result) is tuple:
            for i, value in zip(outputs if type(outputs) is tuple else (outputs,), result):
                arena[i] = value
        else:
            arena[outputs] = result
        for i in released:
            arena[i] = None
        times.append(clock() - start)
    return times


def _observed(steps, names, observe):
    """The steps, each kernel wrapped to hand its outputs to ``observe(name, value)`` as it makes them."""

    def watching(evaluate, outputs):
        output_names = [names[i] for i in (outputs if type(outputs) is tuple else (outputs,))]

        def evaluate_and_observe(*inputs):
            result = evaluate(*inputs)
            for name, value in zip(output_names, result if type(result) is tuple else (result,)):
                observe(name, value)
            return result

        return evaluate_and_observe

    return [(watching(evaluate, outputs), inputs, outputs, released)
            for evaluate, inputs, outputs, released in steps]
