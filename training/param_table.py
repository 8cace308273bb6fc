"""The method / config / parameter-% table of the README, generated so it stays true.

    python -m training.param_table            # print the markdown table
    python -m training.param_table --write README.md   # replace the table between the markers

Counts are for ViT-B/16 on 128 x 512 spectrograms (the ESC-50 setting); percentages are of the
backbone's own parameters, adapter sites only (the head is listed apart: it depends on the task).
Audio-visual methods (AV-PEA) are counted on ViT-B/16 with its RGB patch kernel (224 x 224
frames), the backbone they need; their note splits the per-block adapters from the ``clip``
(temporal) site.
"""

from __future__ import annotations

from typing import Any

from lookaside import docblock
from lookaside.adapters import ADAPTERS, HeadConfig
from lookaside.backbone import VisionTransformer
from lookaside.backbone_config import BackboneConfig
from lookaside.backbones import PRESETS
from lookaside.bank import HEAD_PREFIX, AdapterBank
from lookaside.tasks import AV_EVENTS, CLIP, task_for

# The papers' configurations (LoAA Table 2, MoA Table 1, AAT, baselines).
PAPER_CONFIGS: list[tuple[str, dict[str, Any], str]] = [
    ("linear", {}, "linear probe"),
    ("bottleneck", {"rank": 24, "sites": ["attn"]}, "Pfeiffer, MoA paper's single adapter"),
    (
        "bottleneck",
        {"rank": 108, "sites": ["attn", "ffn"]},
        "Houlsby, LoAA paper's parallel adapter",
    ),
    ("lora", {"rank": 8, "alpha": 8.0}, "q and v"),
    ("convpass", {"rank": 8}, "attn + ffn"),
    ("loaa", {"rank": 36, "kernels": "attn:T"}, "LoAA Attn(T)"),
    ("loaa", {"rank": 36, "kernels": "ffn:F"}, "LoAA FFN(F)"),
    ("loaa", {"rank": 36, "kernels": "attn:T,ffn:F"}, "LoAA Attn(T) FFN(F)"),
    ("loaa", {"rank": 72, "kernels": "attn:T,ffn:F"}, "LoAA Attn(T) FFN(F)"),
    ("dense_moa", {"num_experts": 14, "rank": 1}, "Dense-MoA, Pfeiffer"),
    ("soft_moa", {"num_experts": 14, "rank": 1, "slots_per_expert": 1}, "Soft-MoA, Pfeiffer"),
    ("aat", {"rank": 64}, "spatial + MLP adapter"),
    ("prompt", {"num_tokens": 10}, "deep prompt tuning"),
    ("avpea", {"reduction": 8, "segments": 10}, "AV-PEA, audio + visual streams"),
]


def backbone_params(cfg: BackboneConfig) -> int:
    """Parameter count of a backbone of this shape."""
    return VisionTransformer(cfg).num_params


def table(cfg: BackboneConfig | None = None, num_classes: int = 50) -> str:
    """Markdown table of every paper configuration."""
    cfg = cfg or PRESETS["vit_base_patch16"]
    # The backbone each task kind's methods are counted on (AV-PEA needs the RGB patch kernel).
    counted_on = {CLIP.name: cfg, AV_EVENTS.name: PRESETS["vit_base_patch16_224"]}
    banks = {kind: AdapterBank(c) for kind, c in counted_on.items()}
    totals = {kind: backbone_params(c) for kind, c in counted_on.items()}
    total = totals[CLIP.name]
    head = HeadConfig(num_classes=num_classes)
    lines = [
        f"ViT-B/16 backbone: {total / 1e6:.2f}M parameters "
        "(1-channel patch embedding, 256 tokens).",
        "",
        "| method | config | note | adapter params | % of backbone | + head (50 classes) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for method, config, note in PAPER_CONFIGS:
        parsed = ADAPTERS[method].parse_config(config)
        kind = task_for(method).name
        shapes = banks[kind].expected_shapes(method, parsed, head)
        sites = sum(_numel(s) for k, s in shapes.items() if not k.startswith(HEAD_PREFIX))
        heads = sum(_numel(s) for k, s in shapes.items() if k.startswith(HEAD_PREFIX))
        sites_total = totals[kind]
        clip = sum(_numel(s) for k, s in shapes.items() if k.startswith("clip."))
        if clip:  # a clip (temporal) site besides the per-block ones
            note += (
                f"; of {sites_total / 1e6:.2f}M (RGB kernel): blocks {(sites - clip) / 1e6:.3f}M "
                f"({100 * (sites - clip) / sites_total:.2f} %) + temporal {clip / 1e6:.3f}M"
            )
        shown = parsed.model_dump(exclude_defaults=False, exclude={"layers"})
        cfg_text = ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items() if k != "variant")
        lines.append(
            f"| {method} | {cfg_text or '-'} | {note} | {sites / 1e6:.3f}M | "
            f"{100 * sites / sites_total:.2f} % | {heads / 1e3:.1f}K |"
        )
    return "\n".join(lines)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _fmt(value: object) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in sorted(value.items()))
    if isinstance(value, list | tuple):
        return "+".join(str(v) for v in value)
    return str(value)


def main(argv: list[str] | None = None) -> None:
    docblock.main("params", table, __doc__.split("\n")[0], argv)


if __name__ == "__main__":
    main()
