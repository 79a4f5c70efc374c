"""Does a LiteRT interpreter timed in turn beside ONNX Runtime slow ONNX Runtime down, and how long
must a turn wait for the other engine's threads to settle?  (cost.latency.SETTLE_BETWEEN_RUNTIMES_S)

    python benchmarks/engine_settle.py 4 0.05,0.5       # process pairs per pause, pauses (s)

Each pair is two fresh processes: ONNX Runtime fp32 MobileNetV2 alone in alternating rounds, then
with a LiteRT fp32 interpreter of the same network taking turns; ONNX Runtime's median ms of each.
Measured on AMD EPYC Zen 5, 2 cores: at 0.05 s, 2.79 ms alone against 3.15 with LiteRT (medians of 4
pairs, +12 %); at 0.5 s, 3.09 against 2.97 (no slowdown).
"""

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys, statistics, torch
import mobilenets
from mobilenets.cost import latency
from mobilenets.export.ort import OnnxClassifier
from mobilenets.runtimes import load_exported
folder, pause, with_litert = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
x = torch.rand(1, 3, 224, 224)
ort = OnnxClassifier(f"{folder}/m.onnx", threads=2)
calls = {"ort": lambda: ort(x)}
if with_litert:
    lite = load_exported(f"{folder}/m.tflite", threads=2)
    calls["litert"] = lambda: lite(x)
for call in calls.values():
    for _ in range(10):
        call()
latency.SETTLE_BETWEEN_RUNTIMES_S = pause  # what a turn after the other runtime's waits
times = latency.alternating_ms(calls, rounds=5, runs=30, engines={"ort": "onnxruntime", "litert": "litert"})
print(statistics.median(times["ort"]))
"""


def main() -> None:
    import mobilenets
    from mobilenets.export import export_onnx
    from mobilenets.predict import default_data_info
    from mobilenets.runtimes import get_runtime
    from mobilenets.runtimes.bench import cpu_description

    pairs, pauses = int(sys.argv[1]), [float(p) for p in sys.argv[2].split(",")]
    print(cpu_description())
    with tempfile.TemporaryDirectory() as folder:
        model = mobilenets.create_model("mobilenet_v2").eval()
        info = default_data_info(model)
        export_onnx(model, Path(folder) / "m.onnx", info=info)
        get_runtime("litert").export(model, Path(folder) / "m.tflite", info=info)
        for pause in pauses:
            alone, beside = [], []
            for _ in range(pairs):
                for flag, into in (("0", alone), ("1", beside)):
                    out = subprocess.run([sys.executable, "-c", CHILD, folder, str(pause), flag],
                                         capture_output=True, text=True, check=True).stdout  # fmt: skip
                    into.append(float(out.split()[-1]))
            print(f"pause {pause:g} s: ONNX Runtime fp32 {statistics.median(alone):.2f} ms alone, "
                  f"{statistics.median(beside):.2f} ms with LiteRT taking turns")  # fmt: skip


if __name__ == "__main__":
    main()
