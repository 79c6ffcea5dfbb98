"""Small helpers shared by tests (test code, kept apart from the benchmarks' own helpers)."""

import io
import socket
import tarfile
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from compactcnn.cli import main
from compactcnn.data.sample import SAMPLE_PATH


def free_ports(count: int) -> list[int]:
    """Loopback ports free right now, for the TF_CONFIG of local worker processes.

    Args:
        count: How many distinct ports to find.

    Returns:
        `count` port numbers that were free on 127.0.0.1 when checked.
    """
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def one_line_error(capsys, argv: list[str], expected: str) -> str:
    """Runs the CLI in-process; asserts exit 2 and a one-line `error:` naming `expected`.

    Returns:
        The error line.
    """
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ")
    assert "\n" not in err and "Traceback" not in err
    assert expected in err
    return err


def sample_test_set():
    """Decodes the sample's test images here, independently of compactcnn's loader."""
    images, labels = [], []
    with tarfile.open(SAMPLE_PATH) as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and "/test/" in f"/{m.name}"),
            key=lambda m: m.name,
        )
        classes = sorted({Path(m.name).parent.name for m in members})
        for member in members:
            blob = tar.extractfile(member).read()
            images.append(np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")))
            labels.append(classes.index(Path(member.name).parent.name))
    return np.stack(images), np.array(labels), classes


def independent_tflite_accuracy(path, images, labels):
    """Feeds raw 0-255 pixels one at a time, reading the input quantization from the file."""
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    output = interpreter.get_output_details()[0]["index"]
    correct = 0
    for image, label in zip(images, labels, strict=True):
        value = image[None].astype(np.float32)
        if detail["dtype"] != np.float32:
            scale, zero_point = detail["quantization"]
            value = np.round(value / scale + zero_point)
            limits = np.iinfo(detail["dtype"])
            value = np.clip(value, limits.min, limits.max).astype(detail["dtype"])
        interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(output)[0]) == label)
    return correct / len(labels)
