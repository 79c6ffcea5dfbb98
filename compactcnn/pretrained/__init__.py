"""Where a trained model comes from: a run directory, a `.keras` file, or a model we ship.

`prune.from_run` (the model to fine-tune) and `distill.teacher` (the model to learn from) both
name a trained model in one of three ways, resolved here to a `.keras` file:

- `pretrained:NAME`: a dense model compactcnn trained on a full dataset and ships in this package
  (see `SHIPPED`), each in a folder of its own with the config.yaml and metrics.json of the run
  that made it and a README with the command that reproduces it. The quickstart fine-tunes
  `pretrained:resnet20_cifar10`, so a first run starts from real accuracy, not from scratch.
- a finished run directory (its `model.keras`; `metrics.json` marks it finished);
- a `.keras` file saved by tf_keras.

A finished run becomes a shipped model with `python -m compactcnn.pretrained RUN NAME` (see
`publish`), which copies its files and writes the README from its metrics.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import yaml

from compactcnn import files
from compactcnn.errors import UserError

PREFIX = "pretrained:"
FOLDER = Path(__file__).parent
# name -> what it is. Every name has a folder FOLDER/name holding a finished run (model.keras,
# metrics.json, config.yaml, classes.json, history.csv, README.md); tests/test_pretrained.py
# checks both ways.
SHIPPED: dict[str, str] = {
    "resnet20_cifar10": "Dense ResNet-20, 30 epochs of the default recipe at rate 0.2 on the "
    "JPEG CIFAR-10",
}


def shipped_run(name: str) -> Path:
    """The folder of a shipped model.

    Raises:
        UserError: When `name` is not shipped.
    """
    if name not in SHIPPED:
        raise UserError(
            f"unknown pretrained model '{name}'; choose one of "
            f"{', '.join(PREFIX + known for known in sorted(SHIPPED))}"
        )
    return FOLDER / name


def resolve(reference: str, key: str) -> Path:
    """Finds the `.keras` file a config value names.

    Args:
        reference: `pretrained:NAME`, a finished run directory or a `.keras` file.
        key: The config key that holds it (`prune.from_run`, `distill.teacher`), for messages.

    Returns:
        The path of the `.keras` file.

    Raises:
        UserError: When the name is unknown, the path is missing or not a `.keras` file, or the
            run directory is unfinished.
    """
    if reference.startswith(PREFIX):
        path = shipped_run(reference.removeprefix(PREFIX))
    else:
        path = Path(reference).expanduser()
    if path.is_dir():
        model_path = path / "model.keras"
        if not (path / "metrics.json").is_file() or not model_path.is_file():
            raise UserError(
                f"{key} '{reference}' is not a finished run (it holds no model.keras or no "
                "metrics.json); wait for it to finish or pass its model.keras file"
            )
        return model_path
    if not path.is_file():
        raise UserError(
            f"{key} '{reference}' does not exist; pass a finished run directory, a .keras file "
            f"or one of {', '.join(PREFIX + known for known in sorted(SHIPPED))}"
        )
    if path.suffix != ".keras":
        raise UserError(
            f"{key} '{reference}' is not a .keras file; pass a finished run directory or a "
            "model saved by tf_keras (model.save('model.keras'))"
        )
    return path


# What a shipped model keeps of its run: enough to use it, check it and repeat it (no .tflite
# files, backups or logs: the package stays small).
PUBLISHED_FILES = ("model.keras", "metrics.json", "config.yaml", "classes.json", "history.csv")
# Copied when the run has it: `compactcnn sensitivity RUN`'s measurement, which
# `prune.allocation: sensitivity` reads from the `from_run` folder.
OPTIONAL_FILES = ("sensitivity.csv",)


def publish(run_dir: str | Path, name: str, destination: Path = FOLDER) -> Path:
    """Copies a finished run into `destination/name` and writes its README from its metrics.

    Args:
        run_dir: A finished run directory.
        name: The name it ships under (`pretrained:NAME`).
        destination: The folder of shipped models.

    Returns:
        The folder written.
    """
    run_dir = Path(run_dir)
    resolve(str(run_dir), "run")  # a finished run, or a one-line error
    target = destination / name
    target.mkdir(parents=True, exist_ok=True)
    present = [file for file in OPTIONAL_FILES if (run_dir / file).is_file()]
    for file in (*PUBLISHED_FILES, *present):
        with files.atomic_path(target / file) as temporary:
            shutil.copyfile(run_dir / file, temporary)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    keras_accuracy = metrics["keras"]["test_accuracy"]
    tflite_accuracy = metrics.get("tflite", {}).get("float32", {}).get("accuracy")
    train = metrics["train"]
    data_config = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
    data = data_config.get("path") or data_config["name"]
    root = FOLDER.parent.parent
    relative = target.relative_to(root) if target.is_relative_to(root) else target
    lines = [
        f"# pretrained:{name}",
        "",
        f"{SHIPPED.get(name, name)}: {metrics['keras']['params']:,} parameters, "
        f"**{100 * keras_accuracy:.2f}%** on the test images of `{data}`"
        + (f" (float32 .tflite: {100 * tflite_accuracy:.2f}%)" if tflite_accuracy else "")
        + f", after {train['epochs']} epochs ({train['seconds'] / 60:.0f} min of training on "
        "2 CPU cores). Dense and float32: the starting point for pruning, clustering and",
        "quantization (`prune.from_run: pretrained:" + name + "`), or a distillation teacher.",
        "",
        "Repeat it (config.yaml is that run's resolved config; `resolved:` is ignored on load):",
        "",
        f"    compactcnn run {relative}/config.yaml --out runs/{name}",
        f"    python -m compactcnn.pretrained runs/{name} {name}",
        "",
        "Files: `model.keras` (tf_keras; raw 0-255 RGB pixels in, class probabilities out, the",
        "classes in `classes.json`), `config.yaml`, `metrics.json`, `history.csv` (per epoch).",
    ]
    if present:
        lines += [
            "`sensitivity.csv`: `compactcnn sensitivity` of this model (the accuracy drop of",
            "each layer pruned alone, on 2,000 of its training images), which",
            "`prune.allocation: sensitivity` reads.",
        ]
    files.write_text(target / "README.md", "\n".join(lines) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    """`python -m compactcnn.pretrained RUN NAME`: ships a finished run as `pretrained:NAME`."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("run_dir", help="a finished run directory")
    parser.add_argument("name", help="the name it ships under")
    args = parser.parse_args(argv)
    print(publish(args.run_dir, args.name))
    return 0
