"""OpenVINO int8 of torchvision's MobileNetV2, two ways, on this CPU: our calibrated QDQ ONNX model
converted to IR (what ``export --format openvino --int8`` writes) against NNCF's post-training
quantization of the fp32 IR (issue 31 asks for NNCF's where it measures better).  Latency at batch 1
and 2 threads in alternating rounds in one process, beside ONNX Runtime fp32 of the same network;
top-1 on imagenet-sample's 1,000 images; the same calibration photos for both.

    pip install nncf        # not one of the library's extras
    python benchmarks/openvino_nncf.py 200          # calibration images
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from imagenet_v2 import torchvision_v2_and_images  # benchmarks/, beside this script

from mobilenets.cost.latency import alternating_ms
from mobilenets.export import export_onnx, quantize_onnx
from mobilenets.export.ort import OnnxClassifier
from mobilenets.runtimes.bench import cpu_description


def main() -> None:
    import nncf
    import openvino as ov

    count = int(sys.argv[1])
    model, info, calibration, batches, labels = torchvision_v2_and_images(count)
    print(cpu_description(), f"openvino {ov.__version__}, nncf {nncf.__version__}; {count} calibration images")
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": 2}
    with tempfile.TemporaryDirectory() as tmp:
        fp32_onnx, int8_onnx = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        export_onnx(model, fp32_onnx, info=info, dynamic_batch=True)
        quantize_onnx(fp32_onnx, int8_onnx, calibration, model=model)
        fp32_ir = ov.convert_model(str(fp32_onnx))
        samples = nncf.Dataset([image[None].float().numpy() for image in calibration])
        nncf_ir = nncf.quantize(fp32_ir, samples, subset_size=count)
        compiled = {
            "openvino fp32": core.compile_model(fp32_ir, "CPU", {**config, "INFERENCE_PRECISION_HINT": "f32"}),
            "openvino int8 (our QDQ model)": core.compile_model(ov.convert_model(str(int8_onnx)), "CPU", config),
            "openvino int8 (NNCF)": core.compile_model(nncf_ir, "CPU", config),
        }
        ort_fp32 = OnnxClassifier(fp32_onnx, threads=2)
        image = calibration[:1].float()
        runners = {"onnxruntime fp32": lambda: ort_fp32(image)}
        runners.update({name: (lambda c=c: c(image.numpy())) for name, c in compiled.items()})
        engines = {name: name.split()[0] for name in runners}
        for run in runners.values():  # warm up
            for _ in range(10):
                run()
        times = {name: float(np.median(ms)) for name, ms in alternating_ms(runners, rounds=7, runs=50, engines=engines).items()}
        for name, run in compiled.items():
            logits = torch.cat([torch.from_numpy(np.asarray(run(x.numpy())[0])) for x, _ in batches])
            top1 = 100 * (logits.argmax(1) == labels).float().mean().item()
            ratio = times[name] / times["onnxruntime fp32"]
            print(f"{name}: {times[name]:.2f} ms ({ratio:.2f}x ORT fp32), top-1 {top1:.1f}%")
        print(f"onnxruntime fp32: {times['onnxruntime fp32']:.2f} ms")


if __name__ == "__main__":
    main()
