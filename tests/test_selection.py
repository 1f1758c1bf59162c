"""Choosing the vote samples: herding, k-medoids (PAM) and greedy k-center against their definitions, the pool,
the recipe fields, and runs that record the chosen rows (Python API and CLI) on the tiny trios."""
import itertools
import json
import math
import random

import datasets
import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import AutoTokenizer, BertModel

from conftest import recipe_dict
from gradfix_hf import Recipe, prepare, transport
from gradfix_hf.cli import main
from gradfix_hf.data import fingerprint, select_per_class
from gradfix_hf.errors import DataError, RecipeError
from gradfix_hf.plan import load_base_model
from gradfix_hf.objectives import SequenceClassificationObjective
from gradfix_hf.transport.output_folder import RECIPE_NAME
from gradfix_hf.recipe import DataConfig
from gradfix_hf.data.selection import (ALGORITHMS, embed_rows, herding, k_center, k_medoids, k_medoids_cost,
                                  pairwise_distances)

# --------------------------------------------------------------------------- the algorithms


def _points(n, d=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=generator)


def _dist(a, b):
    return math.sqrt(sum((float(x) - float(y)) ** 2 for x, y in zip(a, b)))


def test_herding_by_hand_on_a_line():
    # mean 0.25: 0 is nearest; then (0 + x)/2 closest to 0.25 is x = 1; then (1 + x)/3: -10 (gap 3.25) beats 10
    points = torch.tensor([[0.0], [10.0], [-10.0], [1.0]])
    assert herding(points, 1) == [0]
    assert herding(points, 3) == [0, 3, 2]
    assert sorted(herding(points, 4)) == [0, 1, 2, 3]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_herding_matches_its_definition(seed):
    points = _points(15, d=3, seed=seed)
    rows = points.tolist()
    mean = [sum(col) / len(rows) for col in zip(*rows)]
    expected, total = [], [0.0] * 3
    for t in range(1, 7):  # the definition, written out: argmin over unchosen rows of ‖(s + x_i)/t − μ‖
        gaps = {i: _dist([(s + v) / t for s, v in zip(total, row)], mean) for i, row in enumerate(rows)
                if i not in expected}
        pick = min(gaps, key=gaps.get)
        expected.append(pick)
        total = [s + v for s, v in zip(total, rows[pick])]
    assert herding(points, 6) == expected
    assert expected[0] == min(range(15), key=lambda i: _dist(rows[i], mean))  # first pick: nearest the mean


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_k_center_radius_is_within_twice_the_optimum(seed):
    points = _points(10, seed=seed)
    d = pairwise_distances(points)

    def radius(centers):
        return float(d[:, list(centers)].min(dim=1).values.max())

    for k in (1, 2, 3, 4):
        chosen = k_center(points, k)
        optimum = min(radius(c) for c in itertools.combinations(range(10), k))
        assert len(set(chosen)) == k and radius(chosen) <= 2 * optimum + 1e-12
    chosen = k_center(points, 2)
    mean = points.mean(0)
    assert chosen[0] == int(torch.argmin((points - mean).norm(dim=1)))  # starts nearest the mean
    assert chosen[1] == int(torch.argmax(d[chosen[0]]))  # then the row farthest from it


@pytest.mark.parametrize("seed", range(6))
def test_k_medoids_no_single_swap_improves(seed):
    points = _points(10, seed=seed)
    d = pairwise_distances(points)
    for k in (1, 2, 3):
        medoids = k_medoids(points, k)
        cost = k_medoids_cost(d, medoids)
        assert len(set(medoids)) == k
        for slot, other in itertools.product(range(k), range(10)):
            if other not in medoids:
                swapped = medoids[:slot] + [other] + medoids[slot + 1:]
                assert k_medoids_cost(d, swapped) >= cost - 1e-9
    # k = 1 is solved exactly: the medoid is the row with the least total distance
    assert k_medoids(points, 1) == [int(torch.argmin(d.sum(1)))]


def test_k_medoids_reaches_the_brute_force_optimum_on_clusters():
    centers = torch.tensor([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    points = torch.cat([c + 0.7 * _points(4, seed=i) for i, c in enumerate(centers)])
    d = pairwise_distances(points)
    best = min(k_medoids_cost(d, c) for c in itertools.combinations(range(12), 3))
    medoids = k_medoids(points, 3)
    assert k_medoids_cost(d, medoids) == pytest.approx(best, rel=1e-12)
    assert sorted(m // 4 for m in medoids) == [0, 1, 2]  # one medoid per cluster


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_algorithms_are_deterministic_and_check_their_input(name):
    algorithm = ALGORITHMS[name]
    points = _points(20, d=4, seed=5)
    assert algorithm(points, 5) == algorithm(points.clone(), 5)
    assert algorithm(points, 20) and sorted(algorithm(points, 20)) == list(range(20))
    with pytest.raises(DataError, match="asks for 21 samples but only 20"):
        algorithm(points, 21)
    broken = points.clone()
    broken[3, 1] = float("nan")
    with pytest.raises(DataError, match="NaN or inf"):
        algorithm(broken, 2)


# --------------------------------------------------------------------------- the pool and the recipe fields

ROWS = [{"text": f"row {i}", "x": float(i % 7) + 0.1 * i, "label": i % 2} for i in range(40)]
LABELS = {0: "negative", 1: "positive"}


def _labels(cfg):
    from transformers import BertConfig

    return SequenceClassificationObjective.label_space(cfg, BertConfig(id2label=LABELS,
                                                                       label2id={v: k for k, v in LABELS.items()}))


class _Embedder:
    """A real embedding of the toy rows (their ``x`` value and its square), counting what it is asked."""

    def __init__(self):
        self.calls = []

    def __call__(self, rows, labels):
        self.calls.append((list(rows), list(labels)))
        return torch.tensor([[r["x"], r["x"] ** 2 / 10] for r in rows])


def test_random_selection_is_todays_draw_and_embeds_nothing():
    ds = datasets.Dataset.from_list(ROWS)
    cfg = DataConfig(path="x", samples_per_class=3, seed=4)
    assert cfg.selection == "random"
    embedder = _Embedder()
    picked = select_per_class(ds, cfg, _labels(cfg), fingerprint_extra={"objective": "o"}, embed=embedder)
    rng = random.Random(4)  # the stratified draw as it always was: classes in order, rng.sample per class
    expected = [i for cls in (0, 1) for i in rng.sample([j for j in range(40) if j % 2 == cls], 3)]
    assert picked.indices == expected and picked.rows == [ROWS[i] for i in expected]
    columns = ["text", "label"]
    assert picked.fingerprint == fingerprint([{c: ROWS[i][c] for c in columns} for i in expected],
                                             [i % 2 for i in expected], {"objective": "o"})
    assert embedder.calls == [] and picked.selection == {"method": "random"}


@pytest.mark.parametrize("method", ["herding", "k-medoids", "k-center"])
def test_embedding_selection_on_a_seeded_pool(method):
    ds = datasets.Dataset.from_list(ROWS)
    cfg = DataConfig(path="x", samples_per_class=3, seed=1, selection=method, selection_pool=8)
    embedder = _Embedder()
    picked = select_per_class(ds, cfg, _labels(cfg), embed=embedder)
    [(rows, labels)] = embedder.calls  # one call for every class's pool
    assert labels == [0] * 8 + [1] * 8 and all(r["label"] == y for r, y in zip(rows, labels))
    pools = [[ROWS.index(r) for r in rows[:8]], [ROWS.index(r) for r in rows[8:]]]
    assert all(p == sorted(p) for p in pools)
    expected = [pool[j] for pool in pools for j in ALGORITHMS[method](embedder(
        [ROWS[i] for i in pool], [0] * 8), 3)]
    assert picked.indices == expected and picked.labels == [0, 0, 0, 1, 1, 1]
    assert picked.selection == {"method": method, "pool": 8}
    # the same seed gives the same pool and rows; another seed draws another pool
    again = select_per_class(ds, cfg, _labels(cfg), embed=_Embedder())
    assert again.indices == picked.indices and again.fingerprint == picked.fingerprint
    other = _Embedder()
    select_per_class(ds, DataConfig(**{**cfg.__dict__, "seed": 2}), _labels(cfg), embed=other)
    assert other.calls[0][0] != rows
    # the method and the pool enter the fingerprint even where the rows coincide
    whole = select_per_class(ds, DataConfig(**{**cfg.__dict__, "selection_pool": None}), _labels(cfg),
                             embed=_Embedder())
    assert whole.fingerprint != picked.fingerprint
    # without an embedder (a dry run) only the class sizes are checked
    deferred = select_per_class(ds, cfg, _labels(cfg))
    assert deferred.rows == [] and deferred.selection["deferred"] and deferred.selection["planned_samples"] == 6


def test_too_few_rows_in_a_class_fails_before_embedding():
    rows = ROWS + [{"text": "lone", "x": 1.0, "label": 2}]
    labels = {0: "negative", 1: "positive", 2: "neutral"}
    from transformers import BertConfig

    cfg = DataConfig(path="x", samples_per_class=2, selection="herding")
    space = SequenceClassificationObjective.label_space(cfg, BertConfig(id2label=labels))
    embedder = _Embedder()
    with pytest.raises(DataError, match="class 'neutral' has 1 sample"):
        select_per_class(datasets.Dataset.from_list(rows), cfg, space, embed=embedder)
    assert embedder.calls == []


def test_recipe_fields_are_validated():
    with pytest.raises(RecipeError, match="data.selection: 'hearding' is not one of .* Did you mean 'herding'"):
        DataConfig(path="x", selection="hearding")
    with pytest.raises(RecipeError, match="Did you mean 'k-medoids'"):
        DataConfig(path="x", selection="kmedoids")
    assert DataConfig(path="x", selection="coreset").selection == "k-center"
    with pytest.raises(RecipeError, match="data.selection_pool: .*>= data.samples_per_class \\(8\\)"):
        DataConfig(path="x", selection="herding", selection_pool=4)
    with pytest.raises(RecipeError, match="data.selection_pool"):
        DataConfig(path="x", selection_pool="all")
    assert DataConfig(path="x", selection_pool=None).selection_pool is None


# --------------------------------------------------------------------------- end to end on the tiny trios


def _reference_embeddings(trio, rows):
    """θ_B's mean-pooled last hidden states, computed here with plain transformers (θ_B has no head)."""
    tokenizer = AutoTokenizer.from_pretrained(str(trio["target"]))
    model = BertModel.from_pretrained(str(trio["target"])).eval()
    with torch.no_grad():
        enc = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def _train_rows(trio):
    return [json.loads(line) for line in trio["train"].read_text().splitlines()]


@pytest.mark.parametrize("method", ["herding", "k-medoids", "k-center"])
def test_transport_chooses_on_the_targets_embeddings(trios, tmp_path, method):
    trio = trios("bert")
    recipe = recipe_dict("bert", trio, data={"selection": method})
    result = transport(recipe, tmp_path / "out", progress=False)
    recorded = result.report["votes"]["selection"]
    assert recorded["method"] == method and recorded["pool"] == 1000 and len(recorded["rows"]) == 6
    train = _train_rows(trio)
    pools = [[i for i, r in enumerate(train) if r["label"] == cls] for cls in (0, 1)]
    embeddings = _reference_embeddings(trio, train)
    expected = [pool[j] for pool in pools for j in ALGORITHMS[method](embeddings[pool], 3)]
    assert recorded["rows"] == expected
    baseline = transport(recipe_dict("bert", trio), tmp_path / "random", progress=False)
    assert baseline.report["votes"]["selection"]["method"] == "random"
    assert baseline.report["votes"]["data_fingerprint"] != result.report["votes"]["data_fingerprint"]


def test_embeddings_equal_plain_transformers_and_ignore_the_label(trios):
    trio = trios("bert")
    prepared = prepare(Recipe.from_dict(recipe_dict("bert", trio, data={"selection": "herding"})))
    rows = _train_rows(trio)[:10]
    model = load_base_model(prepared.plan)
    ours = embed_rows(model, prepared.objective, rows, [r["label"] for r in rows], batch_size=4)
    assert torch.allclose(ours, _reference_embeddings(trio, rows), atol=1e-5)
    flipped = embed_rows(model, prepared.objective, rows, [1 - r["label"] for r in rows], batch_size=3)
    assert torch.allclose(ours, flipped, atol=1e-5)
    assert [r for r in prepared.samples.rows] == [_train_rows(trio)[i] for i in prepared.samples.indices]


@pytest.mark.parametrize("kind", ["t5", "gpt2"])
def test_text_to_text_objectives_embed_the_input_only(trios, kind):
    trio = trios(kind)
    prepared = prepare(Recipe.from_dict(recipe_dict(kind, trio, data={"selection": "k-center"})))
    assert len(prepared.samples) == 6 and sorted(prepared.samples.labels) == [0, 0, 0, 1, 1, 1]
    assert prepared.samples.selection == {"method": "k-center", "pool": 1000}
    rows = _train_rows(trio)[:6]
    model = load_base_model(prepared.plan)
    as_labelled = embed_rows(model, prepared.objective, rows, [r["label"] for r in rows])
    as_flipped = embed_rows(model, prepared.objective, rows, [1 - r["label"] for r in rows], batch_size=4)
    # the completion (causal LM) or target (seq2seq) tokens of the label word do not enter the embedding
    assert as_labelled.shape == (6, 32) and torch.allclose(as_labelled, as_flipped, atol=1e-5)
    assert not torch.allclose(as_labelled[0], as_labelled[1])


def test_callable_objective_cannot_choose_on_embeddings(trios):
    trio = trios("bert")
    raw = recipe_dict("bert", trio, objective="callable", model_class="AutoModelForSequenceClassification",
                      data={"selection": "herding"})
    recipe = Recipe.from_dict(raw, loss_fn=lambda model, tokenizer, row: model(**tokenizer(row["text"],
                                                                                  return_tensors="pt")).logits.sum())
    with pytest.raises(RecipeError, match="data.selection: .*'callable'.* use selection 'random'"):
        prepare(recipe)


def test_cli_run_records_the_selection_and_dry_run_defers_it(trios, tmp_path, capsys):
    trio = trios("bert")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_dict("bert", trio, data={"selection": "coreset", "selection_pool": 20})))
    assert main(["run", str(path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    plan = json.loads(printed[:printed.rindex("}") + 1])
    assert plan["selection"] == {"method": "k-center", "pool": 20, "deferred": True, "planned_samples": 6}
    out = tmp_path / "out"
    assert main(["run", str(path), "-o", str(out), "--no-progress"]) == 0
    report = json.loads((out / "gradfix_report.json").read_text())
    selection = report["votes"]["selection"]
    assert selection["method"] == "k-center" and selection["pool"] == 20 and len(selection["rows"]) == 6
    assert yaml.safe_load((out / RECIPE_NAME).read_text())["data"]["selection"] == "k-center"
    train = _train_rows(trio)
    assert sorted(train[i]["label"] for i in selection["rows"]) == [0, 0, 0, 1, 1, 1]


class _PixelObjective:
    """An image objective's encode/collate (pixel tensors of a batch of one, concatenated)."""

    def encode(self, row, label):
        return {"pixel_values": row["pixels"][None], "labels": torch.tensor([label])}

    def collate(self, examples):
        return {key: torch.cat([e[key] for e in examples]) for key in ("pixel_values", "labels")}


def test_images_are_embedded_by_the_projected_image_features():
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "vocab_size": 50},
                        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 8, "patch_size": 4},
                        projection_dim=8)
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    pixels = torch.randn(5, 3, 8, 8)
    ours = embed_rows(model, _PixelObjective(), [{"pixels": p} for p in pixels], [0, 1, 0, 1, 0], batch_size=2)
    with torch.no_grad():
        expected = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    assert ours.shape == (5, 8) and torch.allclose(ours, expected, atol=1e-5)


def test_clip_objective_chooses_on_thetab_image_features(clip_trio):
    from transformers import CLIPImageProcessor, CLIPModel

    from conftest import clip_recipe_dict
    from gradfix_hf.data import load_split

    prepared = prepare(Recipe.from_dict(clip_recipe_dict(clip_trio, data={"selection": "herding"})))
    train = load_split(str(clip_trio["images"]), split="train")
    processor = CLIPImageProcessor.from_pretrained(str(clip_trio["target"]))
    model = CLIPModel.from_pretrained(str(clip_trio["target"])).eval()
    with torch.no_grad():
        pixels = processor(images=list(train["image"]), return_tensors="pt").pixel_values
        features = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    classes = sorted(set(train["label"]))
    pools = [[i for i, y in enumerate(train["label"]) if y == cls] for cls in classes]
    expected = [pool[j] for pool in pools for j in herding(features[pool], 3)]
    assert prepared.samples.indices == expected and len(prepared.examples) == 3 * len(classes)
