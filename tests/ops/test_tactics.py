"""Tactic registry, selector and cache (ops/tactics.py) with fake tactics and injected timings; the gemm
argument of nvfp4::marlin_gemm and the backend option that feeds it (CPU)."""
import json
import os

import pytest
import torch

import nvfp4_compile  # noqa: F401  registers torch.ops.nvfp4.*
from nvfp4_compile.backend import BackendOptions
from nvfp4_compile.formats import quantize_nvfp4
from nvfp4_compile.ops.tactics import (
    CACHE_DIR_ENV,
    Choice,
    ProblemKey,
    SharedSelector,
    Tactic,
    TacticCache,
    TacticSelector,
    TacticSet,
    m_bucket,
)

ops = torch.ops.nvfp4
KEY = ProblemKey("Fake GPU (132 SMs)", n=4096, k=4096, m_bucket=64, dtype="bf16")


def fake_set(names=("a", "b", "c"), build="build-1"):
    return TacticSet("fake_gemm", tuple(Tactic(n, lambda n=n: n) for n in names), Tactic("fallback", lambda: "fallback"),
                     build=build)


class Timings:
    """measure(tactic) from a table; a value that is an exception is raised. Records every call."""

    def __init__(self, table):
        self.table = table
        self.calls = []

    def __call__(self, tactic):
        self.calls.append(tactic.name)
        value = self.table[tactic.name]
        if isinstance(value, Exception):
            raise value
        return value


def make_selector(tmp_path, tactic_set=None, version="v1", capturing=lambda: False, persist=True):
    cache = TacticCache(str(tmp_path), persist=persist)
    return TacticSelector(tactic_set or fake_set(), version, cache, capturing=capturing)


@pytest.mark.parametrize("m,bucket", [(0, 1), (1, 1), (2, 2), (3, 4), (16, 16), (17, 32), (1000, 1024), (4096, 4096)])
def test_m_bucket_is_next_power_of_two(m, bucket):
    assert m_bucket(m) == bucket


def test_fastest_tactic_chosen_and_profiled_once(tmp_path):
    sel = make_selector(tmp_path)
    timings = Timings({"a": 0.30, "b": 0.10, "c": 0.20})
    assert sel.select(KEY, timings).name == "b"
    assert sorted(timings.calls) == ["a", "b", "c"]
    assert sel.select(KEY, timings).name == "b"  # cached: no second profile
    assert len(timings.calls) == 3
    other = ProblemKey(KEY.device, 4096, 4096, 128, "bf16")
    assert sel.select(other, Timings({"a": 0.1, "b": 0.2, "c": 0.3})).name == "a"  # another M bucket: its own entry
    assert sel.choice(KEY).times_ms == {"a": 0.30, "b": 0.10, "c": 0.20}


def test_raising_tactic_is_dropped_never_chosen(tmp_path):
    sel = make_selector(tmp_path)
    timings = Timings({"a": 0.30, "b": RuntimeError("CUDA error: too many resources"), "c": float("nan")})
    assert sel.select(KEY, timings).name == "a"
    choice = sel.choice(KEY)
    assert choice.best == "a" and set(choice.failed) == {"b", "c"} and "too many resources" in choice.failed["b"]
    assert "b" not in choice.times_ms and "c" not in choice.times_ms
    # The dropped tactics stay dropped after a reload from disk.
    reloaded = make_selector(tmp_path).choice(KEY)
    assert reloaded.best == "a" and set(reloaded.failed) == {"b", "c"}


def test_tactic_not_built_for_the_problem_is_never_run(tmp_path):
    """A tactic whose applies(key) is False (the decode kernel at a prefill M) is recorded as failed with its
    reason, without a warm-up or timing run; the cache entry still covers every tactic name."""
    decode_only = Tactic("d", lambda: "d", applies=lambda key: key.m_bucket <= 8, not_applicable="built for M <= 8")
    ts = TacticSet("fake_gemm", (Tactic("a", lambda: "a"), decode_only), Tactic("fallback", lambda: "fallback"))
    sel = make_selector(tmp_path, tactic_set=ts)
    timings = Timings({"a": 0.30, "d": 0.01})
    assert sel.select(KEY, timings).name == "a"  # KEY.m_bucket = 64
    assert timings.calls == ["a"]
    assert sel.choice(KEY).failed == {"d": "not applicable: built for M <= 8"}
    small = ProblemKey(KEY.device, KEY.n, KEY.k, 8, "bf16")
    assert sel.select(small, timings).name == "d" and timings.calls == ["a", "a", "d"]
    assert make_selector(tmp_path, tactic_set=ts).choice(KEY).best == "a"  # the entry reloads from disk


def test_decode_config_tactic_applies_to_small_m_only():
    from nvfp4_compile.ops import gemm_tactics

    tactic = gemm_tactics._marlin_tactic("marlin.gemv8", 4, gemm_tactics.CONFIG_MAX_M["gemv8"])
    assert [tactic.applies(ProblemKey(KEY.device, 4096, 4096, b, "bf16")) for b in (1, 8, 16, 4096)] == [
        True, True, False, False]
    assert gemm_tactics._marlin_tactic("marlin.m16", 0).applies(KEY)


@pytest.mark.parametrize("capability,runs", [((9, 0), True), ((8, 0), False), ((10, 0), False)])
def test_fit_tactic_needs_clusters_and_keeps_the_decode_m_limit(monkeypatch, capability, runs):
    """A `.fit` tactic is not profiled where the kernels do not split K in clusters (SM 9.x only; elsewhere it would
    launch what its plain config launches); a decode config's `.fit` keeps the config's M limit."""
    from nvfp4_compile.ops import gemm_tactics

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: capability)
    fit = gemm_tactics._marlin_tactic("marlin.gemv8.fit", 4 | 256, gemm_tactics.CONFIG_MAX_M["gemv8"],
                                      needs_clusters=True)
    assert [fit.applies(ProblemKey(KEY.device, 4096, 4096, b, "bf16")) for b in (1, 8, 16)] == [runs, runs, False]
    assert fit.not_applicable == "built for M <= 8; splits in thread-block clusters (SM 9.x only)"
    wg_fit = gemm_tactics._marlin_tactic("marlin.wg64x512.fit", 5 | 256, needs_clusters=True)
    assert wg_fit.applies(ProblemKey(KEY.device, 4096, 4096, 4096, "bf16")) == runs
    assert wg_fit.not_applicable == "splits in thread-block clusters (SM 9.x only)"


def test_every_tactic_failing_is_an_error(tmp_path):
    sel = make_selector(tmp_path)
    with pytest.raises(RuntimeError, match="every fake_gemm tactic failed"):
        sel.select(KEY, Timings({n: ValueError("bad shape") for n in "abc"}))
    assert sel.choice(KEY) is None


def test_capture_without_cache_uses_fallback_and_never_profiles(tmp_path):
    capturing = [True]
    sel = make_selector(tmp_path, capturing=lambda: capturing[0])
    timings = Timings({"a": 0.3, "b": 0.1, "c": 0.2})
    assert sel.select(KEY, timings).name == "fallback"
    assert timings.calls == [] and sel.choice(KEY) is None  # nothing measured, nothing cached
    capturing[0] = False  # the eager warm-up run profiles ...
    assert sel.select(KEY, timings).name == "b"
    capturing[0] = True  # ... and the capture that follows replays the cached choice
    assert sel.select(KEY, timings).name == "b" and len(timings.calls) == 3


def test_results_persist_across_processes(tmp_path):
    first = make_selector(tmp_path)
    first.select(KEY, Timings({"a": 0.3, "b": 0.1, "c": 0.2}))
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("gemm_tactics-") and files[0].endswith(".json")
    data = json.loads((tmp_path / files[0]).read_text())
    assert data["scope"]["device"] == KEY.device and data["scope"]["tactics"] == ["a", "b", "c"]
    assert data["entries"][KEY.entry_name()]["best"] == "b"
    second = make_selector(tmp_path)  # a new process: fresh memory, same directory
    timings = Timings({"a": 0.0, "b": 1.0, "c": 1.0})
    assert second.select(KEY, timings).name == "b" and timings.calls == []


@pytest.mark.parametrize("change", ["build", "version", "device", "tactic_names"])
def test_cache_of_another_scope_is_not_used(tmp_path, change):
    make_selector(tmp_path).select(KEY, Timings({"a": 0.3, "b": 0.1, "c": 0.2}))
    tactic_set, version, key = fake_set(), "v1", KEY
    if change == "build":
        tactic_set = fake_set(build="build-2")  # rebuilt extension
    elif change == "version":
        version = "v2"
    elif change == "device":
        key = ProblemKey("Other GPU (114 SMs)", KEY.n, KEY.k, KEY.m_bucket, KEY.dtype)
    else:
        tactic_set = fake_set(names=("a", "c", "d"))  # upgrade removed "b", added "d"
    sel = make_selector(tmp_path, tactic_set=tactic_set, version=version)
    timings = Timings({"a": 0.3, "b": 0.1, "c": 0.2, "d": 0.25})
    assert sel.select(key, timings).name in {"b", "c"} - ({"b"} if change == "tactic_names" else set())
    assert timings.calls, "expected a fresh profile"
    assert len(os.listdir(tmp_path)) == 2  # the old scope's file is left alone


def _only_cache_file(tmp_path):
    (path,) = [tmp_path / f for f in os.listdir(tmp_path)]
    return path


@pytest.mark.parametrize("edit", ["unknown_best", "missing_tactic", "foreign_tactic", "best_failed", "negative_time",
                                  "not_a_dict"])
def test_entries_that_do_not_fit_the_tactic_set_are_ignored(tmp_path, edit):
    make_selector(tmp_path).select(KEY, Timings({"a": 0.3, "b": 0.1, "c": 0.2}))
    path = _only_cache_file(tmp_path)
    data = json.loads(path.read_text())
    entry = data["entries"][KEY.entry_name()]
    if edit == "unknown_best":
        entry["best"] = "z"
    elif edit == "missing_tactic":
        del entry["times_ms"]["c"]
    elif edit == "foreign_tactic":
        entry["times_ms"]["z"] = 0.01
    elif edit == "best_failed":
        entry["failed"] = {"b": "RuntimeError"}
    elif edit == "negative_time":
        entry["times_ms"]["b"] = -1.0
    else:
        data["entries"][KEY.entry_name()] = ["b"]
    path.write_text(json.dumps(data))
    sel = make_selector(tmp_path)
    assert sel.choice(KEY) is None
    timings = Timings({"a": 0.1, "b": 0.3, "c": 0.2})
    assert sel.select(KEY, timings).name == "a" and len(timings.calls) == 3


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 999}), json.dumps([1, 2])])
def test_unreadable_or_foreign_cache_file_is_ignored_then_rewritten(tmp_path, content):
    make_selector(tmp_path).select(KEY, Timings({"a": 0.3, "b": 0.1, "c": 0.2}))
    path = _only_cache_file(tmp_path)
    path.write_text(content)
    sel = make_selector(tmp_path)
    assert sel.select(KEY, Timings({"a": 0.1, "b": 0.3, "c": 0.2})).name == "a"
    assert json.loads(path.read_text())["entries"][KEY.entry_name()]["best"] == "a"


def test_concurrent_writers_merge_entries(tmp_path):
    one, two = make_selector(tmp_path), make_selector(tmp_path)
    one.choice(KEY), two.choice(KEY)  # both loaded the (empty) scope before either wrote
    key2 = ProblemKey(KEY.device, 14336, 4096, 1, "bf16")
    one.select(KEY, Timings({"a": 0.3, "b": 0.1, "c": 0.2}))
    two.select(key2, Timings({"a": 0.1, "b": 0.3, "c": 0.2}))
    third = make_selector(tmp_path)
    assert third.choice(KEY).best == "b" and third.choice(key2).best == "a"


def test_memory_only_cache_writes_nothing(tmp_path):
    sel = make_selector(tmp_path, persist=False)
    assert sel.select(KEY, Timings({"a": 0.3, "b": 0.1, "c": 0.2})).name == "b"
    assert os.listdir(tmp_path) == [] and sel.choice(KEY).best == "b"


def test_cache_directory_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "envdir"))
    sel = TacticSelector(fake_set(), "v1", TacticCache(), capturing=lambda: False)
    sel.select(KEY, Timings({"a": 0.3, "b": 0.1, "c": 0.2}))
    assert len(os.listdir(tmp_path / "envdir")) == 1


def test_unwritable_cache_directory_keeps_results_in_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    sel = TacticSelector(fake_set(), "v1", TacticCache(str(blocker / "sub")), capturing=lambda: False)
    assert sel.select(KEY, Timings({"a": 0.3, "b": 0.1, "c": 0.2})).name == "b"
    assert sel.choice(KEY).best == "b"


def test_tactic_set_rules():
    with pytest.raises(ValueError, match="unique"):
        TacticSet("op", (Tactic("a", print), Tactic("a", print)), Tactic("f", print))
    ts = fake_set()
    assert ts.get("fallback").name == "fallback" and ts.names == ("a", "b", "c")
    assert fake_set(build="x").signature != fake_set(build="y").signature
    assert fake_set(names=("a", "b")).signature != ts.signature
    with pytest.raises(KeyError, match="no tactic 'z'"):
        ts.get("z")
    assert Choice.from_json({"best": "a", "times_ms": {"a": 1.0, "b": 2.0, "c": 3.0}}, ts.names).best == "a"


# ------------------------------------------------------------------------------------------------------
# nvfp4::marlin_gemm's gemm argument (CPU: one reference kernel, the argument is validated and ignored)
# ------------------------------------------------------------------------------------------------------


def _gemm_args(m=3, n=64, k=64):
    g = torch.Generator().manual_seed(5)
    w, sf, gs = quantize_nvfp4(torch.randn(n, k, generator=g))
    q, s = ops.marlin_repack(w, sf)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    return x, q, s, gs, None, n, k


def test_gemm_argument_on_cpu_same_result_for_every_choice():
    args = _gemm_args()
    ref = ops.marlin_gemm(*args)
    for gemm in ("auto", "marlin", "dequant"):
        assert torch.equal(ops.marlin_gemm(*args, gemm), ref)
        assert torch.equal(ops.marlin_gemm(*args, gemm=gemm), ref)
    torch.library.opcheck(ops.marlin_gemm.default, (*args, "dequant"))


def test_gemm_argument_is_validated_eager_and_fake():
    args = _gemm_args()
    with pytest.raises(ValueError, match="gemm must be one of"):
        ops.marlin_gemm(*args, "cublas")
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        assert ops.marlin_gemm(*fake, "dequant").shape == (3, 64)
        with pytest.raises(ValueError, match="gemm must be one of"):
            ops.marlin_gemm(*fake, "fast")


def test_backend_gemm_option():
    assert BackendOptions.parse(None, {}).gemm == "auto"
    for gemm in ("auto", "marlin", "dequant", "bf16"):
        assert BackendOptions.parse(None, {"gemm": gemm}).gemm == gemm
    with pytest.raises(ValueError, match="gemm must be one of"):
        BackendOptions.parse(None, {"gemm": "cutlass"})


@pytest.fixture
def rewritten_graphs(monkeypatch):
    """The marlin_gemm nodes of each graph the backend's pass manager rewrote."""
    import nvfp4_compile.backend as backend

    graphs, real = [], backend.PassManager.run

    def run(self, gm, ctx):
        result = real(self, gm, ctx)
        graphs.append([n for n in gm.graph.nodes if n.target is ops.marlin_gemm.default])
        return result

    monkeypatch.setattr(backend.PassManager, "run", run)
    return graphs


@pytest.mark.parametrize("gemm", ["auto", "marlin", "dequant"])
def test_compiled_graph_carries_the_gemm_choice(gemm, rewritten_graphs):
    """The linear pass writes the backend option into every marlin_gemm node it emits."""
    from nvfp4_compile import NVFP4Linear, backend_with

    torch._dynamo.reset()
    layer = NVFP4Linear.from_linear(torch.nn.Linear(64, 32).to(torch.bfloat16), act="nvfp4")
    compiled = torch.compile(layer, backend=backend_with(gemm=gemm))
    x = torch.randn(4, 64).to(torch.bfloat16)
    with torch.no_grad():
        out, ref = compiled(x), layer(x)
    assert out.shape == ref.shape and (out.float() - ref.float()).norm() < 0.2 * ref.float().norm()
    (nodes,) = rewritten_graphs
    assert len(nodes) == 1 and nodes[0].args[-1] == gemm


def test_shared_selector_is_made_once_and_replaceable():
    made = []

    def make_set():
        made.append(1)
        return TacticSet("fake_gemm", (Tactic("a", lambda: None),), fallback=Tactic("a", lambda: None))

    shared = SharedSelector(make_set, lambda: "v1")
    first = shared.get()
    assert shared.get() is first and len(made) == 1 and first.version == "v1"
    other = TacticSelector(make_set(), "v2", TacticCache(persist=False))
    shared.set(other)
    assert shared.get() is other
    shared.set(None)
    assert shared.get() not in (first, other) and len(made) == 3
