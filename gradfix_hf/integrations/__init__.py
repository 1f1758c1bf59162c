"""Optional bridges to other merge tools. Each is imported on demand, never by ``import gradfix_hf``.

* :mod:`gradfix_hf.integrations.mergekit`: the GradFix merge methods for mergekit (``gradfix_hf[mergekit]``).
"""
