"""The hand-back: a trained model as data, which the evaluator scores without running any of train.py.

The training process (harness.Run.export and hand_back) writes two files into its output folder:

    program.json          forward(idx) -> logits, traced by torch.export at the exact batch shape the
                          evaluator scores (profiles.eval_batch_shape) and lowered to core ATen
                          operators, in torch.export's JSON serialization (torch._export.serde)
    weights.safetensors   the parameters, buffers and tensor constants the program takes, by name

Both are read back as untrusted data by Program.parse and load_weights: no links followed, sizes
bounded, the JSON parsed by the small reader below into a list of ATen operator calls, which
Program runs one by one. No torch deserializer sees the file (torch.export.load unpickles whatever
its archive says to, and torch's JSON deserializer hands symbolic shapes to sympy's parser), nothing
is unpickled, and no Python source is generated from it.

The same reader checks the program on both sides: in the training process right after export, so a
model that breaks the rules (RULES) fails in seconds with the line of train.py at fault, and in the
evaluator, which trusts nothing the training process did.
"""

from __future__ import annotations

import json
import math
import os
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch._export.serde import schema  # the serialization's enums and version; imports nothing heavy

from autoresearch_mcp.nanochat import contract

RULES = (
    "forward(idx) must be a pure function of idx: idx (rows, seq_len) int64 in, logits (rows, seq_len, "
    "vocab_size) out and nothing else returned; no Python branches on tensor values (.item(), if x.any()); "
    "no state kept or written between calls (no buffer updates, no caches); only the standard operations a "
    "language model's forward needs (handback.ALLOWED_OPERATORS), none random (no dropout, no torch.rand), "
    "no custom ops"
)

_aten = torch.ops.aten

# The only operators a program may call: the forward pass of a language model, and nothing else.
# The evaluator runs them on the program's own tensors, in the process that holds the validation
# targets and writes the result, so each one is here because its kernels check, on CPU and CUDA, the
# sizes and indices they are given: elementwise math (broadcast shapes checked), views and joins
# (sizes checked against the tensor), matmuls (inner sizes checked), reductions of one tensor,
# softmax, layer norm (weight and bias checked against the normalized shape), attention (mask shape
# checked), and embedding and index_select, the lookups by computed indices (an index outside the
# table raises on CPU and is a device-side assert on CUDA). Kernels that trust their arguments
# (max_pool2d_with_indices_backward scatters to unchecked indices; a batch norm with a short bias
# reads past it) and everything an LM's forward has no use for (gradients, pooling, gathers and
# scatters, convolutions, batch or group norm with statistics passed in, random or uninitialized
# values, writes to inputs) are not. tests/bad_kernel_arguments.py gives these kernels sizes and
# indices that do not fit; tests/test_evaluate.py expects an error from each on CPU, and
# bench/redteam_gpu_check.py on CUDA.
ALLOWED_OPERATORS: frozenset[torch._ops.OpOverload] = frozenset(
    {
        # elementwise math, comparisons and selection
        *(
            packet.default
            for packet in (
                _aten.abs, _aten.neg, _aten.sign, _aten.reciprocal, _aten.sqrt, _aten.rsqrt, _aten.exp,
                _aten.expm1, _aten.log, _aten.log1p, _aten.log2, _aten.log10, _aten.sin, _aten.cos, _aten.tan,
                _aten.asin, _aten.acos, _aten.atan, _aten.atan2, _aten.sinh, _aten.cosh, _aten.tanh,
                _aten.asinh, _aten.acosh, _aten.atanh, _aten.erf, _aten.sigmoid, _aten.relu, _aten.gelu,
                _aten.elu, _aten.leaky_relu, _aten.hardtanh, _aten.floor, _aten.ceil, _aten.round,
                _aten.trunc, _aten.clamp, _aten.maximum, _aten.minimum, _aten.isnan, _aten.isinf,
                _aten.logical_and, _aten.logical_or, _aten.logical_xor, _aten.logical_not, _aten.bitwise_not,
            )
        ),
        *(
            getattr(packet, overload)
            for packet in (
                _aten.add, _aten.sub, _aten.mul, _aten.div, _aten.fmod, _aten.remainder, _aten.eq, _aten.ne,
                _aten.lt, _aten.le, _aten.gt, _aten.ge, _aten.bitwise_and, _aten.bitwise_or, _aten.bitwise_xor,
            )
            for overload in ("Tensor", "Scalar")
        ),
        _aten.clamp.Tensor, _aten.div.Tensor_mode, _aten.div.Scalar_mode,
        _aten.pow.Tensor_Tensor, _aten.pow.Tensor_Scalar, _aten.pow.Scalar,
        _aten.where.self, _aten.clone.default, _aten._to_copy.default,
        # new tensors of a given size and value (a mask, positions)
        _aten.full.default, _aten.full_like.default, _aten.scalar_tensor.default,
        _aten.arange.default, _aten.arange.start, _aten.arange.start_step,
        # views, joins and copies by shape
        _aten.view.default, _aten.permute.default, _aten.expand.default, _aten.slice.Tensor,
        _aten.select.int, _aten.unsqueeze.default, _aten.squeeze.dim, _aten.squeeze.dims,
        _aten.alias.default, _aten.cat.default, _aten.split_with_sizes.default, _aten.repeat.default,
        _aten.flip.default, _aten.constant_pad_nd.default,
        # matrix products
        _aten.mm.default, _aten.bmm.default, _aten.addmm.default,
        # reductions over one tensor
        _aten.sum.dim_IntList, _aten.mean.default, _aten.mean.dim, _aten.amax.default, _aten.amin.default,
        _aten.max.dim, _aten.min.dim, _aten.argmax.default, _aten.argmin.default, _aten.prod.default,
        _aten.prod.dim_int, _aten.var.correction, _aten.var.dim, _aten.any.default, _aten.any.dim,
        _aten.any.dims, _aten.cumsum.default, _aten.linalg_vector_norm.default, _aten.sort.default,
        _aten.topk.default,
        # softmax, normalization, attention, lookup
        _aten._softmax.default, _aten._log_softmax.default, _aten.native_layer_norm.default,
        _aten.scaled_dot_product_attention.default,  # allowed only with dropout_p == 0 (see _Reader._call)
        _aten.embedding.default, _aten.index_select.default,  # the same kernel on CUDA; torch.roll lowers to it
    }
)  # fmt: skip
# Not core ATen, kept whole by the export: the evaluator's device then picks its fused kernel (flash
# attention on CUDA); decomposed, it materializes (rows, heads, seq_len, seq_len) scores and runs
# several times slower.
KEPT_WHOLE = {_aten.scaled_dot_product_attention.default}
# What to use instead of operators train.py may reach for.
_INSTEAD = {
    "empty": "it returns uninitialized memory, whose values depend on what the evaluator computed before; "
    "use torch.zeros or torch.full",
    "empty_strided": "it returns uninitialized memory; use torch.zeros or torch.full",
    "native_batch_norm": "batch statistics; normalize each token with F.layer_norm or F.rms_norm",
    "_native_batch_norm_legit": "batch norm; normalize each token with F.layer_norm or F.rms_norm",
    "_native_batch_norm_legit_no_training": "batch norm; normalize each token with F.layer_norm or F.rms_norm",
    "native_group_norm": "group norm; normalize each token with F.layer_norm or F.rms_norm",
    "convolution": "a convolution; write a causal one as shifted slices of x (F.pad, slicing) times weights",
    "embedding_bag": "use nn.Embedding and sum or mean the looked-up rows",
    "gather": "indexing by computed indices; look rows up with nn.Embedding, or select with one_hot and a matmul",
    "index": "indexing by a tensor; look rows up with nn.Embedding, or slice with Python integers",
    "index_put": "writes by computed indices; build the tensor with torch.where or torch.cat",
    "scatter": "writes by computed indices; use torch.where or one_hot and a matmul",
    "scatter_add": "writes by computed indices; use one_hot and a matmul",
    "scatter_reduce": "writes by computed indices; use one_hot and a matmul",
    "as_strided": "use view, reshape or slicing",
}
# Assertions torch.export leaves in the graph (e.g. the dtype of a .to() result). The harness drops
# them: they check nothing the evaluator relies on, and the bf16 autocast it scores under on CUDA
# changes the dtypes they assert.
ASSERTIONS = {_aten._assert_tensor_metadata.default, _aten._assert_scalar.default, _aten._assert_async.msg}

MAX_PROGRAM_BYTES = 64 * 2**20
# The safetensors header (names, dtypes, shapes, offsets) on top of the tensors' own bytes.
MAX_WEIGHTS_HEADER_BYTES = 16 * 2**20
_MAX_STRING = 200

_DTYPES: dict[int, torch.dtype] = {
    schema.ScalarType.BYTE: torch.uint8,
    schema.ScalarType.CHAR: torch.int8,
    schema.ScalarType.SHORT: torch.int16,
    schema.ScalarType.INT: torch.int32,
    schema.ScalarType.LONG: torch.int64,
    schema.ScalarType.HALF: torch.float16,
    schema.ScalarType.FLOAT: torch.float32,
    schema.ScalarType.DOUBLE: torch.float64,
    schema.ScalarType.BOOL: torch.bool,
    schema.ScalarType.BFLOAT16: torch.bfloat16,
}
_MEMORY_FORMATS: dict[int, torch.memory_format] = {
    schema.MemoryFormat.ContiguousFormat: torch.contiguous_format,
    schema.MemoryFormat.ChannelsLast: torch.channels_last,
    schema.MemoryFormat.ChannelsLast3d: torch.channels_last_3d,
    schema.MemoryFormat.PreserveFormat: torch.preserve_format,
}
_LAYOUTS: dict[int, torch.layout] = {schema.Layout.Strided: torch.strided}
_ENUMS: dict[str, dict[int, Any]] = {
    "as_scalar_type": _DTYPES,
    "as_memory_format": _MEMORY_FORMATS,
    "as_layout": _LAYOUTS,
}
_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}  # fmt: skip
_FLOATS = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}  # how the serializer writes them
_WEIGHT_KINDS = {"parameter": "parameter_name", "buffer": "buffer_name", "tensor_constant": "tensor_constant_name"}


class ProgramRefused(Exception):
    """The hand-back is not a program the evaluator may score; the message says why and what to do."""


class ExportFailed(RuntimeError):
    """train.py's model could not be exported as a program the evaluator may score."""


def op_refusal(op: torch._ops.OpOverload) -> str | None:
    """Why the ATen operator `op` may not appear in a program, or None if it may."""
    if op in ALLOWED_OPERATORS:
        return None
    name = op._schema.name.removeprefix("aten::")
    if name.endswith("_backward"):
        why = "a gradient operator: forward computes logits only (it runs under torch.no_grad)"
    elif op._schema.is_mutable:
        why = "it writes to its inputs; compute a new tensor instead"
    elif torch.Tag.nondeterministic_seeded in op.tags:
        why = "it is random; forward must compute the same logits every time (no dropout, no torch.rand)"
    else:
        why = _INSTEAD.get(name, "the evaluator runs only the operators a language model's forward needs")
    return (
        f"{op}, which is not on the evaluator's list of operators ({why}). Allowed: elementwise math, views, cat, "
        "mm/bmm/addmm, sums, means and other reductions, softmax/log_softmax, layer and rms norm, "
        "scaled_dot_product_attention, embedding, arange/full for masks and positions "
        "(handback.ALLOWED_OPERATORS)"
    )


# ---- the program, as the evaluator runs it ----------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class _Call:
    """One operator call: constant arguments, arguments that name values, and the values it defines."""

    op: torch._ops.OpOverload
    constants: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, str] = field(default_factory=dict)
    tensor_lists: dict[str, list[str | None]] = field(default_factory=dict)
    outputs: list[str | list[str] | None] = field(default_factory=list)
    single: bool = True  # the operator returns one value (a tensor or a list), not a tuple
    frees: list[str] = field(default_factory=list)  # values no later call uses


@dataclass
class Program:
    """A parsed, checked program.json: forward(idx) -> logits as a list of ATen operator calls."""

    inputs: list[str | None]  # the graph's inputs in order: weight names, None for idx
    weights: dict[str, TensorSpec]
    calls: list[_Call]
    value_names: list[str]  # names the graph's values have, inputs first (parallel to inputs)
    output: str
    parameters: list[str]  # the weights that are parameters (the others are buffers and constants)

    @property
    def num_parameters(self) -> int:
        return sum(math.prod(self.weights[name].shape) for name in self.parameters)

    @classmethod
    def parse(cls, data: bytes, shape: tuple[int, int], vocab_size: int, device_type: str) -> Program:
        """Program.json's bytes as a Program; ProgramRefused unless it is a pure forward(idx) ->
        logits at `shape`, of allowed operators, for `device_type`."""
        try:
            return _Reader(json.loads(data), device_type).program(shape, vocab_size)
        except ProgramRefused:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError) as error:
            raise ProgramRefused(
                f"{contract.PROGRAM} is not a torch.export program this evaluator reads "
                f"({type(error).__name__}: {_first_line(error)})"
            ) from None

    def __call__(self, tensors: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        values = {
            name: idx if weight is None else tensors[weight]
            for name, weight in zip(self.value_names, self.inputs, strict=True)
        }
        for call in self.calls:
            arguments = dict(call.constants)
            for name, value in call.tensors.items():
                arguments[name] = values[value]
            for name, names in call.tensor_lists.items():
                arguments[name] = [None if value is None else values[value] for value in names]
            result = call.op(**arguments)
            results = [result] if call.single else result
            for output, value in zip(call.outputs, results, strict=True):
                if isinstance(output, str):
                    values[output] = value
                elif isinstance(output, list):
                    values.update(zip(output, value, strict=True))
            for name in call.frees:
                del values[name]
        return values[self.output]


class _Reader:
    """Reads the parts of torch.export's JSON a static, stateless forward pass has, and refuses
    anything else: symbolic shapes, custom objects, nested graphs, operators outside the rules."""

    def __init__(self, raw: object, device_type: str) -> None:
        self.raw = _object(raw, "the file")
        self.device_type = device_type

    def program(self, shape: tuple[int, int], vocab_size: int) -> Program:
        version = _object(self.raw["schema_version"], "schema_version")
        if version["major"] != schema.SCHEMA_VERSION[0]:
            raise ProgramRefused(f"{contract.PROGRAM} has schema version {version}, not {schema.SCHEMA_VERSION}")
        if self.raw.get("range_constraints") or self.raw.get("guards_code"):
            raise ProgramRefused("the program has symbolic shapes or guards; it must be exported at one static shape")
        module = _object(self.raw["graph_module"], "graph_module")
        graph = _object(module["graph"], "graph")
        symbolic = ("sym_int_values", "sym_bool_values", "sym_float_values", "custom_obj_values")
        if any(graph.get(key) for key in symbolic) or graph.get("is_single_tensor_return"):
            raise ProgramRefused("the program has symbolic values or custom objects; forward must be plain tensor code")
        self.metas = _object(graph["tensor_values"], "tensor_values")
        signature = _object(module["signature"], "signature")
        inputs, value_names, idx_name, parameters = self._inputs(signature, _list(graph["inputs"], "inputs"))
        output = self._output(signature, _list(graph["outputs"], "outputs"))
        self._expect(idx_name, "idx", shape, (torch.int64,))
        self._expect(output, "the logits", (*shape, vocab_size), (torch.float32, torch.float16, torch.bfloat16))
        weights = {
            weight: self._spec(name) for name, weight in zip(value_names, inputs, strict=True) if weight is not None
        }
        calls = [self._call(_object(node, "node")) for node in _list(graph["nodes"], "nodes")]
        _plan_values(calls, set(value_names), output)
        return Program(inputs, weights, calls, value_names, output, parameters)

    def _inputs(self, signature: dict, graph_inputs: list) -> tuple[list[str | None], list[str], str, list[str]]:
        inputs: list[str | None] = []
        value_names: list[str] = []
        idx_names: list[str] = []
        parameters: list[str] = []
        for spec in _list(signature["input_specs"], "input_specs"):
            (kind, value), *others = _object(spec, "input spec").items()
            value = _object(value, kind)
            if others:
                raise ProgramRefused("an input spec has more than one kind")
            if kind == "user_input":
                name = self._tensor_name(value["arg"])
                idx_names.append(name)
                inputs.append(None)
            elif kind in _WEIGHT_KINDS:
                name = _string(_object(value["arg"], "arg")["name"])
                weight = _string(value[_WEIGHT_KINDS[kind]])
                inputs.append(weight)
                if kind == "parameter":
                    parameters.append(weight)
            else:
                raise ProgramRefused(f"forward takes a {kind}; it may take only idx and the model's tensors")
            value_names.append(name)
        if len(idx_names) != 1:
            raise ProgramRefused(f"forward must take one tensor, idx; it takes {len(idx_names)} inputs")
        if [self._tensor_name(argument) for argument in graph_inputs] != value_names:
            raise ProgramRefused("the graph's inputs do not match its signature")
        weights = [name for name in inputs if name is not None]
        if len(set(weights)) != len(weights):
            raise ProgramRefused("the program names a weight twice")
        return inputs, value_names, idx_names[0], parameters

    def _output(self, signature: dict, graph_outputs: list) -> str:
        specs = _list(signature["output_specs"], "output_specs")
        kinds = [next(iter(_object(spec, "output spec")), None) for spec in specs]
        if kinds != ["user_output"]:
            written = ", ".join(str(kind) for kind in kinds if kind != "user_output")
            raise ProgramRefused(
                f"forward must return the logits and nothing else, and change no state; its outputs are "
                f"{len(kinds)}, other than the logits: {written or 'none'} (a buffer updated in forward, a cache, "
                "or a second output)"
            )
        name = self._tensor_name(_object(specs[0]["user_output"], "user_output")["arg"])
        if [self._tensor_name(argument) for argument in graph_outputs] != [name]:
            raise ProgramRefused("the graph's output does not match its signature")
        return name

    def _spec(self, name: str) -> TensorSpec:
        meta = _object(self.metas[name], f"the metadata of {name}")
        dtype = _DTYPES.get(meta["dtype"]) if type(meta["dtype"]) is int else None
        sizes = [_object(size, "size") for size in _list(meta["sizes"], "sizes")]
        if dtype is None or not all(list(size) == ["as_int"] and type(size["as_int"]) is int for size in sizes):
            raise ProgramRefused(f"tensor {name} has no static shape and plain dtype; export at one static shape")
        if _object(meta["device"], "device")["type"] != self.device_type:
            raise ProgramRefused(
                f"the program was exported for {meta['device']['type']} but is scored on {self.device_type}; "
                "export the model on the device it trains on (run.device)"
            )
        return TensorSpec(tuple(size["as_int"] for size in sizes), dtype)

    def _expect(self, name: str, what: str, shape: tuple[int, ...], dtypes: tuple[torch.dtype, ...]) -> None:
        spec = self._spec(name)
        if spec.shape != shape or spec.dtype not in dtypes:
            raise ProgramRefused(
                f"{what} must have shape {shape} and dtype {' or '.join(map(str, dtypes))}; "
                f"the program has {spec.shape} {spec.dtype}"
            )

    def _call(self, node: dict) -> _Call:
        op = self._operator(node)
        call = _Call(op)
        known = {argument.name: argument for argument in op._schema.arguments}
        for named in _list(node["inputs"], "inputs"):
            named = _object(named, "input")
            name = _string(named["name"])
            if name not in known or name in call.constants or name in call.tensors or name in call.tensor_lists:
                raise ProgramRefused(f"{op} is given an argument {name[:40]!r} it does not take, or twice")
            self._argument(call, name, _object(named["arg"], "argument"))
        missing = [a.name for a in op._schema.arguments if not a.has_default_value() and a.name not in _given(call)]
        if missing:
            raise ProgramRefused(f"{op} is called without {', '.join(missing)}")
        if op is _aten.scaled_dot_product_attention.default and call.constants.get("dropout_p", 0.0) != 0.0:
            raise ProgramRefused(f"forward uses attention dropout, which is random{_where(node)}")
        returns = op._schema.returns
        call.single = len(returns) == 1
        outputs = [self._output_names(_object(output, "output")) for output in _list(node["outputs"], "outputs")]
        if len(outputs) != len(returns):
            raise ProgramRefused(f"{op} is said to return {len(outputs)} values, not {len(returns)}")
        call.outputs = outputs
        return call

    def _operator(self, node: dict) -> torch._ops.OpOverload:
        target = _string(node["target"])
        prefix, _, rest = target.partition("torch.ops.aten.")
        name, _, overload = rest.partition(".")
        op = None
        if not prefix and name.isidentifier() and overload.isidentifier():
            try:
                op = getattr(getattr(_aten, name), overload)
            except (AttributeError, RuntimeError):
                op = None
        if not isinstance(op, torch._ops.OpOverload):
            raise ProgramRefused(f"forward calls {target[:80]}, which is not an ATen operator{_where(node)}")
        reason = op_refusal(op)
        if reason:
            raise ProgramRefused(f"forward uses {reason}{_where(node)}")
        return op

    def _argument(self, call: _Call, name: str, argument: dict) -> None:
        (kind, value), *others = argument.items()
        if others:
            raise ProgramRefused("an argument has more than one kind")
        if kind == "as_tensor":
            call.tensors[name] = self._tensor_name(argument)
        elif kind == "as_tensors":
            call.tensor_lists[name] = [self._tensor_name({"as_tensor": item}) for item in _list(value, kind)]
        elif kind == "as_optional_tensors":
            call.tensor_lists[name] = [self._optional_tensor_name(item) for item in _list(value, kind)]
        elif kind == "as_optional_tensor":
            tensor = self._optional_tensor_name(value)
            if tensor is None:
                call.constants[name] = None
            else:
                call.tensors[name] = tensor
        else:
            call.constants[name] = self._constant(kind, value)

    def _constant(self, kind: str, value: object) -> object:
        if kind == "as_none":
            return None
        if kind in ("as_int", "as_float", "as_bool", "as_string"):
            return _scalar(kind, value)
        if kind in ("as_ints", "as_floats", "as_bools", "as_strings"):
            return [_scalar(kind[:-1], item) for item in _list(value, kind)]
        if kind == "as_sym_ints":  # sizes: static ones only
            return [_scalar("as_int", _object(item, kind)["as_int"]) for item in _list(value, kind)]
        if kind == "as_sym_int":
            return _scalar("as_int", _object(value, kind)["as_int"])
        table = _ENUMS.get(kind)
        if table is not None and type(value) is int and value in table:
            return table[value]
        if kind == "as_device":
            device = _object(value, kind)
            index = device.get("index")
            if device["type"] != self.device_type or not (index is None or type(index) is int):
                raise ProgramRefused(
                    f"the program places tensors on {device['type']} but is scored on {self.device_type}; "
                    "export the model on the device it trains on (run.device)"
                )
            return torch.device(self.device_type) if index is None else torch.device(self.device_type, index)
        raise ProgramRefused(f"an operator argument is {kind[:40]}; forward must be plain tensor code at static shapes")

    def _tensor_name(self, argument: object) -> str:
        name = _string(_object(_object(argument, "argument")["as_tensor"], "as_tensor")["name"])
        if name not in self.metas:
            raise ProgramRefused(f"the program uses a tensor {name[:40]!r} it does not describe")
        return name

    def _optional_tensor_name(self, argument: object) -> str | None:
        return None if "as_none" in _object(argument, "argument") else self._tensor_name(argument)

    def _output_names(self, output: dict) -> str | list[str] | None:
        if "as_none" in output:
            return None
        if "as_tensors" in output:
            return [self._tensor_name({"as_tensor": item}) for item in _list(output["as_tensors"], "as_tensors")]
        return self._tensor_name(output)


def _given(call: _Call) -> set[str]:
    return {*call.constants, *call.tensors, *call.tensor_lists}


def _plan_values(calls: list[_Call], defined: set[str], output: str) -> None:
    """Refuse a use before definition or a value defined twice; mark where each value is last used."""
    last_use: dict[str, int] = {}
    for index, call in enumerate(calls):
        used = [*call.tensors.values(), *(name for names in call.tensor_lists.values() for name in names if name)]
        for name in used:
            if name not in defined:
                raise ProgramRefused(f"{call.op} uses {name[:40]!r} before it is computed")
            last_use[name] = index
        for output_name in _flat(call.outputs):
            if output_name in defined:
                raise ProgramRefused(f"{call.op} computes {output_name[:40]!r}, which already has a value")
            defined.add(output_name)
    if output not in defined:
        raise ProgramRefused("the program's output is never computed")
    for name, index in last_use.items():
        if name != output:
            calls[index].frees.append(name)


def _flat(outputs: list[str | list[str] | None]) -> list[str]:
    return [name for output in outputs for name in ([output] if isinstance(output, str) else output or [])]


def _object(value: object, what: str) -> dict:
    if not isinstance(value, dict):
        raise ProgramRefused(f"{what} in {contract.PROGRAM} is not a JSON object")
    return value


def _list(value: object, what: str) -> list:
    if not isinstance(value, list):
        raise ProgramRefused(f"{what} in {contract.PROGRAM} is not a JSON list")
    return value


def _string(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_STRING:
        raise ProgramRefused(f"{contract.PROGRAM} has a name that is not a short string")
    return value


def _scalar(kind: str, value: object) -> object:
    if kind == "as_float" and isinstance(value, str) and value in _FLOATS:
        return _FLOATS[value]
    # bool is an int in Python: an int argument must not be a bool, nor a float one.
    if kind == "as_float" and isinstance(value, (float, int)) and not isinstance(value, bool):
        return float(value)
    expected = {"as_int": int, "as_bool": bool, "as_string": str}.get(kind)
    if type(value) is not expected or (isinstance(value, str) and len(value) > _MAX_STRING):
        raise ProgramRefused(f"an operator argument is {type(value).__name__} where {kind[3:]} belongs")
    return value


def _where(node: dict) -> str:
    """' (<file>, line <n>, in <fn>: <code>)' for a node traced from train.py, if the file says."""
    metadata = node.get("metadata")
    trace = metadata.get("stack_trace") if isinstance(metadata, dict) else None
    if not isinstance(trace, str):
        return ""
    lines = [line.strip() for line in trace.strip().splitlines()[-2:]]
    return f" ({': '.join(lines)[:_MAX_STRING]})"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:_MAX_STRING] if text else "no message"


# ---- the training side: export and write --------------------------------------------------------


@dataclass
class Exported:
    """A model's forward, exported: the file's bytes, the program they parse to, and the tensor
    constants torch.export lifted out of forward (weights that are not parameters or buffers)."""

    data: bytes
    program: Program
    constants: dict[str, torch.Tensor]


def export(model: torch.nn.Module, shape: tuple[int, int], device: torch.device, vocab_size: int) -> Exported:
    """model.forward (in eval mode) as a checked program at `shape`; ExportFailed says what to change."""
    data, constants = trace(model, shape, device)
    try:
        program = Program.parse(data, shape, vocab_size, device.type)
    except ProgramRefused as refusal:
        raise ExportFailed(f"the exported model would be refused: {refusal}. {RULES}.") from None
    return Exported(data, program, constants)


def trace(
    model: torch.nn.Module, shape: tuple[int, int], device: torch.device
) -> tuple[bytes, dict[str, torch.Tensor]]:
    """(program.json's bytes, lifted tensor constants) of model.forward in eval mode at `shape`, unchecked."""
    from torch._export.serde.serialize import serialize

    idx = torch.zeros(shape, dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    try:
        failure = None
        try:
            exported = _export_aten(model, idx)
        except Exception as error:
            failure = error
        if failure is not None:
            with torch.no_grad():
                model(idx)  # a plain bug in forward (a typo) raises here, as itself, with real tensors
            raise ExportFailed(
                f"torch.export could not trace {type(model).__name__}.forward at the scored batch shape {shape} "
                f"({type(failure).__name__}: {_first_line(failure)}). The evaluator scores only a model that "
                f"exports: {RULES}. The traceback above shows where tracing stopped."
            ) from failure
    finally:
        model.train(was_training)
    graph = exported.graph_module.graph
    for node in [node for node in graph.nodes if node.target in ASSERTIONS]:
        graph.erase_node(node)
    artifact = serialize(
        exported, serialize_state_dict=False, serialize_constants=False, serialize_example_inputs=False
    )
    return artifact.exported_program, dict(exported.constants)


def _export_aten(model: torch.nn.Module, idx: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export of model(idx), lowered to core ATen (KEPT_WHOLE kept whole)."""
    table = torch.export.default_decompositions()
    for op in KEPT_WHOLE:
        del table[op]
    with warnings.catch_warnings():
        # torch 2.13's own exporter trips its own deprecation warning; it says nothing about train.py.
        warnings.filterwarnings("ignore", message=".*LeafSpec.* is deprecated", category=FutureWarning)
        return torch.export.export(model, (idx,), strict=False).run_decompositions(table)


def program_tensors(exported: Exported, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors the program takes, by name: parameters and buffers as `model` holds them now,
    lifted constants as traced. AttributeError or ValueError if `model` no longer has them as traced."""
    tensors = {}
    for name, spec in exported.program.weights.items():
        if name in exported.constants:
            tensor = exported.constants[name]
        else:
            try:
                tensor = model.get_parameter(name)
            except AttributeError:
                tensor = model.get_buffer(name)
        if (tuple(tensor.shape), tensor.dtype) != (spec.shape, spec.dtype):
            raise ValueError(f"{name} is {tuple(tensor.shape)} {tensor.dtype} now, traced as {spec.shape} {spec.dtype}")
        tensors[name] = tensor.detach()
    return tensors


def write_program(exported: Exported, directory: Path) -> None:
    _replace(directory / contract.PROGRAM, lambda path: path.write_bytes(exported.data))


def write_export(exported: Exported, directory: Path) -> None:
    """What the export process leaves the training process (launch.py): program.json, and the lifted
    tensor constants (if any), which the training process hands back with the weights."""
    directory.mkdir(exist_ok=True)
    if exported.constants:
        _save_safetensors(exported.constants, directory / contract.EXPORT_CONSTANTS)
    write_program(exported, directory)


def read_export(directory: Path, shape: tuple[int, int], vocab_size: int, device: torch.device) -> Exported | None:
    """What write_export wrote into `directory` (the export process, beside the training process in
    its sandbox), parsed; None if there is no program there."""
    from safetensors.torch import load_file

    try:
        data = (directory / contract.PROGRAM).read_bytes()
    except FileNotFoundError:
        return None
    constants_file = directory / contract.EXPORT_CONSTANTS
    try:
        constants = load_file(str(constants_file), device=str(device)) if constants_file.exists() else {}
        return Exported(data, Program.parse(data, shape, vocab_size, device.type), constants)
    except (ProgramRefused, OSError, ValueError) as error:  # train.py's own doing: export again
        print(f"the export process's program is not readable ({error}); exporting here", flush=True)
        return None


def write_weights(tensors: dict[str, torch.Tensor], directory: Path) -> None:
    _save_safetensors(tensors, directory / contract.WEIGHTS)


def _save_safetensors(tensors: dict[str, torch.Tensor], destination: Path) -> None:
    """`tensors` in the safetensors format, each written straight from its memory (copied only off
    the device, or where not contiguous): safetensors' own save_file builds a second copy of every
    weight in memory first, and refuses tensors that share memory (tied weights)."""
    on_host = {name: tensor.detach().to("cpu").contiguous() for name, tensor in sorted(tensors.items())}
    header: dict[str, Any] = {}
    offset = 0
    for name, tensor in on_host.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned

    def write(path: Path) -> None:
        with open(path, "wb") as file:
            file.write(len(encoded).to_bytes(8, "little") + encoded)
            for tensor in on_host.values():
                file.write(tensor.reshape(-1).view(torch.uint8).numpy().data)

    _replace(destination, write)


def _replace(path: Path, write_to: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write_to(tmp)
    os.replace(tmp, path)


# ---- the evaluator side: read, strictly -----------------------------------------------------------


def load(
    directory: Path, shape: tuple[int, int], vocab_size: int, device: torch.device
) -> tuple[Program, dict[str, torch.Tensor]]:
    """The hand-back in `directory` as (program, its weights on `device`); ProgramRefused if it is not
    a program the evaluator may score. Reads data only: nothing in `directory` is run or unpickled."""
    directory_fd = _open_directory(directory)
    try:
        program = Program.parse(
            _read_bounded(directory_fd, contract.PROGRAM, MAX_PROGRAM_BYTES), shape, vocab_size, device.type
        )
        needed = sum(math.prod(spec.shape) * spec.dtype.itemsize for spec in program.weights.values())
        data = _read_bounded(directory_fd, contract.WEIGHTS, needed + MAX_WEIGHTS_HEADER_BYTES)
    finally:
        os.close(directory_fd)
    return program, {name: tensor.to(device) for name, tensor in load_weights(data, program.weights).items()}


def load_weights(data: bytes, expected: dict[str, TensorSpec]) -> dict[str, torch.Tensor]:
    """The tensors in a safetensors file's bytes, refused unless they match `expected` exactly."""
    from safetensors.torch import load as load_safetensors

    try:
        tensors = load_safetensors(data)
    except Exception as error:
        raise ProgramRefused(f"{contract.WEIGHTS} is not a safetensors file ({_first_line(error)})") from None
    missing = sorted(expected.keys() - tensors.keys())
    extra = sorted(tensors.keys() - expected.keys())
    mismatched = [
        f"{name} is {tuple(tensor.shape)} {tensor.dtype}, not {expected[name].shape} {expected[name].dtype}"
        for name, tensor in sorted(tensors.items())
        if name in expected and TensorSpec(tuple(tensor.shape), tensor.dtype) != expected[name]
    ]
    problems = [
        *([f"missing {', '.join(missing[:5])}"] if missing else []),
        *([f"not in the program: {', '.join(extra[:5])}"] if extra else []),
        *mismatched[:5],
    ]
    if problems:
        raise ProgramRefused(f"{contract.WEIGHTS} does not match the program's weights: {'; '.join(problems)}")
    return tensors


def _open_directory(directory: Path) -> int:
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as error:
        raise ProgramRefused(
            f"no hand-back folder at {directory} ({error.strerror}); call run.hand_back(model)"
        ) from None


def _read_bounded(directory_fd: int, name: str, limit: int) -> bytes:
    """The bytes of a regular file in the folder, refused if it is a link, not a file, or over `limit`."""
    try:
        # O_NONBLOCK: a FIFO planted under the name must not block the open.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory_fd)
    except OSError as error:
        raise ProgramRefused(
            f"the hand-back has no readable {name} ({error.strerror}); it must be the file run.hand_back(model) writes"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ProgramRefused(f"{name} in the hand-back is not a regular file")
        if info.st_size > limit:
            raise ProgramRefused(f"{name} is {info.st_size:,} bytes, more than the {limit:,} the program can need")
        # Read what the file holds, not what the program declares: a read asks for its whole size
        # at once, and a declared weight of 2**62 elements would make that an OverflowError.
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(info.st_size + 1)
    finally:
        os.close(fd)
    if len(data) > info.st_size:
        raise ProgramRefused(f"{name} grew while it was read")
    return data
