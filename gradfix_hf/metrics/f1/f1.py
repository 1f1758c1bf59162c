"""F1 as an `evaluate` metric module shipped inside gradfix_hf, computed here (no scikit-learn).

``average="auto"`` (the default) is what a classification table usually wants: with two classes the binary F1
of the positive class (``pos_label``, default 1), otherwise the macro F1 (unweighted mean of the per-class F1
over the classes that occur in the references or the predictions, as scikit-learn's ``average="macro"``).
Pass ``num_labels`` so a two-class task stays binary even when a small split shows only one class.
A class with no true positive, no false positive and no false negative never enters the macro mean; F1 with
a zero denominator (no positive reference and no positive prediction) is 0.0.
"""
import datasets
import evaluate

_DESCRIPTION = "F1 = 2·TP / (2·TP + FP + FN): binary on the positive class for 2 classes, macro for more."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): gold class indices.
    num_labels (`int`, optional): the number of classes of the task (decides binary vs macro with "auto").
    average (`str`): "auto" (default), "binary" or "macro".
    pos_label (`int`): the positive class of the binary F1 (default 1).
Returns:
    f1 (`float`): in [0, 1].
Examples:
    >>> f1 = evaluate.load("gradfix_hf/metrics/f1")
    >>> f1.compute(predictions=[1, 1, 0, 0], references=[1, 0, 1, 0], num_labels=2)
    {'f1': 0.5}
"""


def _class_f1(predictions, references, label) -> float:
    tp = sum(1 for p, r in zip(predictions, references) if p == label and r == label)
    fp = sum(1 for p, r in zip(predictions, references) if p == label and r != label)
    fn = sum(1 for p, r in zip(predictions, references) if p != label and r == label)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_labels=None, average="auto", pos_label=1):
        if not references:
            raise ValueError("f1: no predictions to score.")
        if average not in ("auto", "binary", "macro"):
            raise ValueError(f"f1: average must be 'auto', 'binary' or 'macro', got {average!r}.")
        present = sorted(set(references) | set(predictions))
        if average == "auto":
            binary = num_labels == 2 if num_labels is not None else set(present) <= {0, 1}
            average = "binary" if binary else "macro"
        if average == "binary":
            return {"f1": _class_f1(predictions, references, pos_label)}
        return {"f1": sum(_class_f1(predictions, references, c) for c in present) / len(present)}
