"""The best run's per-layer sparsity: the target each layer was given and what it reached.

A pruned run records in metrics.json, per pruned layer, the target `prune.allocation` gave it
(`pruning.layers.<name>.target`) next to the measured sparsity; results.json leaves the
per-layer table out, so it is read from the run's folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from compactcnn.report.formatting import integer, sparsity, text
from compactcnn.report.pieces import Heading, Paragraph, Piece, Table
from compactcnn.report.results import Row, run_dir


def layer_target_pieces(sweep_dir: Path, best: Row) -> list[Piece]:
    """A table of per-layer target vs measured sparsity of the best run; [] without targets.

    Args:
        sweep_dir: The sweep directory.
        best: The chosen row.
    """
    path = run_dir(sweep_dir, best) / "metrics.json"
    if not path.is_file():
        return []
    try:
        pruning = json.loads(path.read_text()).get("pruning") or {}
    except (json.JSONDecodeError, AttributeError):
        return []
    layers = pruning.get("layers") if isinstance(pruning, dict) else None
    rows = [
        [
            name,
            integer(entry.get("params")),
            sparsity(entry["target"]),
            sparsity(entry.get("sparsity")),
        ]
        for name, entry in (layers or {}).items()
        if isinstance(entry, dict) and "target" in entry
    ]
    if not rows:
        return []
    return [
        Heading("Per-layer targets of the best model", level=3),
        Paragraph(
            f"Run {best['name']} shared its target of {sparsity(pruning.get('target_sparsity'))} "
            f"among its pruned layers with the `{text(pruning.get('allocation', 'uniform'))}` "
            "allocation (`prune.allocation`): each layer's target and the share of zeros it "
            "reached (weights are the layer's kernel weights)."
        ),
        Table(["layer", "weights", "target", "measured"], rows, fold=True),
    ]
