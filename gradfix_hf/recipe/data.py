"""The ``data`` and ``evaluation`` sections: where the labelled samples come from, how many vote, how they are
chosen, and which held-out splits and metrics score the result."""
from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

from ..errors import RecipeError
from .few_shot import DEFAULT_FEW_SHOT_LRS, few_shot_lrs
from .validation import check_choice, check_fields, paths_as_strings

#: SFT data shapes (TRL's column conventions): a ``messages`` column, ``prompt``/``completion`` columns, plain ``text``
SFT_FORMATS = ("messages", "prompt-completion", "text")
#: which tokens of an SFT row carry the loss: the assistant's / the completion's (``completion``), or every one
LOSS_TOKENS = ("completion", "all")
#: the ``data.selection`` values; ``random`` needs no embeddings (the algorithms: gradfix_hf/data/selection.py)
SELECTIONS = ("random", "herding", "k-medoids", "k-center")
#: other accepted spellings: the paper and the issue call the k-center coreset "coreset"
SELECTION_ALIASES = {"coreset": "k-center"}


def canonical_selection(name: Any, where: str = "data.selection") -> str:
    """The selection method's canonical name (``coreset`` → ``k-center``), or a RecipeError with the closest."""
    name = SELECTION_ALIASES.get(name, name) if isinstance(name, str) else name
    check_choice(name, SELECTIONS, where)
    return name


def template_error(template: object) -> Optional[str]:
    """Why ``template`` is not a usable prompt template (one ``{}`` or ``{label}`` placeholder), or None."""
    if not isinstance(template, str):
        return f"{template!r} is not a string"
    try:
        fields = [name for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:  # an unmatched brace
        return f"{template!r} cannot be formatted ({exc})"
    if fields not in ([""], ["label"]):
        found = ", ".join("{" + f + "}" for f in fields) or "none"
        return f"{template!r} needs exactly one placeholder, {{}} or {{label}} (found: {found})"
    return None


def _placeholder(name: str, spec: Optional[str], conversion: Optional[str]) -> str:
    return "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"


def prompt_error(prompt: str, has_pair: bool) -> Optional[str]:
    """Why ``data.prompt`` cannot be formatted the way the objectives format it (``prompt.format(text=...)``,
    plus ``text_pair=...`` when ``data.text_pair_column`` is set), or None. ``{text}`` is required; ``{{``
    and ``}}`` are literal braces; any other field, attribute or index access is refused."""
    fields = {"text": "", **({"text_pair": ""} if has_pair else {})}
    literal = "write a literal brace as '{{' or '}}'"
    try:
        parsed = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(prompt) if name is not None]
    except ValueError as exc:  # a lone brace
        return f"unbalanced braces ({exc}) in {prompt!r}; {literal}."
    for name, spec, conv in parsed:
        placeholder = _placeholder(name, spec, conv)
        if name == "text_pair" and not has_pair:
            return (f"the placeholder {placeholder!r} needs data.text_pair_column (the column of the second text), "
                    f"got {prompt!r}.")
        if name not in fields:
            allowed = "{text} and {text_pair}" if has_pair else "{text} (and {text_pair} with data.text_pair_column)"
            return f"unknown placeholder {placeholder!r} in {prompt!r}; a prompt may use {allowed}; {literal}."
        try:
            placeholder.format(**fields)
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
            return f"the placeholder {placeholder!r} cannot be formatted ({type(exc).__name__}: {exc}), got {prompt!r}."
    if "text" not in [name for name, _, _ in parsed]:
        return f"must contain '{{text}}', got {prompt!r}."
    return None


#: metrics of class predictions (what an SFT objective does not make)
CLASS_METRICS = ("accuracy", "f1")
#: scores of a language model computed from its own losses on the loss tokens (not `evaluate` modules)
LOSS_METRICS = ("nll", "perplexity")


def metric_objective_error(objective: str, names: Sequence[str]) -> Optional[str]:
    """Why metric ``names`` cannot score ``objective`` (class metrics for SFT, NLL for the others), or None."""
    sft = objective == "sft"
    for name in names:
        if sft and name in CLASS_METRICS:
            return (f"{name!r} scores class predictions; objective 'sft' is scored by {', '.join(LOSS_METRICS)} "
                    "and text metrics of what it generates (rouge, exact_match).")
        if not sft and name in LOSS_METRICS:
            which = f"objective {objective!r}" if objective else "this objective"
            return (f"{name!r} is a score of SFT data (objective 'sft'); {which} is scored by its predictions "
                    "(e.g. accuracy, f1).")
    return None


def metric_names(names: Any, where: str = "evaluation.metrics") -> tuple[str, ...]:
    """A non-empty tuple of distinct metric names (whether each can be loaded is checked when a run is prepared,
    :func:`gradfix_hf.metrics.check_available`)."""
    if isinstance(names, str):
        names = [names]
    if (not isinstance(names, (list, tuple)) or not names
            or any(not isinstance(n, str) or not n.strip() for n in names)):
        raise RecipeError(f"{where}: a non-empty list of metric names (e.g. [accuracy, f1]), got {names!r}.")
    names = tuple(n.strip() for n in names)
    for name in names:
        if names.count(name) > 1:
            raise RecipeError(f"{where}: {name!r} is listed twice.")
    return names


@dataclass(frozen=True)
class DataConfig:
    """The few labelled samples D_s: where they come from, which columns hold what, and how many per class.

    ``selection`` chooses the K rows of a class: ``random`` (seeded, no model load) or, on θ_B's embeddings of
    a seeded pool of at most ``selection_pool`` rows per class, ``herding``, ``k-medoids`` or ``k-center``.

    SFT data (``objective: sft``) votes on ``rows`` rows (chosen the same ways, as one class), in TRL's column
    conventions: ``messages`` (a conversation, rendered with θ_B's chat template, or ``chat_template``, or that of
    the tokenizer in ``tokenizer``),
    ``prompt``/``completion``, or plain ``text``; ``format`` says which when the columns hold several. The loss
    covers the assistant's / completion's tokens (``loss_tokens: completion``) or every token (``all``).
    """

    path: str
    name: Optional[str] = None
    split: str = "train"
    revision: Optional[str] = None
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    samples_per_class: int = 8
    seed: int = 0
    selection: str = "random"
    selection_pool: Optional[int] = 1000
    prompt: str = "{text}"
    label_words: Optional[dict] = None
    max_length: int = 128
    image_column: str = "image"  # image objectives (clip-zero-shot): an Image feature, or image file paths
    templates: Optional[list[str]] = None  # clip-zero-shot prompt templates, "{}" or "{label}" = the class name
    # objective sft (chat / instruction data, TRL's column conventions): N rows instead of K per class
    rows: Optional[int] = None
    format: Optional[str] = None  # messages | prompt-completion | text; null or auto: from the columns
    messages_column: str = "messages"
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    loss_tokens: str = "completion"
    chat_template: Optional[str] = None  # a Jinja template (or a file holding one) instead of θ_B's tokenizer's
    tokenizer: Optional[str] = None  # a folder or Hub id whose tokenizer renders the rows instead of θ_B's
    #: carve a seeded validation split from ``split`` (a fraction in (0, 1) or a row count): the vote draws from the
    #: rest, and ``evaluation.split: validation`` (without ``evaluation.path``) scores the carved rows
    validation_size: Optional[Union[int, float]] = None

    WHERE = "data"

    def __post_init__(self) -> None:
        paths_as_strings(self, ("path",))
        if self.label_words is not None and not isinstance(self.label_words, Mapping):
            raise RecipeError("data.label_words: must map each label to its verbalisation, e.g. {0: negative}.")
        if self.templates is not None:
            if isinstance(self.templates, str) or not isinstance(self.templates, (list, tuple)) or not self.templates:
                raise RecipeError(f"data.templates: a non-empty list of prompt templates, got {self.templates!r}.")
            for template in self.templates:
                if template_error(template):
                    raise RecipeError(f"data.templates: {template_error(template)}, e.g. 'a photo of a {{}}.'.")
            object.__setattr__(self, "templates", list(self.templates))
        check_fields(self, self.WHERE)
        if self.samples_per_class < 1:
            raise RecipeError(f"data.samples_per_class: must be a positive integer, got {self.samples_per_class!r}.")
        object.__setattr__(self, "selection", canonical_selection(self.selection, "data.selection"))
        pool = self.selection_pool
        if pool is not None and pool < self.samples_per_class:
            raise RecipeError(f"data.selection_pool: rows embedded per class, an integer >= data.samples_per_class "
                              f"({self.samples_per_class}) or null for every row, got {pool!r}.")
        if self.max_length < 2:
            raise RecipeError(f"data.max_length: must be an integer >= 2, got {self.max_length!r}.")
        error = prompt_error(self.prompt, bool(self.text_pair_column))
        if error:
            raise RecipeError(f"data.prompt: {error}")
        if not self.image_column:
            raise RecipeError(f"data.image_column: the name of the image column, got {self.image_column!r}.")
        self._check_sft_fields()
        size = self.validation_size
        if size is not None and (isinstance(size, bool) or not (isinstance(size, int) and size >= 1
                                                                or isinstance(size, float) and 0 < size < 1)):
            raise RecipeError(f"data.validation_size: a fraction in (0, 1) or a number of rows >= 1, got {size!r}.")

    def _check_sft_fields(self) -> None:
        if self.rows is not None and self.rows < 1:
            raise RecipeError(f"data.rows: the number of SFT rows that vote, an integer >= 1, got {self.rows!r}.")
        if self.rows is not None and self.selection_pool is not None and self.selection_pool < self.rows:
            raise RecipeError(f"data.selection_pool: rows embedded, an integer >= data.rows ({self.rows}) or null "
                              f"for every row, got {self.selection_pool!r}.")
        if self.format not in (None, "auto"):
            check_choice(self.format, SFT_FORMATS, "data.format")
        check_choice(self.loss_tokens, LOSS_TOKENS, "data.loss_tokens")
        for key in ("messages_column", "prompt_column", "completion_column"):
            if not getattr(self, key):
                raise RecipeError(f"data.{key}: a column name, got {getattr(self, key)!r}.")
        if self.tokenizer is not None and not self.tokenizer.strip():
            raise RecipeError("data.tokenizer: a folder or Hub id holding a tokenizer, got an empty string.")
        if self.chat_template is not None and not self.chat_template.strip():
            raise RecipeError("data.chat_template: a Jinja chat template, or the path of a file holding one.")


@dataclass(frozen=True)
class EvaluationConfig:
    """A held-out split scored for θ_B, naive θ_B + α·τ_A and the result. Fields default to ``data``'s.

    ``gradfix sweep`` picks α on ``split`` (the validation split) over ``alphas`` and reports the chosen α on
    ``test_split`` (from ``test_path`` or the same data set), never choosing on the test split.

    ``metrics`` are `evaluate` metrics (``accuracy``, ``f1`` and ``exact_match`` ship with the package and load
    offline; other names are loaded from the Hub when the run is prepared); the first one picks α. The few-shot
    fine-tuning baseline (θ_B trained on the vote samples, :mod:`gradfix_hf.transport.few_shot`) runs
    ``few_shot_steps`` AdamW steps (0: no baseline) at ``few_shot_lr`` on batches of ``few_shot_batch_size``
    (default: all vote samples in one batch). ``few_shot_lrs`` are the learning rates a few-shot candidate of
    ``method: auto`` (:mod:`gradfix_hf.recipe.few_shot`) tries, the validation split choosing.
    """

    split: str = "validation"
    path: Optional[str] = None
    name: Optional[str] = None
    revision: Optional[str] = None
    max_samples: Optional[int] = None
    test_split: Optional[str] = None
    test_path: Optional[str] = None
    alphas: Optional[list[float]] = None
    metrics: tuple[str, ...] = ("accuracy", "f1")
    max_new_tokens: Optional[int] = None  # generation metrics of objective sft (rouge, exact_match)
    few_shot_steps: int = 1
    few_shot_lr: float = 1e-5
    few_shot_batch_size: Optional[int] = None
    few_shot_lrs: tuple[float, ...] = DEFAULT_FEW_SHOT_LRS

    WHERE = "evaluation"

    def __post_init__(self) -> None:
        paths_as_strings(self, ("path", "test_path"))
        object.__setattr__(self, "metrics", metric_names(self.metrics, "evaluation.metrics"))
        if self.few_shot_steps is None:
            raise RecipeError("evaluation.few_shot_steps: an integer >= 0 (0 disables the few-shot baseline).")
        lr = self.few_shot_lr
        if isinstance(lr, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                lr = float(lr)
            except ValueError:
                pass
            object.__setattr__(self, "few_shot_lr", lr)
        object.__setattr__(self, "few_shot_lrs", few_shot_lrs(self.few_shot_lrs, f"{self.WHERE}.few_shot_lrs"))
        if self.alphas is not None:
            if (not isinstance(self.alphas, (list, tuple)) or not self.alphas
                    or any(isinstance(a, bool) or not isinstance(a, (int, float)) or not a > 0 or a != a
                           or a == float("inf") for a in self.alphas)):
                raise RecipeError(f"evaluation.alphas: a non-empty list of positive numbers, got {self.alphas!r}.")
            object.__setattr__(self, "alphas", sorted({float(a) for a in self.alphas}))
        check_fields(self, self.WHERE)
        for key, low in (("few_shot_steps", 0), ("few_shot_batch_size", 1)):
            value = getattr(self, key)
            if value is not None and value < low:
                raise RecipeError(f"evaluation.{key}: an integer >= {low}, got {value!r}.")
        if not self.few_shot_lr > 0:
            raise RecipeError(f"evaluation.few_shot_lr: a positive number, got {self.few_shot_lr!r}.")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise RecipeError(f"evaluation.max_new_tokens: an integer >= 1, got {self.max_new_tokens!r}.")
        if self.max_samples is not None and self.max_samples < 1:
            raise RecipeError(f"evaluation.max_samples: must be an integer >= 1 (rows scored per split), or null "
                              f"for every row, got {self.max_samples!r}.")
        if self.test_path is not None and self.test_split is None:
            object.__setattr__(self, "test_split", "test")
