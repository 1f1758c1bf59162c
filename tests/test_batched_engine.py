"""The batched vote engine agrees with a plain per-sample loop on every coordinate but float-noise ties.

Criterion (stated once, used everywhere): a coordinate may differ between the engines only if, for every
sample, the reference per-sample gradient there is float noise: |g_n| ≤ 1e-9 × the largest |g_n| over the
whole model for that sample (e.g. attention key biases, whose gradient is exactly 0 in exact arithmetic).
Such coordinates must also stay rare: at most 0.5% of the tiny models' coordinates (key biases are a far
larger share of a 32-wide model than of a real one), and their count is reported.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import recipe_dict, reference_grads
from gradfix_hf import Recipe, prepare
from gradfix_hf.merge.streaming import load_base_model
from gradfix_hf.votes import NOISE_FLOOR, compute_votes, compute_votes_batched, drop_noise


def _noise_ties(reference_grads, names, name):
    """Coordinates where every sample's reference gradient is float noise (the module docstring's criterion)."""
    scale = torch.tensor([max(float(g[k].abs().max()) for k in names) for g in reference_grads])
    stacked = torch.stack([g[name] for g in reference_grads]).abs()
    return (stacked <= 1e-9 * scale.view(-1, *([1] * (stacked.dim() - 1)))).all(0)


def _assert_agree(fast, reference_grads, names, max_fraction=0.005):
    votes, evidence = fast
    n_coords, excused = 0, 0
    for name in names:
        per_sample = drop_noise(torch.stack([g[name] for g in reference_grads]).float())
        expected = -torch.sign(per_sample).sum(0)
        noise = _noise_ties(reference_grads, names, name)
        differ = votes[name].to(torch.int32) != expected.to(torch.int32)
        assert not (differ & ~noise).any(), f"{name}: {int((differ & ~noise).sum())} non-noise coordinates differ"
        expected_evidence = (per_sample != 0).any(0)
        got_evidence = evidence.get(name, torch.ones_like(expected_evidence))
        assert torch.equal(got_evidence | noise, expected_evidence | noise), name
        excused += int(differ.sum())
        n_coords += differ.numel()
    assert excused <= max_fraction * n_coords, f"{excused} of {n_coords} coordinates differ (noise)"
    return excused


@pytest.mark.parametrize("kind", ["bert", "t5", "gpt2"])
def test_batched_engine_agrees_with_per_sample_loop(trios, kind):
    recipe = Recipe.from_dict(recipe_dict(kind, trios(kind), data={"samples_per_class": 5}))
    prepared = prepare(recipe)
    names = prepared.plan.transported
    model = load_base_model(prepared.plan)
    fast = compute_votes_batched(model, prepared.objective, prepared.examples, names, micro_batch_size=4,
                                 progress=False)
    assert {v.dtype for v in fast[0].values()} == {torch.int8}
    lengths = {int(e["input_ids"].shape[1]) for e in prepared.examples}
    assert len(lengths) > 1  # the micro-batches really are padded
    grads = reference_grads(load_base_model(prepared.plan), prepared.objective.loss, prepared.examples, names)
    _assert_agree(fast, grads, names)
    # and with the library's own reference engine, on every coordinate that is not a noise tie
    reference = compute_votes(load_base_model(prepared.plan), prepared.objective.loss, prepared.examples, names,
                              progress=False)
    differ = sum(int((reference[0][n] != fast[0][n]).sum()) for n in names)
    assert differ <= 0.005 * sum(v.numel() for v in reference[0].values())


def test_micro_batch_size_does_not_change_votes(trios):
    prepared = prepare(Recipe.from_dict(recipe_dict("gpt2", trios("gpt2"), data={"samples_per_class": 4})))
    names = prepared.plan.transported
    results = [compute_votes_batched(load_base_model(prepared.plan), prepared.objective, prepared.examples, names,
                                     micro_batch_size=size, progress=False) for size in (1, 3, 8)]
    for votes, evidence in results[1:]:
        for name in names:
            assert torch.equal(votes[name], results[0][0][name]), name
        assert evidence.keys() == results[0][1].keys()


def test_mean_aggregation_agrees(trios):
    prepared = prepare(Recipe.from_dict(recipe_dict("bert", trios("bert"), data={"samples_per_class": 4})))
    names = prepared.plan.transported
    fast, _ = compute_votes_batched(load_base_model(prepared.plan), prepared.objective, prepared.examples, names,
                                    aggregation="mean", progress=False)
    grads = reference_grads(load_base_model(prepared.plan), prepared.objective.loss, prepared.examples, names)
    for name in names:
        total = drop_noise(torch.stack([g[name] for g in grads])).sum(0)
        expected = torch.sign(-total)
        # sums in another order may flip a sign only where the sum itself is rounding-level
        close = (total.abs() <= 1e-6 * total.abs().max().clamp(min=1e-30)) | _noise_ties(grads, names, name)
        assert not ((fast[name] != expected.to(fast[name].dtype)) & ~close).any(), name


class RMSNorm(nn.Module):
    """Not a supported layer type: its per-sample gradient goes through torch.func on the module alone."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim) + 0.1 * torch.randn(dim))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class ToyModel(nn.Module):
    """Tokens + a tiny image: tied embedding/head, [1, T] position lookup, shared batch-less bias table."""

    def __init__(self, vocab=23, dim=8, length=6):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.position = nn.Embedding(length, dim)
        self.table = nn.Embedding(length * length, 1)  # used with [T, T] ids: no batch dimension
        self.patch = nn.Conv2d(3, dim, kernel_size=2, stride=2)
        self.norm = nn.LayerNorm(dim)
        self.rms = RMSNorm(dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("grid", torch.arange(length * length).view(length, length), persistent=False)

    def forward(self, input_ids, pixels):
        t = input_ids.shape[1]
        h = self.embed(input_ids) + self.position(torch.arange(t).unsqueeze(0))
        h = h + self.patch(pixels).flatten(2).mean(-1).unsqueeze(1)
        scores = h @ h.transpose(1, 2) + self.table(self.grid[:t, :t]).squeeze(-1)
        scores = scores.masked_fill((input_ids == 0).unsqueeze(1), torch.finfo(scores.dtype).min)  # padding mask
        h = self.mix(self.rms(self.norm(torch.softmax(scores, -1) @ h)))
        return self.head(h)


class ToyObjective:
    """Predict each next token; padding (id 0) is ignored, as a causal LM objective does."""

    def loss(self, model, example):
        return self.batch_losses(model, self.collate([example]))[0]

    def collate(self, examples):
        ids = nn.utils.rnn.pad_sequence([e["input_ids"] for e in examples], batch_first=True)
        return {"input_ids": ids, "pixels": torch.stack([e["pixels"] for e in examples])}

    def batch_losses(self, model, batch):
        logits = model(batch["input_ids"], batch["pixels"])[:, :-1]
        labels = batch["input_ids"][:, 1:].masked_fill(batch["input_ids"][:, 1:] == 0, -100)
        per_token = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        return per_token.sum(1) / (labels != -100).sum(1).clamp(min=1)


def test_every_layer_rule_tied_weights_broadcast_lookups_and_exact_fallback():
    torch.manual_seed(0)
    model = ToyModel().eval()
    generator = torch.Generator().manual_seed(1)
    examples = [{"input_ids": torch.randint(1, 23, (int(torch.randint(3, 7, (1,), generator=generator)),),
                                            generator=generator),
                 "pixels": torch.randn(3, 4, 4, generator=generator)} for _ in range(7)]
    names = [n for n, _ in model.named_parameters()]
    assert "head.weight" not in names  # tied: one parameter, two uses
    objective = ToyObjective()
    details = {}
    fast = compute_votes_batched(model, objective, examples, names, micro_batch_size=3, progress=False,
                                 details=details)
    assert details["exact_fallback"] == ["table.weight"]  # looked up with [T, T] ids: no batch dimension
    assert details["functional"] == ["rms.weight"]
    assert details["broadcast"] == ["position.weight"]
    assert {"embed.weight", "patch.weight", "patch.bias", "norm.weight", "mix.weight"} <= set(details["rule"])
    grads = reference_grads(model, objective.loss, examples, names)
    excused = _assert_agree(fast, grads, names, max_fraction=0.0)
    assert excused == 0
    # rows of tokens absent from every sample (and the padding row) got no vote and no evidence
    used = torch.unique(torch.cat([e["input_ids"] for e in examples]))
    unused = torch.ones(23, dtype=torch.bool)
    unused[used] = False
    assert unused.any()
    # the tied head gives every row some gradient, so embedding evidence is complete here:
    assert "embed.weight" not in fast[1] or bool(fast[1]["embed.weight"].all())
    assert 0 < NOISE_FLOOR < 1e-5


def test_engine_choice_from_recipe_and_cli(trios, tmp_path, capsys):
    import yaml

    from gradfix_hf import VotesFile
    from gradfix_hf.cli import main
    from gradfix_hf.errors import RecipeError

    trio = trios("bert")
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe_dict("bert", trio)))
    files = {}
    for engine in ("auto", "batched", "reference"):
        files[engine] = tmp_path / f"{engine}.safetensors"
        assert main(["votes", str(recipe_path), "-o", str(files[engine]), "--vote-engine", engine,
                     "--vote-batch-size", "4", "--no-progress"]) == 0
    loaded = {k: VotesFile.load(v) for k, v in files.items()}
    assert [loaded[k].metadata["engine"] for k in ("auto", "batched", "reference")] == ["batched", "batched",
                                                                                         "reference"]
    for name, votes in loaded["batched"].votes.items():
        assert torch.equal(votes, loaded["auto"].votes[name])
        differ = votes != loaded["reference"].votes[name]
        # the only coordinates where the two engines may differ: gradients that are 0 in exact arithmetic
        assert not differ.any() or name.endswith("attention.self.key.bias"), name
    assert main(["votes", str(recipe_path), "-o", str(tmp_path / "x.safetensors"), "--vote-batch-size", "0"]) == 2
    assert "vote_batch_size: must be a positive integer" in capsys.readouterr().err
    with pytest.raises(RecipeError, match="vote_engine: 'fast' is not one of auto, batched, reference"):
        Recipe.from_dict(recipe_dict("bert", trio, vote_engine="fast"))
    with pytest.raises(RecipeError, match="'batched' needs per-sample losses from one batched forward"):
        Recipe.from_dict(recipe_dict("bert", trio, objective="callable", vote_engine="batched",
                                     model_class="AutoModelForSequenceClassification"),
                         loss_fn=lambda model, tokenizer, row: None)


def test_t5_relative_position_bias_is_voted_per_sample_without_the_loop(trios):
    """The [1, heads, q, k] bias shared by the batch gets per-sample copies: no exact fallback, same votes."""
    prepared = prepare(Recipe.from_dict(recipe_dict("t5", trios("t5"), data={"samples_per_class": 4})))
    names = prepared.plan.transported
    tables = [n for n in names if n.endswith("relative_attention_bias.weight")]
    assert len(tables) == 2  # encoder and decoder
    details: dict = {}
    model = load_base_model(prepared.plan)
    fast = compute_votes_batched(model, prepared.objective, prepared.examples, names, micro_batch_size=3,
                                 progress=False, details=details)
    assert details["relative_bias"] == sorted(tables) and details["exact_fallback"] == []
    assert "compute_bias" not in vars(model.encoder.block[0].layer[0].SelfAttention)  # wrapper removed
    grads = reference_grads(load_base_model(prepared.plan), prepared.objective.loss, prepared.examples, tables)
    for name in tables:
        expected = -torch.sign(drop_noise(torch.stack([g[name] for g in grads]).float())).sum(0)
        assert torch.equal(fast[0][name].to(torch.int32), expected.to(torch.int32)), name
        assert (fast[0][name] != 0).any()
