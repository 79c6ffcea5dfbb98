"""Re-measures every exported file of a sweep on the CIFAR-10 test images, without compactcnn.

Reads the JPEG archive with tarfile and Pillow, runs each `.tflite` file with ai-edge-litert one
image at a time (raw 0-255 pixels, quantized with the file's own input scale where the input is
integer), and compares with the sweep's results.csv.

    python docs/results/seed-study/evaluate_independently.py runs/sweeps/seed_cpu \
        --archive ../shared/data/cifar10-jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import tarfile
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image


def test_images(archive: Path) -> tuple[np.ndarray, np.ndarray]:
    """The `test/<class>/*.jpg` images as uint8 RGB and labels, classes in sorted order."""
    found: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) >= 3 and parts[-3] == "test":
                data = tar.extractfile(member).read()
                found.setdefault(parts[-2], []).append((member.name, data))
    classes = sorted(found)
    images, labels = [], []
    for label, name in enumerate(classes):
        for _, data in sorted(found[name]):
            images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            labels.append(label)
    return np.stack(images), np.array(labels)


def accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of one `.tflite` file, batch 1."""
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    output = interpreter.get_output_details()[0]["index"]
    correct = 0
    for image, label in zip(images, labels, strict=True):
        value = image[None].astype(np.float32)
        if detail["dtype"] != np.float32:
            scale, zero_point = detail["quantization"]
            limits = np.iinfo(detail["dtype"])
            value = np.clip(np.round(value / scale + zero_point), limits.min, limits.max)
            value = value.astype(detail["dtype"])
        interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(output)[0]) == label)
    return correct / len(labels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--archive", type=Path, default=Path("../shared/data/cifar10-jpeg.tar.gz"))
    parser.add_argument("--tolerance", type=float, default=0.002, help="largest accepted gap")
    args = parser.parse_args()
    images, labels = test_images(args.archive)
    print(f"{len(labels)} test images, {labels.max() + 1} classes")
    with (args.sweep_dir / "results.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["status"] == "finished"]
    worst = 0.0
    for row in rows:
        for name in ("float32", "float16", "dynamic_int8", "int8"):
            reported = row.get(f"tflite.{name}.accuracy")
            if not reported:
                continue
            path = args.sweep_dir / row["run_dir"] / "tflite" / f"{name}.tflite"
            measured = accuracy(path, images, labels)
            gap = abs(measured - float(reported))
            worst = max(worst, gap)
            print(
                f"{row['name']:<28} {name:<13} reported {float(reported):.4f} "
                f"measured {measured:.4f} gap {gap:.4f}",
                flush=True,
            )
    print(f"largest gap: {worst:.4f} (accepted: {args.tolerance})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
