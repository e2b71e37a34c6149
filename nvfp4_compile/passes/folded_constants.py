"""Weight constants computed at compile time (repacked weights, unswizzled scales, d_w = alpha * g_a) and
how they stay correct afterwards.

A FoldedConstant is one weight-only subgraph (its "program") with the parameters/buffers it reads
(sources) and the tensors it produced (outputs), which the compiled graph takes as extra inputs.

- Cache: keyed by the identity of the source tensors and the program, so a recompile of the same model
  (a new dynamic shape, a graph break elsewhere) reuses the outputs instead of repacking again; cached
  entries are dropped with their source tensors (weak keys).
- Stale weights: before each call the compiled graph compares every source's (data_ptr, _version) with
  the state it folded; on a change (load_state_dict, in-place copy_, a new tensor assigned) it re-runs the
  program and copies the results into the same output tensors, so their addresses stay stable (CUDA
  graphs recorded on them stay valid) and no call ever sees stale weights.
- Release: with release_source_weights the FP4 sources' storage is freed after folding and the tensor is
  turned into a ReleasedWeight, whose every use raises a clear error instead of touching freed memory.
"""
from __future__ import annotations

import time
import weakref
from typing import Sequence

import torch
import torch.fx as fx
from torch.utils.weak import WeakIdKeyDictionary

_CACHE: WeakIdKeyDictionary = WeakIdKeyDictionary()  # first source tensor -> {key: FoldedConstant}


def _state(sources: Sequence[torch.Tensor]) -> tuple:
    # Inference tensors keep no version counter (reading it raises, which costs microseconds on every call);
    # for them only a new tensor is detected.
    out = []
    for t in sources:
        out.append((t.data_ptr(), -1 if t.is_inference() else t._version))
    return tuple(out)


def _sync(tensors) -> None:
    if any(t.is_cuda for t in tensors):
        torch.cuda.synchronize()


class FoldedConstant:
    def __init__(self, program: fx.GraphModule, sources: Sequence[torch.Tensor], source_names: list[str]):
        self.program = program
        self.source_names = source_names
        self._refs = [weakref.ref(t) for t in sources]
        start = time.perf_counter()
        with torch.no_grad():
            self.outputs = [t.contiguous() for t in program(*sources)]
        _sync(self.outputs)
        self.seconds = time.perf_counter() - start
        self.state = _state(sources)
        self.released = False

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.outputs)

    def mark_released(self) -> None:
        """Some sources were released: record their new (empty) state; any later change is an error."""
        sources = [r() for r in self._refs]
        if all(t is not None for t in sources):
            self.state = _state(sources)
        self.released = True

    def same_sources(self, sources: Sequence[torch.Tensor]) -> bool:
        return len(sources) == len(self._refs) and all(r() is t for r, t in zip(self._refs, sources))

    def refresh(self, sources: Sequence[torch.Tensor]) -> bool:
        """Recompute in place when a source changed since it was folded; True when it did."""
        state = _state(sources)
        if state == self.state:
            return False
        if self.released:
            raise RuntimeError(
                f"nvfp4_marlin: weight {', '.join(self.source_names)} changed after its memory was released "
                "(release_source_weights=True); the compiled model cannot re-derive its repacked weights. "
                "Compile again without release_source_weights to change weights after compiling."
            )
        with torch.no_grad():
            fresh = self.program(*sources)
            for out, new in zip(self.outputs, fresh):
                if out.shape != new.shape or out.dtype != new.dtype:
                    raise RuntimeError(
                        f"nvfp4_marlin: weight {', '.join(self.source_names)} changed shape or dtype "
                        f"({tuple(out.shape)} {out.dtype} -> {tuple(new.shape)} {new.dtype}); recompile"
                    )
                out.copy_(new)
        self.state = state
        self._refs = [weakref.ref(t) for t in sources]
        return True


def fold(program: fx.GraphModule, key: str, sources: list[torch.Tensor], source_names: list[str]):
    """The FoldedConstant of program on sources: from the cache when these exact tensors were folded by the
    same program before (refreshed if they changed since), else evaluated now. Returns (entry, cached)."""
    full_key = (key, tuple(id(t) for t in sources))
    per_tensor = _CACHE.get(sources[0]) if sources else None
    entry = per_tensor.get(full_key) if per_tensor else None
    if entry is not None and entry.same_sources(sources):
        entry.refresh(sources)
        return entry, True
    released = [name for name, t in zip(source_names, sources) if isinstance(t, ReleasedWeight)]
    if released:  # never evaluate on freed memory (Dynamo tracing lets metadata through to fake tensors)
        raise RuntimeError(
            f"nvfp4_compile: this graph needs {', '.join(released)} folded by a program no earlier compile ran, "
            "but an earlier compile released it (release_source_weights=True); compile without that option "
            "to compile this model in new ways")
    entry = FoldedConstant(program, sources, source_names)
    if sources:
        _CACHE.setdefault(sources[0], {})[full_key] = entry
    return entry, False


class FoldedInputs:
    """The compiled graph's view of its folded constants: where each entry's sources are among the graph's
    inputs, and the tensors appended to every call (every output of every entry, in the order fold_constants
    added their placeholders)."""

    def __init__(self, folded: Sequence[tuple]):
        # folded: PassContext.folded rows (entry, source accessors: int input index or tensor, new placeholders)
        self.entries: list[tuple[FoldedConstant, list]] = [(entry, accessors) for entry, accessors, _ in folded]

    def tensors(self) -> list[torch.Tensor]:
        return [t for entry, _ in self.entries for t in entry.outputs]

    def refresh(self, args: Sequence) -> int:
        """Re-fold entries whose sources changed; returns how many were refreshed."""
        count = 0
        for entry, accessors in self.entries:
            sources = [args[a] if isinstance(a, int) else a for a in accessors]
            count += entry.refresh(sources)
        return count


# ----------------------------------------------------------------------------------------------------
# release_source_weights
# ----------------------------------------------------------------------------------------------------

# Methods that only read metadata (never the freed values): Dynamo's fakeification, guards and our staleness
# check call these on a released weight. Properties pass too, except those returning views of the values.
_METADATA_METHODS = {
    "data_ptr", "size", "stride", "dim", "numel", "storage_offset", "untyped_storage", "_typed_storage",
    "is_contiguous", "element_size", "_is_view", "__repr__", "__format__", "__hash__", "__reduce_ex__",
    "nelement", "ndimension", "get_device", "is_pinned", "has_names", "_is_zerotensor", "is_neg", "is_conj",
    "is_inference", "is_complex", "is_floating_point", "is_signed", "_nested_tensor_size", "is_set_to",
    "__len__", "__bool__",
}
_VALUE_PROPERTIES = {"data", "T", "mT", "H", "mH", "real", "imag", "_base"}


def _func_name(func) -> tuple[str, bool]:
    """(name, is_property) of what __torch_function__ intercepted."""
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a property: method-wrapper of a getset_descriptor
        return getattr(getattr(func, "__self__", None), "__name__", name), True
    return name, False


class ReleasedWeight(torch.Tensor):
    """A weight whose memory nvfp4_compile freed after repacking it (release_source_weights=True). Metadata
    (shape, dtype, device) still answers and Dynamo can still trace it (recompiles fold from the cache);
    any eager use of its values raises instead of reading freed memory."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name, is_property = _func_name(func)
        if name == "__repr__":
            t = args[0]
            return f"ReleasedWeight(shape={tuple(t.shape)}, dtype={t.dtype}, device={t.device})"
        passthrough = (
            torch.compiler.is_compiling()  # Dynamo tracing a recompile: fake tensors, no data is read
            or (is_property and name not in _VALUE_PROPERTIES)
            or (not is_property and name in _METADATA_METHODS)
        )
        if passthrough:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        raise RuntimeError(
            f"nvfp4_compile: this weight's memory was released after repacking (release_source_weights=True); "
            f"'{name}' cannot use it. The compiled model keeps working; to read or change weights, compile "
            "without release_source_weights."
        )


class ReleasedParameter(ReleasedWeight, torch.nn.Parameter):
    """A released nn.Parameter. ReleasedWeight comes first in the bases: Parameter's own __torch_function__
    is the disabled one and would otherwise win."""


def release(t: torch.Tensor) -> int:
    """Free t's storage and turn it into a ReleasedWeight in place (same object, so modules keep it and
    Dynamo's guards still match it). Returns the bytes freed."""
    if isinstance(t, ReleasedWeight):
        return 0
    if type(t) not in (torch.Tensor, torch.nn.Parameter):
        raise TypeError(f"release_source_weights: cannot release a {type(t).__name__} (only plain tensors/parameters)")
    storage = t.untyped_storage()
    freed = storage.nbytes()
    storage.resize_(0)
    t.__class__ = ReleasedParameter if isinstance(t, torch.nn.Parameter) else ReleasedWeight
    return freed
