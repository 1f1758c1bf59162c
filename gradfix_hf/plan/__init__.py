"""θ_A, θ_A^ft and θ_B lined up: configs and tokenizers checked, the output layout built on the meta device, and
the plan of every output tensor (transported, copied from the fine-tune, or θ_B's), before any gradient work."""
from .base_model import load_base_model
from .configs import HEAD_CONFIG_FIELDS, bind_adapters, check_configs, load_config, task_config
from .layout import TargetLayout, build_layout
from .roles import ADAPTER_BASES, ROLE_NAMES, SOURCE, SOURCE_FT, TARGET, TARGET_FT
from .transport_plan import TransportPlan, plan_transport
from .vocabulary import VocabularyAlignment, check_tokenizers, vocabulary_alignment

__all__ = ["SOURCE", "SOURCE_FT", "TARGET", "TARGET_FT", "ADAPTER_BASES", "ROLE_NAMES", "HEAD_CONFIG_FIELDS",
           "TargetLayout", "TransportPlan", "bind_adapters", "build_layout", "check_configs", "check_tokenizers",
           "load_base_model", "load_config", "plan_transport", "task_config", "VocabularyAlignment",
           "vocabulary_alignment"]
