"""ROUGE-L of generated text as an `evaluate` metric module shipped inside gradfix_hf (offline).

The score is Google's ``rouge-score`` implementation (``pip install 'gradfix_hf[llm]'``): the F-measure of the
longest common subsequence of a prediction's and its reference's tokens (lower-cased words), averaged over rows.
"""
import datasets
import evaluate

_DESCRIPTION = "ROUGE-L: the mean F-measure of the longest common token subsequence of prediction and reference."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated texts.
    references (`list` of `str`): reference texts.
    use_stemmer (`bool`): Porter-stem words first (default False).
Returns:
    rougeL (`float`): in [0, 1].
Examples:
    >>> rouge = evaluate.load("gradfix_hf/metrics/rouge")
    >>> rouge.compute(predictions=["the cat sat"], references=["the cat sat down"])
    {'rougeL': 0.857...}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, ROUGE: A Package for Automatic Evaluation of Summaries (2004)",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, use_stemmer=False):
        try:
            from rouge_score import rouge_scorer
        except ImportError:
            raise ImportError("the rouge metric needs rouge-score: pip install 'gradfix_hf[llm]'") from None
        if not references:
            raise ValueError("rouge: no predictions to score.")
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
        scores = [scorer.score(reference, prediction)["rougeL"].fmeasure
                  for prediction, reference in zip(predictions, references)]
        return {"rougeL": sum(scores) / len(scores)}
