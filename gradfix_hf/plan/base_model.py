"""θ_B as the task model, loaded for the stages that run it (votes, held-out scores, sample selection)."""
from __future__ import annotations

import torch

from .roles import SOURCE_FT, TARGET
from .transport_plan import TransportPlan


def load_base_model(plan: TransportPlan, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """θ_B as the task model in ``dtype`` (fp32 unless the vote asks for less), with tensors absent from θ_B (a new
    head) taken from θ_A^ft."""
    # built in ``dtype`` (as from_pretrained(dtype=...) does): buffers computed in float32 (RoPE's inv_freq) stay so
    model = plan.layout.model_class.from_config(plan.layout.config, dtype=dtype)
    if dtype == torch.float32:
        model.float()
    state = {}
    for name in plan.layout.shapes:
        role = SOURCE_FT if name in plan.copied_from_finetune else TARGET
        state[name] = plan.raw_tensor(role, name)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {alias for aliases in plan.layout.aliases.values() for alias in aliases}
    left = [m for m in missing if m not in tied]
    if left or unexpected:
        raise RuntimeError(f"internal: could not load θ_B into {type(model).__name__}: missing {left[:3]}, "
                           f"unexpected {unexpected[:3]}")
    model.tie_weights()
    return model.eval()
