"""The runtime registry, the model chooser for a latency budget, and export --format auto."""

from __future__ import annotations

import json
import re

import pytest
import torch

import mobilenets
from mobilenets.cli import main
from mobilenets.cost import profile
from mobilenets.errors import ConfigError
from mobilenets.runtimes import (
    Runtime,
    bench_path,
    bench_paths,
    get_runtime,
    list_runtimes,
    register_runtime,
    runtime_for_file,
)
from mobilenets.runtimes.choose import Measured, _mark_front, choose, published_variants

from .conftest import SHARED_DATA


def test_every_runtime_serves_its_bench_paths_and_files():
    """Each bench path belongs to one runtime at one of its precisions; each file kind to one runtime."""
    names = {runtime.name for runtime in list_runtimes()}
    assert {"pytorch", "onnxruntime", "executorch", "openvino", "litert"} <= names
    for path, (runtime, precision) in bench_paths().items():
        assert precision in runtime.precisions and runtime.bench[path] == precision
    assert bench_path("openvino-int8") == (get_runtime("openvino"), "int8")
    suffixes = [runtime.suffix for runtime in list_runtimes() if runtime.suffix]
    assert len(suffixes) == len(set(suffixes))
    with pytest.raises(ConfigError, match="not an exported model"):
        runtime_for_file("m.pb")


def test_a_registered_runtime_reaches_bench_and_file_loading(tmp_path):
    """A runtime added from outside (as an entry point would) is one object: bench names and
    file kinds follow from it, with no other edit."""

    class Echo(Runtime):
        name, title, suffix = "echo", "Echo", ".echo"
        bench = {"echo": "fp32"}

        def load(self, path, *, threads=None):
            return type("Net", (), {"info": {"task": "classification"}, "path": path})()

    register_runtime(Echo())
    try:
        assert bench_path("echo")[0].name == "echo"
        (tmp_path / "m.echo").write_text("")
        assert runtime_for_file(tmp_path / "m.echo").name == "echo"
        assert mobilenets.runtimes.load_exported(tmp_path / "m.echo").path == tmp_path / "m.echo"
    finally:
        mobilenets.runtimes._RUNTIMES.pop("echo")  # noqa: SLF001 - the test's own registration


def test_export_takes_its_format_from_the_suffix_of_out(tmp_path, capsys, monkeypatch):
    """Without --format, 'export --out' picks the format whose runtime writes that suffix (ONNX where none
    does); a given --format wins, and a suffix no format writes is one line naming those that exist."""
    import mobilenets.cli.export_cmd as export_cmd
    from mobilenets.runtimes import format_for_file

    assert [format_for_file(f"m{suffix}") for suffix in (".onnx", ".pte", ".xml", ".tflite", ".bin", "")] == [
        "onnx", "executorch", "openvino", "litert", None, None]  # fmt: skip
    chosen = []
    def run_runtime(args, out, runtime, precision):  # where the runtime's own exporter would write
        chosen.append(runtime.name)
        return 0

    monkeypatch.setattr(export_cmd, "run_runtime", run_runtime)
    model = ["export", "--model", "mobilenet_v1", "--width-mult", "0.25", "--resolution", "32", "--random-weights"]
    for name in ("m.pte", "m.xml", "m.tflite"):
        main([*model, "--out", str(tmp_path / name)])
    main([*model, "--format", "executorch", "--out", str(tmp_path / "m.xml")])
    assert chosen == ["executorch", "openvino", "litert", "executorch"]
    assert main([*model, "--out", str(tmp_path / "m.bin")]) == 2
    assert ("--out should name an .onnx file, got " + str(tmp_path / "m.bin") + "; the other formats write .pte "
            "(--format executorch), .xml (--format openvino), .tflite (--format litert)") in capsys.readouterr().err
    assert main([*model, "--out", str(tmp_path / "m.onnx")]) == 0 and (tmp_path / "m.onnx").is_file()


def test_published_variants_are_the_zoos_tables_and_our_models_cost_what_they_publish():
    """V1's 16 and V2's 22 TF-slim checkpoints and V3's four; each built here has the published
    mult-adds (within 3 %: the authors round to the million and count the classifier's 1001 classes)."""
    variants = published_variants()
    assert [v.model for v in variants].count("mobilenet_v1") == 16
    assert [v.model for v in variants].count("mobilenet_v2") == 22 and len(variants) == 42
    best = max(variants, key=lambda v: v.top1)
    assert (best.model, best.width, best.top1) == ("mobilenet_v3_large", 1.0, 75.2)
    for v in variants[::3]:  # every third keeps the test quick; each family is sampled
        model = mobilenets.create_model(v.model, width_mult=v.width, resolution=v.resolution)
        measured = profile(model, (3, v.resolution, v.resolution)).mult_adds / 1e6
        assert measured == pytest.approx(v.published_mult_adds, rel=0.03, abs=1.0), v.label
    with pytest.raises(ConfigError, match="unknown family v4"):
        published_variants(["v4"])


def test_the_choice_is_the_most_accurate_variant_within_the_budget():
    variants = {v.label: v for v in published_variants(["v2"])}
    timed = [
        Measured(variants["mobilenet_v2 1x 224px"], 0, median_ms=4.0),
        Measured(variants["mobilenet_v2 0.75x 224px"], 0, median_ms=3.0),
        Measured(variants["mobilenet_v2 1x 160px"], 0, median_ms=2.5),  # 68.8 %: less accurate than 0.75x 224
        Measured(variants["mobilenet_v2 0.35x 96px"], 0, median_ms=None, error="failed"),
    ]
    _mark_front(timed)
    assert [m.on_front for m in timed] == [True, True, True, False]
    assert choose(timed, 3.2).variant.label == "mobilenet_v2 0.75x 224px"
    assert choose(timed, 2.6).variant.label == "mobilenet_v2 1x 160px"
    assert choose(timed, 1.0) is None
    slower_and_worse = Measured(variants["mobilenet_v2 0.5x 224px"], 0, median_ms=3.5)
    _mark_front([*timed, slower_and_worse])
    assert not slower_and_worse.on_front


def test_choose_command_times_v3_and_names_the_choice(tmp_path, capsys, quick_turns):
    out = tmp_path / "c"
    argv = ["choose", "--families", "v3", "--runtime", "pytorch", "--precision", "channels_last", "--runs", "3"]
    assert main([*argv, "--latency-ms", "100000", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "chosen for 100000 ms: mobilenet_v3_large 1x 224px" in printed and "published top-1" in printed
    saved = json.loads((out / "choose.json").read_text())
    assert saved["chosen"]["model"] == "mobilenet_v3_large" and len(saved["variants"]) == 4
    assert all(v["median_ms"] > 0 for v in saved["variants"]) and (out / "choose.png").stat().st_size > 10_000
    assert main([*argv, "--latency-ms", "0.0001"]) == 1
    # (which variant times fastest depends on the machine and its load: the message names the measured one)
    assert re.search(r"nothing meets 0.0001 ms here; the fastest is mobilenet_v3_\w+ [\d.]+x \d+px at [\d.]+ ms",
                     capsys.readouterr().out)  # fmt: skip


def test_a_paths_time_is_its_best_rounds_median():
    """A round that another runtime disturbed (LiteRT at twice its time for a whole round beside
    ONNX Runtime and OpenVINO, measured) does not decide the path's time; an undisturbed one does."""
    from mobilenets.runtimes.auto import best_round_median

    litert = [2.1, 2.0, 2.2, 5.3, 5.1, 5.6, 4.8, 4.6, 4.9]  # ms, three rounds of three runs
    assert best_round_median(litert, 3) == 2.1
    assert best_round_median([3.0, 1.0, 2.0, 9.0], 3) == 2.0  # a short last round counts as a round
    assert best_round_median([3.0, 1.0, 2.0, 9.0], 4) == 2.5


def test_each_file_is_timed_in_a_process_of_its_own(tmp_path):
    """Every file gets runs x rounds timings from its own process; a file that does not load gets
    its error line and does not stop the others."""
    pytest.importorskip("onnxruntime")
    from mobilenets.export import export_onnx
    from mobilenets.predict import default_data_info
    from mobilenets.runtimes.timing import time_in_processes

    model = mobilenets.create_model("mobilenet_v2", width_mult=0.35, resolution=32).eval()
    export_onnx(model, tmp_path / "good.onnx", info=default_data_info(model))
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    files = {name: ("onnxruntime", "fp32", tmp_path / f"{name}.onnx") for name in ("good", "bad")}
    times = time_in_processes(files, shape=(1, 3, 32, 32), threads=1, rounds=2, runs=3)
    assert len(times["good"]) == 6 and all(ms > 0 for ms in times["good"])
    assert isinstance(times["bad"], str) and "INVALID_PROTOBUF" in times["bad"]  # ONNX Runtime's own words


def test_timing_processes_started_before_a_failed_start_are_ended(monkeypatch):
    """When the second timing process cannot start, the first (already loading its file) is ended
    at once, not left waiting on its pipe for as long as the traceback is kept."""
    import subprocess
    import sys
    import tempfile

    from mobilenets.runtimes import timing

    waiting, logs = [], []

    def start(key, spec):
        if waiting:
            raise OSError("too many open files")
        process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)  # fmt: skip
        waiting.append(process)
        logs.append(tempfile.TemporaryFile(mode="w+"))
        return timing._Child(key, process, logs[-1])

    monkeypatch.setattr(timing._Child, "start", staticmethod(start))
    files = {name: ("onnxruntime", "fp32", f"{name}.onnx", (1, 3, 8, 8)) for name in ("a", "b")}
    with pytest.raises(OSError, match="too many open files") as raised:
        timing.TimingProcesses(files, threads=1, runs=1)
    assert raised.value and waiting[0].poll() is not None  # ended while the traceback still holds its pipes
    assert waiting[0].stdin.closed and logs[0].closed  # and its pipes and log file let go


def test_export_auto_writes_the_fastest_path_that_keeps_the_accuracy(tmp_path, capsys, quick_turns):
    """Every installed runtime x precision for one model, timed here; the chosen file is the
    fastest whose agreement with fp32 stays within the tolerance, written with its runtime's suffix."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    argv = ["export", "--format", "auto", "--model", "mobilenet_v2", "--width-mult", "0.35", "--resolution", "64",
            "--random-weights", "--runtimes", "onnxruntime,openvino", "--no-range-search", "--calibration",
            str(SHARED_DATA / "cifar10" / "test"), "--calibration-images", "8", "--out", str(tmp_path / "m")]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    chosen_file = next(p for p in tmp_path.iterdir() if p.stem == "m" and p.suffix in (".onnx", ".xml"))
    summary = json.loads(chosen_file.with_name(chosen_file.name + ".export.json").read_text())
    candidates = {c["path"]: c for c in summary["candidates"]}
    assert {"onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8"} <= set(candidates)
    fit = [c for c in candidates.values() if c["accuracy"] is not None and c["accuracy"] >= 100 - 0.5]
    chosen = candidates[summary["chosen"]]
    assert chosen["chosen"] and chosen["median_ms"] == min(c["median_ms"] for c in fit)
    assert summary["reference_accuracy"] == 100.0 and "<- chosen" in printed
    assert runtime_for_file(chosen_file).name == chosen["runtime"]
    exported = mobilenets.runtimes.load_exported(chosen_file)
    assert exported.info["resolution"] == 64


def test_bench_times_exported_files_in_processes_of_their_own(monkeypatch, quick_turns):
    """bench runs PyTorch's paths in its own process and every exported file in a timing process
    of its own (one per file and batch size, warmed up as asked), all in one alternation; a file
    whose process dies mid-way gets that error in its row and no figures."""
    pytest.importorskip("onnxruntime")
    from mobilenets.runtimes import bench, timing

    started = []
    real_start = timing._Child.start
    monkeypatch.setattr(timing._Child, "start", classmethod(
        lambda cls, key, spec: started.append(spec) or real_start(key, spec)))  # fmt: skip
    results = bench.run_bench(["mobilenet_v3_small"], backends=("eager", "onnxruntime"), batch_sizes=(1, 2),
                              resolution=32, runs=3, warmup=2, threads=(1,), memory=False)  # fmt: skip
    assert sorted((spec["runtime"], spec["shape"][0], spec["warmup"]) for spec in started) == [
        ("onnxruntime", 1, 2), ("onnxruntime", 1, 2), ("onnxruntime", 2, 2), ("onnxruntime", 2, 2)
    ]  # ours and torchvision's export, at both batch sizes  # fmt: skip
    assert len(results) == 8 and all(r.median_ms > 0 and not r.error for r in results)

    monkeypatch.setattr(timing.TimingProcesses, "turn", lambda self, key: self.errors.setdefault(key, "died") and [])
    results = bench.run_bench(["mobilenet_v3_small"], backends=("eager", "onnxruntime"), resolution=32, runs=1,
                              warmup=1, threads=(1,), memory=False)  # fmt: skip
    rows = {(r.source, r.backend): r for r in results}
    assert rows["mobilenets", "onnxruntime"].error == "died" and rows["mobilenets", "onnxruntime"].median_ms is None
    assert rows["mobilenets", "eager"].median_ms > 0 and not rows["mobilenets", "eager"].error


def test_rounds_that_mix_runtimes_wait_for_the_last_ones_threads(monkeypatch):
    """A LiteRT interpreter's threads still held a core 50 ms after its turn (ONNX Runtime timed
    next ran 12 % slower; benchmarks/engine_settle.py): the turns go runtime by runtime, and a turn
    that follows another runtime's waits longer than one that follows its own."""
    from mobilenets.cost import latency

    assert latency.SETTLE_BETWEEN_RUNTIMES_S >= 0.5 > latency.SETTLE_WITHIN_RUNTIME_S
    turns = []
    monkeypatch.setattr(latency.time, "sleep", lambda seconds: turns.append([seconds]))
    calls = {key: (lambda key=key: turns[-1].append(key)) for key in ("ort-fp32", "litert", "ort-int8")}
    engines = {"ort-fp32": "onnxruntime", "litert": "litert", "ort-int8": "onnxruntime"}
    times = latency.alternating_ms(calls, rounds=2, runs=1, engines=engines)
    between, within = latency.SETTLE_BETWEEN_RUNTIMES_S, latency.SETTLE_WITHIN_RUNTIME_S
    one_round = [[between, "ort-fp32"], [within, "ort-int8"], [between, "litert"]]
    assert turns == one_round * 2 and {key: len(ms) for key, ms in times.items()} == dict.fromkeys(calls, 2)
    turns.clear()
    latency.alternating_ms(calls, rounds=1, runs=1)  # one runtime: only its own threads to wait for
    assert [seconds for seconds, _ in turns] == [within] * 3


def test_the_table_of_fp32_only_paths_has_no_accuracy_column():
    """A detector's candidates are all fp32, each checked against PyTorch: no column of dashes."""
    from mobilenets.runtimes.auto import Candidate, candidates_table

    paths = [Candidate("onnxruntime", "onnxruntime", "fp32", 2.4), Candidate("litert", "litert", "fp32", 1.2, chosen=True)]
    lines = candidates_table(paths, None, None).splitlines()
    assert lines[0].split() == ["runtime", "path", "median", "ms", "x", "fastest"]
    assert lines[2].split() == ["litert", "1.20", "1.00", "<-", "chosen"] and lines[3].split() == ["onnxruntime", "2.40", "2.00"]
    scored = candidates_table([Candidate("onnxruntime", "onnxruntime", "fp32", 2.4, accuracy=83.8)], 83.8, "top-1 %")
    assert scored.splitlines()[0].split()[-2:] == ["top-1", "%"] and "83.80" in scored.splitlines()[2]


def test_without_scores_auto_chooses_only_a_path_that_computes_in_fp32():
    """A detector or segmenter exported without --eval-data has no score: bf16 (which moved the
    person detector's mAP50 by 1.2 points) is left out however fast, and the table says so."""
    from mobilenets.runtimes.auto import Candidate, pick, unscored_note

    def paths():
        return [Candidate("openvino-bf16", "openvino", "bf16", 1.0),
                Candidate("onnxruntime", "onnxruntime", "fp32", 2.0),
                Candidate("litert", "litert", "fp32", 1.5, error="RuntimeError: failed")]  # fmt: skip

    unscored = paths()
    chosen = pick(unscored, None, 0.5)
    assert chosen.path == "onnxruntime" and [c.chosen for c in unscored] == [False, True, False]
    assert unscored_note(unscored, chosen).startswith("openvino-bf16 ran 2.00x faster but computes in bf16")
    scored = paths()
    scored[0].accuracy, scored[1].accuracy = 9.0, 9.2
    assert pick(scored, 9.2, 0.5).path == "openvino-bf16"  # scored: within the tolerance, the fastest
    scored = paths()
    scored[0].accuracy, scored[1].accuracy = 8.6, 9.2
    assert pick(scored, 9.2, 0.5).path == "onnxruntime"
    assert unscored_note(paths()[1:], paths()[1]) is None  # nothing faster left out


def test_the_shared_int8_model_is_made_as_the_user_asked(tmp_path):
    """bench's and auto's ONNX Runtime/OpenVINO int8 candidates share one QDQ model, made with the
    options given (auto passes the command line's: --no-range-search was ignored)."""
    pytest.importorskip("onnxruntime")
    from mobilenets.export.ort import read_metadata
    from mobilenets.export.quantize import QuantizeOptions
    from mobilenets.predict import default_data_info
    from mobilenets.runtimes.bench import PreparedModel

    model = mobilenets.create_model("mobilenet_v2", width_mult=0.35, resolution=32).eval()
    info, images = default_data_info(model), torch.rand(4, 3, 32, 32)
    asked = QuantizeOptions(weight_rounding="nearest", range_search=False)
    made = read_metadata(PreparedModel(model, info, tmp_path, images, "asked", quantize=asked).int8())
    assert (made["weight_rounding"], made["range_search"]) == ("nearest", False)
