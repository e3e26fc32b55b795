"""The global model as files, for MLflow: peft or Hugging Face format, or a safetensors state.

A peft model is saved with ``save_pretrained`` (the adapter, loadable with
``peft.PeftModel.from_pretrained``), a Hugging Face model likewise (loadable with its Auto
class), with tensors attached to the trainable state (FLoRA's merged deltas) in
``attached_state.safetensors`` beside them; any other torch module (``model.arch`` logreg, mf,
ncf) as ``model.safetensors``, its ``state_dict`` (load it into the model
``fedray.models.build_model`` builds).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from fedray.models.state import attached_state, is_peft


def is_hf(model: torch.nn.Module) -> bool:
    """Whether `model` is a Hugging Face `PreTrainedModel` (without importing transformers)."""
    if "transformers" not in sys.modules:
        return False
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def export_files(model: torch.nn.Module) -> dict[str, bytes]:
    """{relative file name: bytes} of `model` as it is now (see the module docstring)."""
    if not (is_peft(model) or is_hf(model)):
        from safetensors.torch import save

        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        return {"model.safetensors": save(state)}
    with tempfile.TemporaryDirectory(prefix="fedray-export-") as tmp:
        if is_peft(model):  # no Hub lookup for resized embeddings
            model.save_pretrained(tmp, save_embedding_layers=False)
        else:
            model.save_pretrained(tmp)
        attached = attached_state(model)  # e.g. FLoRA's merged deltas, beside the adapter
        if attached:
            from safetensors.torch import save_file

            tensors = {k: t.detach().cpu().contiguous() for k, t in attached.items()}
            save_file(tensors, str(Path(tmp) / "attached_state.safetensors"))
        root = Path(tmp)
        return {
            str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
        }
