"""Tactic selection for ops that have several interchangeable implementations (docs/tactics.md).

A *tactic* computes the op; a `TacticSet` is the op's tactics plus a fallback. `TacticSelector.select`
returns the fastest tactic for a `ProblemKey` (device, N, K, M bucket, dtype, detail): from its cache, else by
timing every tactic once (`measure(tactic) -> ms`, injected so the logic runs on the CPU in tests). A
tactic whose measurement raises is recorded as failed and never chosen. While a CUDA graph is being
captured nothing is measured: a cached choice or the set's fallback is used.

`TacticCache` keeps results in memory and in one JSON file per *scope* (device name + library version +
the set's signature) under $NVFP4_COMPILE_CACHE_DIR or ~/.cache/nvfp4_compile/. A file or entry that does
not fit the current scope and tactic names (another build, an upgrade, a hand edit) is ignored.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import statistics
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

log = logging.getLogger("nvfp4_compile.tactics")

CACHE_FORMAT = 1
CACHE_DIR_ENV = "NVFP4_COMPILE_CACHE_DIR"


@dataclass(frozen=True)
class Tactic:
    """One implementation. `applies(key)` False: the tactic is not built for that problem (e.g. a decode
    kernel at prefill M); it is recorded as failed with the reason, without being run or timed."""

    name: str
    run: Callable[..., torch.Tensor]
    applies: Callable[["ProblemKey"], bool] = lambda key: True
    not_applicable: str = ""  # the reason recorded when applies(key) is False


@dataclass(frozen=True)
class TacticSet:
    """The interchangeable implementations of one op. `build` identifies the code behind them (e.g. a hash
    of the compiled extension) so a rebuild gets a fresh cache scope."""

    op: str
    tactics: tuple[Tactic, ...]
    fallback: Tactic  # used while capturing a CUDA graph with nothing cached; need not be in `tactics`
    build: str = ""

    def __post_init__(self):
        names = [t.name for t in self.tactics]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"TacticSet {self.op!r}: tactic names must be unique and non-empty, got {names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tactics)

    @property
    def signature(self) -> str:
        text = json.dumps([self.op, self.names, self.fallback.name, self.build])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def get(self, name: str) -> Tactic:
        for t in (*self.tactics, self.fallback):
            if t.name == name:
                return t
        raise KeyError(f"TacticSet {self.op!r} has no tactic {name!r} (has {self.names})")


def m_bucket(m: int) -> int:
    """The power of two >= m that M is profiled at (1, 2, 4, ...)."""
    return 1 << max(int(m) - 1, 0).bit_length()


@dataclass(frozen=True)
class ProblemKey:
    device: str  # device name (with its SM count: a MIG slice is another device)
    n: int
    k: int
    m_bucket: int
    dtype: str
    detail: str = ""  # what else selects the problem (MoE: experts, top-k, activation)

    def entry_name(self) -> str:
        name = f"n={self.n},k={self.k},m={self.m_bucket},{self.dtype}"
        return f"{name},{self.detail}" if self.detail else name


@dataclass
class Choice:
    """What profiling found for one key: the winner, every tactic's median ms, and the tactics that raised."""

    best: str
    times_ms: dict[str, float]
    failed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"best": self.best, "times_ms": self.times_ms, "failed": self.failed}

    @classmethod
    def from_json(cls, data, names: tuple[str, ...]) -> "Choice | None":
        """Parse a cached entry; None unless it names only current tactics and its winner was measured."""
        try:
            best, times, failed = data["best"], dict(data["times_ms"]), dict(data.get("failed", {}))
            times = {str(k): float(v) for k, v in times.items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        # Every current tactic measured or failed, nothing else: an entry from another tactic set never fits.
        if best not in times or set(times) | set(failed) != set(names) or set(times) & set(failed):
            return None
        if not all(math.isfinite(v) and v >= 0 for v in times.values()):
            return None
        return cls(best, times, {str(k): str(v) for k, v in failed.items()})


@dataclass(frozen=True)
class Scope:
    """What cached timings are valid for: one device, one library version, one tactic set."""

    device: str
    version: str
    signature: str
    tactics: tuple[str, ...]

    def to_json(self) -> dict:
        return {"device": self.device, "version": self.version, "signature": self.signature,
                "tactics": list(self.tactics)}

    @property
    def file_id(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:20]


def default_cache_dir() -> str:
    return os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "nvfp4_compile")


class TacticCache:
    """Choices per scope, in memory and on disk. directory=None: $NVFP4_COMPILE_CACHE_DIR or
    ~/.cache/nvfp4_compile, read when a scope is first used; persist=False keeps everything in memory."""

    def __init__(self, directory: str | None = None, persist: bool = True):
        self._directory = directory
        self.persist = persist
        self._scopes: dict[Scope, dict[str, Choice]] = {}
        self._lock = threading.Lock()

    def directory(self) -> str:
        return self._directory or default_cache_dir()

    def path(self, scope: Scope) -> str:
        return os.path.join(self.directory(), f"gemm_tactics-{scope.file_id}.json")

    def lookup(self, scope: Scope, key: ProblemKey) -> Choice | None:
        with self._lock:
            return self._entries(scope).get(key.entry_name())

    def entries(self, scope: Scope) -> dict[str, Choice]:
        """Every choice of the scope (with persist: also what other processes wrote before it was first read)."""
        with self._lock:
            return dict(self._entries(scope))

    def store(self, scope: Scope, key: ProblemKey, choice: Choice) -> None:
        with self._lock:
            self._entries(scope)[key.entry_name()] = choice
            if self.persist:
                self._save(scope)

    def _entries(self, scope: Scope) -> dict[str, Choice]:
        if scope not in self._scopes:
            self._scopes[scope] = self._read_file(scope) if self.persist else {}
        return self._scopes[scope]

    def _read_file(self, scope: Scope) -> dict[str, Choice]:
        path = self.path(scope)
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("nvfp4_compile: ignoring unreadable tactic cache %s (%s)", path, exc)
            return {}
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("scope") != scope.to_json():
            log.info("nvfp4_compile: ignoring tactic cache %s: written for another scope or format", path)
            return {}
        entries = {}
        for name, raw in (data.get("entries") or {}).items():
            choice = Choice.from_json(raw, scope.tactics)
            if choice is None:
                log.info("nvfp4_compile: ignoring cached entry %s in %s: does not fit the tactic set", name, path)
            else:
                entries[str(name)] = choice
        return entries

    def _save(self, scope: Scope) -> None:
        """Merge with what other processes wrote meanwhile, then replace the file atomically."""
        entries = {**self._read_file(scope), **self._scopes[scope]}
        self._scopes[scope] = entries
        data = {"format": CACHE_FORMAT, "scope": scope.to_json(),
                "entries": {name: c.to_json() for name, c in sorted(entries.items())}}
        path = self.path(scope)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".gemm_tactics-", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("nvfp4_compile: could not write tactic cache %s (%s); keeping results in memory", path, exc)


def is_capturing() -> bool:
    """True while the current CUDA stream is capturing a graph (never profile then)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class TacticSelector:
    """Chooses a tactic per problem; profiles on first need (never while capturing) and caches."""

    def __init__(self, tactic_set: TacticSet, version: str, cache: TacticCache | None = None,
                 capturing: Callable[[], bool] = is_capturing):
        self.tactic_set = tactic_set
        self.version = version
        self.cache = cache if cache is not None else TacticCache()
        self.capturing = capturing
        self._profile_lock = threading.Lock()

    def scope(self, device: str) -> Scope:
        ts = self.tactic_set
        return Scope(device, self.version, ts.signature, ts.names)

    def choice(self, key: ProblemKey) -> Choice | None:
        """The cached choice for key, if any (no profiling)."""
        return self.cache.lookup(self.scope(key.device), key)

    def choices(self, device: str) -> dict[str, Choice]:
        """Every cached choice on device, by problem (ProblemKey.entry_name)."""
        return self.cache.entries(self.scope(device))

    def select(self, key: ProblemKey, measure: Callable[[Tactic], float]) -> Tactic:
        choice = self.choice(key)
        if choice is None:
            if self.capturing():
                log.info("nvfp4_compile: %s %s first seen while capturing a CUDA graph; using %r unprofiled",
                         self.tactic_set.op, key.entry_name(), self.tactic_set.fallback.name)
                return self.tactic_set.fallback
            with self._profile_lock:
                choice = self.choice(key) or self._profile(key, measure)
        return self.tactic_set.get(choice.best)

    def _profile(self, key: ProblemKey, measure: Callable[[Tactic], float]) -> Choice:
        times, failed = {}, {}
        for tactic in self.tactic_set.tactics:
            if not tactic.applies(key):
                failed[tactic.name] = f"not applicable: {tactic.not_applicable}"
                continue
            try:
                ms = float(measure(tactic))
                if not math.isfinite(ms) or ms < 0:
                    raise ValueError(f"measured {ms} ms")
                times[tactic.name] = ms
            except Exception as exc:  # a tactic that cannot run this problem is dropped, not fatal
                failed[tactic.name] = f"{type(exc).__name__}: {exc}"
                log.warning("nvfp4_compile: %s tactic %r dropped for %s: %s", self.tactic_set.op, tactic.name,
                            key.entry_name(), failed[tactic.name])
        if not times:
            raise RuntimeError(f"nvfp4_compile: every {self.tactic_set.op} tactic failed for {key}: {failed}")
        choice = Choice(min(times, key=times.get), times, failed)
        log.info("nvfp4_compile: %s %s on %s -> %s (%s)", self.tactic_set.op, key.entry_name(), key.device,
                 choice.best, ", ".join(f"{n} {t:.4f} ms" for n, t in sorted(times.items(), key=lambda x: x[1])))
        self.cache.store(self.scope(key.device), key, choice)
        return choice


class SharedSelector:
    """One op's process-wide selector: made on first use from make_tactic_set() and the library version
    (cache: $NVFP4_COMPILE_CACHE_DIR or ~/.cache/nvfp4_compile), replaceable, e.g. to use another cache."""

    def __init__(self, make_tactic_set: Callable[[], TacticSet], version: Callable[[], str]):
        self._make_tactic_set = make_tactic_set
        self._version = version
        self._selector: TacticSelector | None = None

    def get(self) -> TacticSelector:
        if self._selector is None:
            self._selector = TacticSelector(self._make_tactic_set(), self._version())
        return self._selector

    def set(self, new: TacticSelector | None) -> None:
        """None: a fresh default selector on next use."""
        self._selector = new


# ----------------------------------------------------------------------------------------------------
# Timing on a CUDA device
# ----------------------------------------------------------------------------------------------------


def cuda_median_ms(fn: Callable[[], object], device: torch.device, budget_ms: float = 25.0, min_reps: int = 5,
                   max_reps: int = 50) -> float:
    """Median device time of fn() in ms with a cold L2 (a buffer of 4x the L2 size is overwritten before each
    repetition, which also lets the host queue the next launch ahead of the device). CUDA events bracket each
    call. Repetitions: as many as fit in budget_ms, within [min_reps, max_reps]."""
    props = torch.cuda.get_device_properties(device)
    flush = torch.empty(max(4 * getattr(props, "L2_cache_size", 0), 64 << 20), dtype=torch.uint8, device=device)
    fn()  # warm-up: lazy init, workspace allocation; raises here if the tactic cannot run
    first_start, first_end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    flush.zero_()
    first_start.record()
    fn()
    first_end.record()
    first_end.synchronize()
    estimate = max(first_start.elapsed_time(first_end), 1e-3)
    reps = int(min(max_reps, max(min_reps, budget_ms // estimate)))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) for start, end in events)
