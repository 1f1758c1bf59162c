"""Accuracy as an `evaluate` metric module shipped inside gradfix_hf.

``evaluate.load("accuracy")`` fetches its script from the Hub, which fails offline; this module is loaded from
the package folder instead (``evaluate.load(<path to this folder>)``) and needs nothing but evaluate/datasets.
"""
import datasets
import evaluate

_DESCRIPTION = "Accuracy: the fraction of predictions equal to their reference, (TP + TN) / N."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): gold class indices.
Returns:
    accuracy (`float`): in [0, 1].
Examples:
    >>> accuracy = evaluate.load("gradfix_hf/metrics/accuracy")
    >>> accuracy.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        if not references:
            raise ValueError("accuracy: no predictions to score.")
        correct = sum(int(p == r) for p, r in zip(predictions, references))
        return {"accuracy": correct / len(references)}
