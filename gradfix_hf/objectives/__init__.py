"""Per-sample losses on the target model, one module per task family, registered by recipe name."""
from __future__ import annotations

from .base import LabelSpace, Objective
from .clip_zero_shot import CLIPZeroShotObjective
from .sequence_classification import SequenceClassificationObjective
from .text_to_text import CausalLMObjective, Seq2SeqObjective
from .user_callable import CallableObjective

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (SequenceClassificationObjective, Seq2SeqObjective, CausalLMObjective,
                              CLIPZeroShotObjective, CallableObjective)
}

__all__ = ["OBJECTIVES", "Objective", "LabelSpace", "SequenceClassificationObjective", "Seq2SeqObjective",
           "CausalLMObjective", "CLIPZeroShotObjective", "CallableObjective"]
