"""The int8 export's range search builds hundreds of ONNX Runtime sessions, each run once: with their
worker threads sleeping between tasks (``ort_session(run_once=True)``) against the default spinning
workers, alternating in one process, and the two int8 files compared byte for byte.

    python benchmarks/range_search_sessions.py NAME WIDTH RESOLUTION CALIBRATION_IMAGES ROUNDS
    python benchmarks/range_search_sessions.py mobilenet_v2 0.35 64 8 2
"""

import sys
import tempfile
import time
from pathlib import Path

import torch

import mobilenets
from mobilenets.data import calibration_images
from mobilenets.export import ort as ORT
from mobilenets.export import ptq as PTQ
from mobilenets.export.onnx import export_onnx
from mobilenets.export.quantize import quantize_onnx
from mobilenets.predict import default_data_info
from mobilenets.runtimes.bench import cpu_description

orig = ORT.ort_session


def plain(path, threads=None, *, run_once=False):
    return orig(path, threads)


tmp = Path(tempfile.mkdtemp())
name, width, res, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = mobilenets.create_model(name, width_mult=width).eval()
info = default_data_info(model).replace(resolution=res)
export_onnx(model, tmp / "f.onnx", info=info, dynamic_batch=True, check_input=torch.rand(1, 3, res, res))
cal = calibration_images(
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco128" / "images",
    style="imagenet",
    resolution=res,
    count=count,
)
times = {"spinning (before)": [], "run_once (after)": []}
results = {}
for r in range(int(sys.argv[5])):
    for label in times:
        PTQ.ort_session = plain if label.startswith("spinning") else orig
        t = time.perf_counter()
        quantize_onnx(tmp / "f.onnx", tmp / f"{r}{label[:3]}.onnx", cal, model=model)
        times[label].append(time.perf_counter() - t)
        results[label] = (tmp / f"{r}{label[:3]}.onnx").read_bytes()
for label, seconds in times.items():
    print(f"{label}: " + ", ".join(f"{x:.1f}" for x in seconds) + " s")
print(cpu_description(), f"torch {torch.__version__}; {name} x{width} at {res}, {count} calibration images")
print("identical files:", len(set(results.values())) == 1)
