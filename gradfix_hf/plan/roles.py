"""The four model roles of a transport, named as the recipe names them (errors and reports use these names)."""
from __future__ import annotations

SOURCE, SOURCE_FT, TARGET, TARGET_FT = ("models.source", "models.source_finetuned", "models.target",
                                        "models.target_finetuned")
#: the model a LoRA adapter in each role is applied to (θ_A^ft on θ_A, θ_B^ft on θ_B)
ADAPTER_BASES = {SOURCE_FT: SOURCE, TARGET_FT: TARGET}
#: how model cards name each role
ROLE_NAMES = {SOURCE: "θ_A (source)", SOURCE_FT: "θ_A^ft (source fine-tune)", TARGET: "θ_B (target, base model)",
              TARGET_FT: "θ_B^ft (oracle)"}
