"""Exact match of strings as an `evaluate` metric module shipped inside gradfix_hf.

Used for the generated label of a seq2seq model: the decoded text, stripped of surrounding whitespace (by
default), must equal the label word. ``ignore_case`` and ``ignore_punctuation`` loosen the comparison.
"""
import string

import datasets
import evaluate

_DESCRIPTION = "Exact match: the fraction of predicted strings equal to their reference string."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated texts.
    references (`list` of `str`): reference texts.
    strip (`bool`): strip surrounding whitespace from both first (default True).
    ignore_case (`bool`): compare lower-cased (default False).
    ignore_punctuation (`bool`): remove ASCII punctuation first (default False).
Returns:
    exact_match (`float`): in [0, 1].
Examples:
    >>> exact_match = evaluate.load("gradfix_hf/metrics/exact_match")
    >>> exact_match.compute(predictions=[" positive", "neg"], references=["positive", "negative"])
    {'exact_match': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, strip=True, ignore_case=False, ignore_punctuation=False):
        if not references:
            raise ValueError("exact_match: no predictions to score.")
        table = str.maketrans("", "", string.punctuation) if ignore_punctuation else None

        def normal(text):
            text = text.strip() if strip else text
            text = text.lower() if ignore_case else text
            return text.translate(table) if table else text

        matches = sum(int(normal(p) == normal(r)) for p, r in zip(predictions, references))
        return {"exact_match": matches / len(references)}
