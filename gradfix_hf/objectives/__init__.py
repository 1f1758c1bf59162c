"""Per-sample losses on the target model, one module per task family, registered by recipe name (SFT data for
chat and instruction fine-tunes: :mod:`.sft`, rendered by :mod:`.chat`)."""
from __future__ import annotations

from .base import LabelSpace, Objective
from .chat import NoLossTokenLeft, RenderedRow, detect_format, render_row
from .clip_zero_shot import CLIPZeroShotObjective
from .sequence_classification import SequenceClassificationObjective
from .sft import SFTObjective, load_named_tokenizer, read_chat_template
from .text_to_text import CausalLMObjective, Seq2SeqObjective
from .user_callable import CallableObjective

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (SequenceClassificationObjective, Seq2SeqObjective, CausalLMObjective,
                              CLIPZeroShotObjective, CallableObjective, SFTObjective)
}

__all__ = ["OBJECTIVES", "Objective", "LabelSpace", "SequenceClassificationObjective", "Seq2SeqObjective",
           "CausalLMObjective", "CLIPZeroShotObjective", "CallableObjective", "SFTObjective", "RenderedRow",
           "NoLossTokenLeft", "detect_format", "render_row", "load_named_tokenizer", "read_chat_template"]
