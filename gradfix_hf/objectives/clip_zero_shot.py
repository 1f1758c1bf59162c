"""CLIP zero-shot image classification (transformers ``CLIPModel``): the paper's vision setting.

The classifier is θ_B's own zero-shot head, built once before any gradient: each class name is put into every
prompt template (``data.templates``, e.g. ``"a photo of a {}."``), embedded by θ_B's frozen text tower and
L2-normalised; the class embedding is the mean over templates, normalised again (the CLIP paper's prompt
ensemble). Per image, logits = exp(logit_scale) · cos(image embedding, class embedding) and the loss is the
cross-entropy with the true class; the held-out prediction is the argmax of the same logits.

Only the vision tower and the visual projection are voted and transported (``TRANSPORTED_PREFIXES``): the text
tower and ``logit_scale`` of the output are θ_B's, unchanged, so the output still embeds any prompt as θ_B does
and works in ``pipeline("zero-shot-image-classification", ...)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import CompatibilityError, DataError
from ..plan import TARGET, TransportPlan
from .base import LabelSpace, Objective, verbalised_label_space

#: the parameters this objective votes and transports (names in ``CLIPModel``); everything else is θ_B's
TRANSPORTED_PREFIXES = ("vision_model.", "visual_projection.")
#: a small generic prompt ensemble, used when the recipe gives no ``data.templates``
DEFAULT_TEMPLATES = ("a photo of a {}.", "a bad photo of a {}.", "a good photo of a {}.", "a photo of the large {}.",
                     "a photo of the small {}.")
TEXT_WEIGHT_PREFIXES = ("text_model.", "text_projection.")


def fill(template: str, name: str) -> str:
    return template.format(name, label=name)


class CLIPZeroShotObjective(Objective):
    name = "clip-zero-shot"
    auto_class_name = "AutoModel"  # resolves to CLIPModel for a CLIP config
    pipeline_task = "zero-shot-image-classification"
    transported_prefixes = TRANSPORTED_PREFIXES

    def __init__(self, data, tokenizer, labels: LabelSpace, image_processor, class_embeddings: torch.Tensor,
                 templates: Sequence[str]):
        super().__init__(data, tokenizer, labels)
        self.image_processor = image_processor
        self.class_embeddings = class_embeddings  # [classes, projection_dim], unit norm, θ_B's text tower
        self.templates = list(templates)

    # --- set-up (prepare): the model check, the label set, the frozen text head ---------------------------------

    @staticmethod
    def check_target(config, target, tokenizer):
        """θ_B must be a CLIP model (``model_type: clip``) with a tokenizer (for the prompts) and an image
        processor (for the images); returns the image processor."""
        if getattr(config, "model_type", None) != "clip":
            raise CompatibilityError(
                f"models.target ({target.name}) has model_type {getattr(config, 'model_type', None)!r}: objective "
                "'clip-zero-shot' needs a CLIP model (transformers CLIPModel, model_type 'clip').")
        if tokenizer is None:
            raise CompatibilityError(f"models.target ({target.name}): no tokenizer found; objective 'clip-zero-shot' "
                                     "embeds the prompt templates with θ_B's text tower and tokenizer.")
        return load_image_processor(Path(target.local_dir), target.name)

    @staticmethod
    def label_space(data, finetuned_config, dataset=None) -> LabelSpace:
        """Class names from ``data.label_words`` (keys: raw labels or the names of a ClassLabel column), else
        from the label column itself: a ClassLabel's names, or the distinct string labels, sorted."""
        feature = dataset.features.get(data.label_column) if dataset is not None else None
        class_label_names = list(getattr(feature, "names", None) or [])
        if data.label_words:
            labels = verbalised_label_space(data, finetuned_config)
            for raw_id, raw_name in enumerate(class_label_names):  # ClassLabel ids → the index of their name's key
                if raw_name in data.label_words:
                    index = labels.lookup[raw_name]
                    labels.lookup.setdefault(raw_id, index)
                    labels.lookup.setdefault(str(raw_id), index)
            return labels
        if class_label_names:
            lookup = {}
            for i, label in enumerate(class_label_names):
                lookup[i] = lookup[str(i)] = i
                lookup.setdefault(label, i)
            return LabelSpace(names=class_label_names, lookup=lookup)
        present = dataset is not None and data.label_column in dataset.column_names
        # a null label is refused when the rows are selected
        values = sorted(set(dataset[data.label_column]) - {None}, key=str) if present else []
        if values and all(isinstance(v, str) for v in values):
            return LabelSpace(names=values, lookup={v: i for i, v in enumerate(values)})
        raise DataError(f"data.label_words: objective 'clip-zero-shot' needs the class names to put in the prompts; "
                        f"column {data.label_column!r} holds neither class names nor a ClassLabel feature, so give "
                        "them as label_words, e.g. {0: forest, 1: river}.")

    @classmethod
    def from_target(cls, data, tokenizer, labels: LabelSpace, plan, image_processor) -> "CLIPZeroShotObjective":
        """The objective with θ_B's image processor and its zero-shot head (class embeddings), computed once."""
        templates = list(data.templates or DEFAULT_TEMPLATES)
        embeddings = class_embeddings(text_tower(plan), tokenizer, labels.names, templates)
        return cls(data, tokenizer, labels, image_processor, embeddings, templates)

    @staticmethod
    def processor(image_processor, tokenizer):
        """What the output folder saves for preprocessing: θ_B's tokenizer and image processor, as one
        ``CLIPProcessor`` (what ``pipeline("zero-shot-image-classification", ...)`` loads)."""
        from transformers import CLIPProcessor

        return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)

    def text_columns(self) -> list[str]:
        return []  # images, checked by gradfix_hf/data/loading.py ``with_images``

    def fit_positions(self, config, where: str = "models.target") -> None:
        return None  # the prompts are tokenized with the text tower's own limit (``class_embeddings``)

    # --- per-sample loss and predictions -------------------------------------------------------------------------

    def pixels(self, rows: list[dict]) -> torch.Tensor:
        return self.image_processor(images=[row[self.data.image_column] for row in rows],
                                    return_tensors="pt").pixel_values

    def encode(self, row, label):
        return {"pixel_values": self.pixels([row]), "labels": torch.tensor([label])}

    def collate(self, examples):
        return {key: torch.cat([e[key] for e in examples]) for key in ("pixel_values", "labels")}

    def logits(self, model, pixel_values: torch.Tensor) -> torch.Tensor:
        """exp(logit_scale) · cos(image, class) for every image and class: [images, classes]."""
        image = F.normalize(model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
        classes = self.class_embeddings.to(device=image.device, dtype=image.dtype)
        return model.logit_scale.exp() * image @ classes.T

    def batch_losses(self, model, batch):
        return F.cross_entropy(self.logits(model, batch["pixel_values"]).float(), batch["labels"], reduction="none")

    def loss(self, model, example):
        return self.batch_losses(model, example)[0]

    @torch.no_grad()
    def predict(self, model, rows):
        device = next(model.parameters()).device
        return self.logits(model, self.pixels(rows).to(device)).argmax(-1).tolist()


def load_image_processor(folder: Path, name: str):
    """θ_B's image processor (``preprocessor_config.json`` or a processor's ``processor_config.json``)."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as exc:
        raise CompatibilityError(
            f"models.target ({name}): no image processor in {folder} (expected preprocessor_config.json, as "
            f"CLIPImageProcessor.save_pretrained writes it): objective 'clip-zero-shot' preprocesses images with "
            f"θ_B's own. ({str(exc).splitlines()[0]})") from None


def text_tower(plan: TransportPlan) -> torch.nn.Module:
    """θ_B's text tower and text projection alone (fp32, eval mode), read tensor by tensor from its checkpoint."""
    from transformers import CLIPTextModelWithProjection

    config = plan.layout.config
    model = CLIPTextModelWithProjection(config.text_config)
    state = {name: plan.raw_tensor(TARGET, name) for name in plan.layout.parameters
             if name.startswith(TEXT_WEIGHT_PREFIXES)}
    model.load_state_dict(state, strict=True)
    return model.float().eval()


@torch.no_grad()
def class_embeddings(model, tokenizer, names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Per class: normalise each template's text embedding, average over templates, normalise again."""
    limit = getattr(model.config, "max_position_embeddings", None)
    per_template = []
    for template in templates:
        enc = tokenizer([fill(template, name) for name in names], padding=True, truncation=limit is not None,
                        max_length=limit, return_tensors="pt")
        per_template.append(F.normalize(model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
                                        .text_embeds.float(), dim=-1))
    return F.normalize(torch.stack(per_template).mean(0), dim=-1)
