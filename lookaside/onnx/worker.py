"""Exporting a graph in a separate process, so a serving process never runs the exporter.

``torch.export`` (under ``torch.onnx.export(dynamo=True)``) swaps global tracing state (fake
tensor and dispatch modes) while it runs: a second thread running eager PyTorch at the same time,
or an export on another thread later, can fail or crash (seen here as segmentation faults). The
server exports while it serves, so it exports in a child process: the backbone's weights are
written once per fingerprint beside the graphs (``backbone-<fingerprint>.safetensors``) and the
child loads them, exports, and exits; its memory (a copy of the backbone plus the tracer's) goes
with it. The parent waits with a timeout and reports the child's last lines if it fails.

    python -m lookaside.onnx.worker SPEC_JSON BACKBONE.safetensors OUT.onnx
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from lookaside.backbone import VisionTransformer
from lookaside.onnx.export import GraphSpec, StackSignature

__all__ = ["EXPORT_TIMEOUT_S", "export_in_child"]

EXPORT_TIMEOUT_S = 3600.0
"""Longest an export may take (ViT-B with eight stacks takes minutes on two cores)."""


def _weights(backbone: VisionTransformer, root: Path, fingerprint: str) -> Path:
    """The backbone's weights as a file the child loads (written once, atomically)."""
    from lookaside.backbones import save_backbone

    path = root / f"backbone-{fingerprint}.safetensors"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".backbone-{fingerprint}.{os.getpid()}.tmp"
        try:
            save_backbone(backbone, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def export_in_child(
    backbone: VisionTransformer,
    spec: GraphSpec,
    out: Path,
    *,
    root: Path,
    fingerprint: str,
    timeout_s: float = EXPORT_TIMEOUT_S,
) -> None:
    """Write ``spec``'s graph to ``out`` from a child process (see the module docstring)."""
    weights = _weights(backbone, root, fingerprint)
    cmd = [sys.executable, "-m", "lookaside.onnx.worker", json.dumps(asdict(spec)), str(weights)]
    try:
        done = subprocess.run(
            [*cmd, str(out)], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"exporting the graph took longer than {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise RuntimeError(f"the export process exited with {done.returncode}:\n{tail}")


def _spec(raw: str) -> GraphSpec:
    data = json.loads(raw)
    data["stacks"] = tuple(StackSignature(**s) for s in data["stacks"])
    data["image"] = tuple(data["image"]) if data["image"] is not None else None
    return GraphSpec(**data)


def main(argv: list[str]) -> int:
    from lookaside.backbones import load_backbone
    from lookaside.onnx.export import export_graph

    raw, weights, out = argv
    backbone = load_backbone(f"file:{weights}").eval()
    export_graph(backbone, _spec(raw), Path(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
