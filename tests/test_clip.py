"""CLIP zero-shot image classification: the objective, images from datasets, the batched engine, the output.

The trio is tiny and real (tests/conftest.py ``build_clip_trio``): 2-layer CLIP towers, a CLIP BPE tokenizer
and a CLIPImageProcessor in every folder, θ_A^ft = θ_A with its vision tower fine-tuned on coloured squares.
"""
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import clip_recipe_dict, reference_grads
from gradfix_hf import Recipe, VotesFile, prepare
from gradfix_hf.cli import main
from gradfix_hf.data import fingerprint
from gradfix_hf.errors import CompatibilityError, DataError, RecipeError
from gradfix_hf.plan import load_base_model
from gradfix_hf.objectives import CLIPZeroShotObjective
from gradfix_hf.objectives.clip_zero_shot import DEFAULT_TEMPLATES, TRANSPORTED_PREFIXES
from gradfix_hf.recipe import DataConfig
from gradfix_hf.votes import compute_votes, compute_votes_batched, drop_noise

DOCS = Path(__file__).parent.parent / "docs" / "clip.md"
VISION = TRANSPORTED_PREFIXES


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_cli_votes_then_run_is_theta_b_plus_masked_tau_on_the_vision_tower_only(clip_trio, tmp_path, capsys):
    # a fine-tune whose text tower moved too: τ_A has a text part, which must not reach the output
    finetuned = tmp_path / "finetuned"
    shutil.copytree(clip_trio["source_finetuned"], finetuned)
    weights = _weights(finetuned)
    save_file({k: v + 0.01 if k.startswith("text_model.") else v for k, v in weights.items()},
              str(finetuned / "model.safetensors"), metadata={"format": "pt"})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(clip_recipe_dict(clip_trio, models={"source_finetuned": str(finetuned)})))
    assert main(["run", str(recipe), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    plan = json.loads(printed[:printed.rindex("}") + 1])
    assert plan["tensors"]["transported"] > 0 and plan["tensors"]["from_target"] > 0
    votes_path, out = tmp_path / "votes.safetensors", tmp_path / "out"
    assert main(["votes", str(recipe), "-o", str(votes_path), "--no-progress"]) == 0
    assert main(["run", str(recipe), "--votes", str(votes_path), "-o", str(out), "--no-progress"]) == 0

    votes = VotesFile.load(votes_path)
    assert votes.n_samples == 9 and votes.metadata["objective"] == "clip-zero-shot"
    assert votes.metadata["engine"] == "batched"
    assert set(votes.votes) and all(name.startswith(VISION) for name in votes.votes)
    source, target, finetuned = _weights(clip_trio["source"]), _weights(clip_trio["target"]), _weights(finetuned)
    assert not torch.equal(finetuned["text_model.final_layer_norm.weight"], source["text_model.final_layer_norm.weight"])
    output = _weights(out)
    assert set(output) == set(target)
    alpha = 0.5
    changed = 0
    for name, theta_b in target.items():
        if name.startswith(VISION):
            assert name in votes.votes, name  # every vision tensor is voted and transported
            tau = finetuned[name] - source[name]
            keep = torch.sign(tau) == torch.sign(votes.votes[name].to(torch.float32))
            expected = theta_b + alpha * torch.where(keep, tau, torch.zeros_like(tau))
            assert torch.equal(output[name], expected), name
            changed += int((output[name] != theta_b).sum())
        else:  # text tower, text projection, logit_scale: θ_B's, bitwise, although θ_A^ft's text tower moved
            assert torch.equal(output[name], theta_b), name
    assert changed > 0
    assert any(n.startswith("text_model.") for n in target) and "logit_scale" in target

    model = transformers.AutoModel.from_pretrained(out)
    assert type(model) is transformers.CLIPModel
    report = json.loads((out / "gradfix_report.json").read_text())
    assert report["objective"] == "clip-zero-shot"
    assert report["tensors"]["transported"] == len(votes.votes)
    assert transformers.AutoImageProcessor.from_pretrained(out).crop_size == {"height": 32, "width": 32}
    assert transformers.AutoTokenizer.from_pretrained(out).get_vocab() == \
        transformers.AutoTokenizer.from_pretrained(clip_trio["target"]).get_vocab()
    assert "pipeline_tag: zero-shot-image-classification" in (out / "README.md").read_text()


def test_batched_votes_equal_the_per_sample_loop(clip_trio):
    """Criterion of tests/test_batched_engine.py, at float32 resolution: a coordinate may differ only where every
    sample's reference gradient is float noise, |g_n| ≤ 1e-7 × the sample's largest |g_n| over the model (here
    the attention key biases, whose gradient is 0 in exact arithmetic and ~1e-9 relative in float32)."""
    prepared = prepare(Recipe.from_dict(clip_recipe_dict(clip_trio, data={"samples_per_class": 4})))
    names = prepared.plan.transported
    details: dict = {}
    fast, evidence = compute_votes_batched(load_base_model(prepared.plan), prepared.objective, prepared.examples,
                                           names, micro_batch_size=5, progress=False, details=details)
    assert details["exact_fallback"] == []  # no parameter needs the one-sample loop
    assert details["functional"] == ["vision_model.embeddings.class_embedding"]
    assert details["broadcast"] == ["vision_model.embeddings.position_embedding.weight"]
    assert "vision_model.embeddings.patch_embedding.weight" in details["rule"]

    # a hand-written loop: one backward per image
    grads = reference_grads(load_base_model(prepared.plan), prepared.objective.loss, prepared.examples, names)
    scale = torch.tensor([max(float(g[n].abs().max()) for n in names) for g in grads])
    differ_total = coords = 0
    for name in names:
        stacked = torch.stack([g[name] for g in grads])
        expected = -torch.sign(drop_noise(stacked)).sum(0)
        noise = (stacked.abs() <= 1e-7 * scale.view(-1, *[1] * (stacked.dim() - 1))).all(0)
        differ = fast[name].to(torch.int32) != expected.to(torch.int32)
        assert not (differ & ~noise).any(), f"{name}: {int((differ & ~noise).sum())} coordinates differ"
        assert not differ.any() or name.endswith("self_attn.k_proj.bias"), name
        differ_total += int(differ.sum())
        coords += differ.numel()
    assert differ_total <= 0.005 * coords
    assert evidence == {}  # every image touches every coordinate of the vision tower
    reference, _ = compute_votes(load_base_model(prepared.plan), prepared.objective.loss, prepared.examples, names,
                                 progress=False)
    for name in names:  # the library's own exact engine agrees the same way
        assert torch.equal(reference[name], fast[name]) or name.endswith("self_attn.k_proj.bias"), name


def test_zero_shot_head_is_the_renormalised_template_mean_of_theta_b_text_tower(clip_trio):
    templates = ["a photo of a {} square.", "a blurry photo of the {label} square."]
    prepared = prepare(Recipe.from_dict(clip_recipe_dict(clip_trio, data={"templates": templates})))
    objective = prepared.objective
    assert objective.labels.names == ["blue", "green", "red"]  # the imagefolder's ClassLabel names
    assert objective.templates == templates
    model = transformers.CLIPModel.from_pretrained(clip_trio["target"]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(clip_trio["target"])
    with torch.no_grad():
        per_template = []
        for template in ("a photo of a {} square.", "a blurry photo of the {} square."):
            enc = tokenizer([template.format(c) for c in ("blue", "green", "red")], padding=True, return_tensors="pt")
            per_template.append(torch.nn.functional.normalize(model.get_text_features(**enc).pooler_output, dim=-1))
        expected = torch.nn.functional.normalize(torch.stack(per_template).mean(0), dim=-1)
        assert torch.allclose(objective.class_embeddings, expected, atol=1e-6)
        example = prepared.examples[0]
        image = torch.nn.functional.normalize(model.get_image_features(pixel_values=example["pixel_values"])
                                              .pooler_output, dim=-1)
        logits = model.logit_scale.exp() * image @ expected.T
        loss = torch.nn.functional.cross_entropy(logits, example["labels"])
        assert torch.allclose(objective.loss(load_base_model(prepared.plan), example), loss, atol=1e-5)
        assert objective.predict(model, prepared.samples.rows[:1]) == logits.argmax(-1).tolist()
    # the prompts are part of what the votes depend on
    default = prepare(Recipe.from_dict(clip_recipe_dict(clip_trio, data={"templates": None})))
    assert default.objective.templates == list(DEFAULT_TEMPLATES)
    assert default.samples.fingerprint != prepared.samples.fingerprint


def test_label_space_from_label_words_classlabel_names_or_strings():
    import datasets

    features = datasets.Features({"image": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["AnnualCrop", "Forest"])})
    dataset = datasets.Dataset.from_dict({"image": ["a", "b"], "label": [1, 0]}, features=features)
    by_name = CLIPZeroShotObjective.label_space(
        DataConfig(path="x", label_words={"Forest": "forest", "AnnualCrop": "annual crop land"}), None, dataset)
    assert by_name.names == ["forest", "annual crop land"]
    assert by_name.index(1, "row") == 0 and by_name.index(0, "row") == 1  # ClassLabel ids via their names
    plain = CLIPZeroShotObjective.label_space(DataConfig(path="x"), None, dataset)
    assert plain.names == ["AnnualCrop", "Forest"] and plain.index(1, "row") == 1
    strings = datasets.Dataset.from_dict({"label": ["red", "blue", "red"]})
    assert CLIPZeroShotObjective.label_space(DataConfig(path="x"), None, strings).names == ["blue", "red"]
    integers = datasets.Dataset.from_dict({"label": [0, 1]})
    with pytest.raises(DataError, match="data.label_words: objective 'clip-zero-shot' needs the class names"):
        CLIPZeroShotObjective.label_space(DataConfig(path="x"), None, integers)


@pytest.mark.parametrize("templates, message", [
    (["a photo of a square."], "needs exactly one placeholder, {} or {label} (found: none)"),
    (["a {} photo of a {}."], "(found: {}, {})"),
    (["a photo of a {name}."], "(found: {name})"),
    (["a photo of a {."], "cannot be formatted"),
    ("a photo of a {}.", "a non-empty list of prompt templates"),
    ([], "a non-empty list of prompt templates"),
])
def test_bad_templates_are_recipe_errors(templates, message):
    with pytest.raises(RecipeError, match=r"data.templates: .*" + re.escape(message)):
        Recipe.from_dict({"objective": "clip-zero-shot", "models": {"source": "a", "source_finetuned": "b",
                                                                      "target": "c"},
                          "data": {"path": "x", "templates": templates}})


def test_image_fingerprint_hashes_pixels_not_the_object():
    pixels = [(i % 7, i % 5, i % 3) for i in range(16)]
    first, second = Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4))
    first.putdata(pixels)
    second.putdata(pixels)
    assert str(first) != str(second)  # their repr holds a memory address: not usable in a fingerprint
    assert fingerprint([{"image": first}], [0], {}) == fingerprint([{"image": second}], [0], {})
    second.putpixel((0, 0), (9, 9, 9))
    assert fingerprint([{"image": first}], [0], {}) != fingerprint([{"image": second}], [0], {})
    assert fingerprint([{"image": b"\x00\x01"}], [0], {}) != fingerprint([{"image": b"\x00\x02"}], [0], {})


def test_images_as_paths_in_jsonl_and_parquet(clip_trio, tmp_path):
    images = sorted((clip_trio["images"] / "train").glob("*/*.png"))
    folder = tmp_path / "data"
    (folder / "pics").mkdir(parents=True)
    rows = []
    for path in images:
        shutil.copy(path, folder / "pics" / path.name)
        rows.append({"file": f"pics/{path.name}", "colour": path.parent.name})  # relative to the data file
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(folder / "train.parquet")
    fingerprints = []
    for name in ("train.jsonl", "train.jsonl", "train.parquet"):
        recipe = clip_recipe_dict(clip_trio, data={"path": str(folder / name), "image_column": "file",
                                                   "label_column": "colour"})
        prepared = prepare(Recipe.from_dict(recipe), check_values=False)
        assert prepared.objective.labels.names == ["blue", "green", "red"]  # the string labels, sorted
        assert all(isinstance(r["file"], Image.Image) for r in prepared.samples.rows)
        assert prepared.examples[0]["pixel_values"].shape == (1, 3, 32, 32)
        fingerprints.append(prepared.samples.fingerprint)
    assert fingerprints[0] == fingerprints[1] == fingerprints[2]  # the same images and labels, by content
    rows[3]["file"] = "pics/missing.png"
    (folder / "broken.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = clip_recipe_dict(clip_trio, data={"path": str(folder / "broken.jsonl"), "image_column": "file",
                                               "label_column": "colour"})
    with pytest.raises(DataError, match=r"data: row 3 of column 'file': image file '.*missing.png' does not exist"):
        prepare(Recipe.from_dict(recipe), check_values=False)


def test_bad_input_fails_before_any_gradient(clip_trio, tmp_path):
    with pytest.raises(DataError, match=r"data: image column 'picture' not in the data \(columns: \['image', "
                                        r"'label'\]\)\. Set data.image_column"):
        prepare(Recipe.from_dict(clip_recipe_dict(clip_trio, data={"image_column": "picture"})), check_values=False)
    no_processor = tmp_path / "no-processor"
    shutil.copytree(clip_trio["target"], no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(CompatibilityError, match=r"models.target \(.*no-processor\): no image processor in .*"
                                                 r"preprocessor_config.json"):
        prepare(Recipe.from_dict(clip_recipe_dict(clip_trio, models={"target": str(no_processor)})),
                check_values=False)
    bert = tmp_path / "bert"
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16)
    transformers.BertModel(config).save_pretrained(bert)
    models = {"source": str(bert), "source_finetuned": str(bert), "target": str(bert)}
    with pytest.raises(CompatibilityError, match=r"models.target \(.*bert\) has model_type 'bert': objective "
                                                 r"'clip-zero-shot' needs a CLIP model"):
        prepare(Recipe.from_dict(clip_recipe_dict(clip_trio, models=models)), check_values=False)


def test_docs_example_runs_offline(tmp_path, monkeypatch, capsys):
    """The Python block of docs/clip.md, as written (from the repository root layout): transport(recipe) with a
    held-out table, and the output folder in pipeline("zero-shot-image-classification")."""
    block = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tests").symlink_to(Path(__file__).parent)  # the block expects the repository's tests/ folder
    monkeypatch.setattr(sys, "path", list(sys.path))  # the block's sys.path.insert is undone afterwards
    namespace: dict = {}
    exec(compile(block, str(DOCS), "exec"), namespace)
    result = namespace["result"]
    rows = {row["method"]: row for row in result.evaluation["rows"]}
    assert {"zero-shot", "naive", "gradfix"} <= set(rows)
    assert result.evaluation["n_samples"] == 12 and 0 <= rows["gradfix"]["score"] <= 1
    assert type(result.model) is transformers.CLIPModel
    printed = capsys.readouterr().out
    assert "GradFix (gradfix)" in printed and re.search(r"'label': '(red|green|blue)'", printed)
