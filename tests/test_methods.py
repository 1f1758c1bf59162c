"""Each merge method and mask variant against its formula on small hand-made tensors."""
import math

import pytest
import torch

from gradfix_hf.errors import RecipeError
from gradfix_hf.methods.masks import MASK_VARIANTS, keep_mask, masked_task_vector, tensor_generator
from gradfix_hf.methods import GlobalTrim, TensorInputs, get, registered_methods, ties_merge, trim_per_tensor
from gradfix_hf.methods.merge_then_mask import consensus_signs
from gradfix_hf.recipe import MethodConfig

TAU = torch.tensor([0.5, -0.2, 0.3, 0.0, -0.4, 0.1])
VOTES = torch.tensor([3, 2, -1, 5, -4, 0], dtype=torch.int8)  # ŝ = [+, +, -, +, -, 0]


def inputs(taus, signs=None, evidence=None, weights=None, name="w", thresholds=None):
    n = len(taus)
    return TensorInputs(name, list(taus), list(signs or [None] * n), list(evidence or [None] * n),
                        list(weights or [1.0] * n), thresholds)


# ----------------------------------------------------------------------------------------------- registry
def test_registry_holds_every_method():
    assert list(registered_methods()) == ["gradfix", "task_arithmetic", "ties", "mask_then_merge",
                                          "merge_then_mask", "multi_source"]


def test_unknown_method_and_parameter_get_the_closest_name():
    with pytest.raises(RecipeError, match=r"method\.name: unknown merge method 'tie'.*Did you mean 'ties'\?"):
        MethodConfig.parse({"name": "tie"})
    with pytest.raises(RecipeError, match=r"method: unknown key 'densty' for method 'ties'\. Did you mean 'density'\?"):
        MethodConfig.parse({"name": "ties", "densty": 0.3})
    with pytest.raises(RecipeError, match=r"unknown key 'mask' for method 'task_arithmetic'"):
        MethodConfig.parse({"name": "task_arithmetic", "mask": "gradfix"})


@pytest.mark.parametrize("raw,message", [
    ({"name": "ties", "density": 0.0}, r"method\.density: 0\.0 is invalid: must be in \(0, 1\]"),
    ({"name": "ties", "density": "high"}, r"method\.density: must be a float"),
    ({"name": "ties", "variant": "orignal"}, r"method\.variant: 'orignal' is not one of paper, original\. Did you mean 'original'\?"),
    ({"name": "mask_then_merge", "merge": "tie"}, r"method\.merge: 'tie' is not one of task_arithmetic, ties"),
    ({"name": "mask_then_merge", "density": 0.5}, r"method\.density: only applies with merge: ties"),
    ({"name": "merge_then_mask", "merge": "ties", "normalize": True}, r"method\.normalize: only applies with merge: task_arithmetic"),
    ({"name": "gradfix", "mask": "soft", "rho": -1.0}, r"method\.rho: -1\.0 is invalid: must be > 0"),
    ({"name": "gradfix", "seed": 1.5}, r"method\.seed: must be a int"),
    ({"name": "gradfix", "no_evidence": "kep"}, r"method\.no_evidence: 'kep' is not one of drop, keep, "
                                              r"scale\. Did you mean 'keep'\?"),
    ({"name": "gradfix", "no_evidence_scale": 0.3}, r"method\.no_evidence_scale: only applies with no_evidence: scale"),
    ({"name": "gradfix", "no_evidence": "scale", "no_evidence_scale": 1.5}, r"no_evidence_scale: 1\.5 is invalid"),
    ({"name": "gradfix", "min_margin": -0.1}, r"method\.min_margin: -0\.1 is invalid: must be in \[0, 1\]"),
    ({"name": "gradfix", "mask": "oracle", "min_margin": 0.2}, r"method\.min_margin: vote margins need integer "
                                                                r"majority votes; mask 'oracle'"),
    ({"name": "merge_then_mask", "min_margin": 0.2}, r"merge_then_mask masks with the consensus sign"),
])
def test_parameters_are_validated(raw, message):
    with pytest.raises(RecipeError, match=message):
        MethodConfig.parse(raw)


def test_parameters_nested_or_flat_give_the_same_config():
    flat = MethodConfig.parse({"name": "ties", "alpha": 0.4, "density": 0.3})
    nested = MethodConfig.parse({"name": "ties", "alpha": 0.4, "parameters": {"density": 0.3}})
    assert flat == nested and flat.parameters == {"variant": "paper", "density": 0.3}
    assert MethodConfig.parse(flat.to_dict()) == flat  # what is written into the output folder reads back


def test_method_task_counts():
    get("gradfix").check_tasks(1)
    with pytest.raises(RecipeError, match="method 'gradfix' takes exactly 1 task vector"):
        get("gradfix").check_tasks(2)
    get("merge_then_mask").check_tasks(5)


# ----------------------------------------------------------------------------------------------- mask variants
def test_gradfix_keeps_agreeing_signs_and_drops_ties_and_zeros():
    out = masked_task_vector("gradfix", TAU, VOTES)
    assert out.tolist() == pytest.approx([0.5, 0.0, 0.0, 0.0, -0.4, 0.0])


def test_force_takes_the_target_sign_with_the_source_magnitude():
    out = masked_task_vector("force", TAU, VOTES)
    assert out.tolist() == pytest.approx([0.5, 0.2, -0.3, 0.0, -0.4, 0.0])  # ŝ = 0 → 0; τ = 0 → 0


def test_no_evidence_keep_applies_to_every_sign_variant():
    evidence = torch.tensor([True, True, True, True, True, False])
    for variant in ("gradfix", "force", "soft"):
        dropped = masked_task_vector(variant, TAU, VOTES, evidence)
        kept = masked_task_vector(variant, TAU, VOTES, evidence, no_evidence="keep")
        assert dropped[5] == 0 and kept[5] == pytest.approx(0.1), variant
        assert torch.equal(dropped[:5], kept[:5]), variant


def test_no_evidence_scale_keeps_a_fraction_where_no_sample_touched():
    evidence = torch.tensor([True, True, True, True, True, False])
    out = masked_task_vector("gradfix", TAU, VOTES, evidence, no_evidence="scale", no_evidence_scale=0.25)
    assert out.tolist() == pytest.approx([0.5, 0.0, 0.0, 0.0, -0.4, 0.025])
    tie = masked_task_vector("gradfix", TAU, VOTES, torch.ones(6, dtype=torch.bool), no_evidence="scale")
    assert tie[5] == 0  # a real tie (evidence, vote 0) is dropped whatever the policy


def test_min_margin_turns_weak_votes_into_ties():
    # N = 5: q = 0.5 needs |v| >= 3 → votes 2 and -1 become ties
    out = masked_task_vector("gradfix", TAU, VOTES, min_margin=0.5, n_votes=5)
    assert out.tolist() == pytest.approx([0.5, 0.0, 0.0, 0.0, -0.4, 0.0])
    out = masked_task_vector("force", TAU, VOTES, min_margin=0.5, n_votes=5)
    assert out.tolist() == pytest.approx([0.5, 0.0, 0.0, 0.0, -0.4, 0.0])  # force gives ±|τ| only past the margin
    strict = masked_task_vector("gradfix", TAU, VOTES, min_margin=0.9, n_votes=5)
    assert strict.tolist() == pytest.approx([0.0] * 6)  # |v| >= 5 nowhere with τ != 0 except index 3 (τ = 0)
    with pytest.raises(ValueError, match="min_margin needs integer votes"):
        masked_task_vector("gradfix", TAU, VOTES.float(), min_margin=0.5, n_votes=5)


def test_margin_mask_weights_agreeing_coordinates_by_vote_margin():
    out = masked_task_vector("margin", TAU, VOTES, n_votes=5)
    assert out.tolist() == pytest.approx([0.5 * 3 / 5, 0.0, 0.0, 0.0, -0.4 * 4 / 5, 0.0])
    with pytest.raises(ValueError, match="mask 'margin' needs integer votes"):
        masked_task_vector("margin", TAU, VOTES)


def test_method_kernel_passes_the_vote_count():
    params = get("gradfix").validate({"min_margin": 0.5})
    out = get("gradfix").delta(TensorInputs("w", [TAU], [VOTES], [None], [1.0], n_votes=[5]), params)
    assert out.tolist() == pytest.approx([0.5, 0.0, 0.0, 0.0, -0.4, 0.0])


def test_soft_formula():
    rms = TAU.pow(2).mean().sqrt()
    s = torch.sign(VOTES.float())
    expected = TAU * torch.tanh(2.0 * s * TAU / rms).clamp_min(0)
    out = masked_task_vector("soft", TAU, VOTES, rho=2.0)
    assert torch.allclose(out, expected)
    assert out[1] == 0 and out[2] == 0 and out[5] == 0  # disagreeing or tied coordinates get nothing
    assert 0 < out[0] < TAU[0]  # agreeing ones keep a magnitude-dependent share
    assert masked_task_vector("soft", torch.zeros(4), torch.ones(4)).tolist() == [0.0] * 4


def test_random_mask_matches_the_gradfix_density_and_is_seeded_per_tensor():
    torch.manual_seed(0)
    tau = torch.randn(40, 30)
    tau[tau.abs() < 0.3] = 0
    votes = torch.randint(-5, 6, (40, 30), dtype=torch.int8)
    gradfix = masked_task_vector("gradfix", tau, votes)
    a = masked_task_vector("random", tau, votes, seed=3, name="layer.weight")
    b = masked_task_vector("random", tau, votes, seed=3, name="layer.weight")
    c = masked_task_vector("random", tau, votes, seed=4, name="layer.weight")
    assert int((a != 0).sum()) == int((gradfix != 0).sum()) > 0
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[a != 0], tau[a != 0])  # kept values are τ's own
    assert not torch.equal(a != 0, gradfix != 0)


def test_random_sign_keeps_magnitudes_and_needs_no_votes():
    torch.manual_seed(1)
    tau = torch.randn(1000)
    out = masked_task_vector("random-sign", tau, None, seed=0, name="x")
    assert torch.equal(out.abs(), tau.abs())
    flipped = (torch.sign(out) != torch.sign(tau)).float().mean()
    assert 0.4 < flipped < 0.6
    assert torch.equal(out, masked_task_vector("random-sign", tau, None, seed=0, name="x"))
    assert get("gradfix").sign_source({"mask": "random-sign"}) is None


def test_tensor_generator_is_independent_of_call_order():
    first = torch.rand(3, generator=tensor_generator(0, "a"))
    torch.rand(5, generator=tensor_generator(0, "b"))
    assert torch.equal(first, torch.rand(3, generator=tensor_generator(0, "a")))


def test_every_variant_is_listed():
    assert MASK_VARIANTS == ("gradfix", "mean", "oracle", "force", "random", "random-sign", "soft", "margin",
                             "naive", "none")


def test_none_keeps_nothing_and_needs_no_votes():
    tau = torch.randn(50)
    assert torch.equal(masked_task_vector("none", tau), torch.zeros(50))
    assert not bool(keep_mask("none", tau).any())
    assert get("gradfix").sign_source({"mask": "none"}) is None


# ----------------------------------------------------------------------------------------------- task arithmetic
def test_task_arithmetic_weights_and_normalize():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -4.0])
    ta = get("task_arithmetic")
    assert ta.delta(inputs([a, b], weights=[1.0, 0.5]), {"normalize": False}).tolist() == [2.5, 0.0]
    assert ta.delta(inputs([a, b], weights=[1.0, 1.0]), {"normalize": True}).tolist() == [2.0, -1.0]


# ----------------------------------------------------------------------------------------------- TIES
def test_paper_trim_keeps_every_value_tied_with_the_threshold():
    v = torch.tensor([3.0, -3.0, 1.0, 0.5, 0.0, -0.2, 0.1, 2.0])
    # density 0.25 of 8 → k = 2: top-2 magnitudes are 3, 3 → threshold 3, both kept
    assert trim_per_tensor(v, 0.25).tolist() == [3.0, -3.0, 0, 0, 0, 0, 0, 0]
    # density 0.2 → k = ceil(1.6) = 2 as well; density 0.3 → k = 3 → 2.0 joins
    assert trim_per_tensor(v, 0.2).tolist() == [3.0, -3.0, 0, 0, 0, 0, 0, 0]
    assert trim_per_tensor(v, 0.3).tolist() == [3.0, -3.0, 0, 0, 0, 0, 0, 2.0]
    assert torch.equal(trim_per_tensor(v, 1.0), v)


def test_paper_ties_elects_by_count_with_ties_to_plus_and_takes_the_disjoint_mean():
    t1 = torch.tensor([1.0, 1.0, -1.0, 0.0, 5.0])
    t2 = torch.tensor([2.0, -1.0, -3.0, 0.0, -1.0])
    t3 = torch.tensor([0.0, 0.0, 2.0, 0.0, -1.0])
    out = ties_merge([t1, t2, t3], [1.0, 1.0, 1.0], variant="paper", density=1.0)
    # col0: +,+ → mean(1,2); col1: +,- tie → +1 → 1; col2: -,-,+ → -1 → mean(-1,-3); col3: empty → 0;
    # col4: +5,-1,-1 → count elects −, though the sum is +3 → mean(-1,-1)
    assert out.tolist() == pytest.approx([1.5, 1.0, -2.0, 0.0, -1.0])


def test_original_ties_elects_the_sign_of_the_sum_and_zero_sum_elects_nothing():
    t1 = torch.tensor([5.0, 1.0, 0.0])
    t2 = torch.tensor([-1.0, -1.0, 0.0])
    t3 = torch.tensor([-1.0, 0.0, 0.0])
    out = ties_merge([t1, t2, t3], [1.0, 1.0, 1.0], variant="original", density=1.0)
    # col0: sum +3 → + → 5; col1: sum 0 → nothing kept; col2: empty
    assert out.tolist() == pytest.approx([5.0, 0.0, 0.0])


def test_ties_weights_scale_values_not_paper_counts():
    t1, t2 = torch.tensor([1.0, -4.0]), torch.tensor([-2.0, 1.0])
    out = ties_merge([t1, t2], [3.0, 1.0], variant="paper", density=1.0)
    assert out.tolist() == pytest.approx([3.0, 1.0])  # col0 tie → +: 3·1; col1 tie → +: 1·1
    out = ties_merge([t1, t2], [3.0, 1.0], variant="original", density=1.0)
    assert out.tolist() == pytest.approx([3.0, -12.0])  # col0: 3 − 2 > 0; col1: −12 + 1 < 0


def test_ties_with_empty_masks_gives_zero_not_nan():
    zeros = [torch.zeros(3, 2), torch.zeros(3, 2)]
    for variant in ("paper", "original"):
        out = ties_merge(zeros, [1.0, 1.0], variant=variant, density=0.5, thresholds=[0.0, 0.0])
        assert torch.equal(out, torch.zeros(3, 2))


def test_original_ties_needs_thresholds():
    with pytest.raises(ValueError, match="thresholds"):
        ties_merge([torch.ones(2)], [1.0], variant="original", density=0.5)


@pytest.mark.parametrize("density", [0.01, 0.2, 0.5, 0.999])
def test_global_trim_threshold_is_the_exact_kth_largest(density):
    torch.manual_seed(2)
    tensors = [torch.randn(300), torch.randn(20, 17) * 0.01, torch.zeros(50), torch.full((40,), 0.5)]
    trim = GlobalTrim(1, density)
    for t in tensors:
        trim.first_pass(0, t)
    trim.finish_first_pass()
    for t in tensors:
        trim.second_pass(0, t)
    values = torch.cat([t.abs().flatten() for t in tensors])
    k = math.ceil(values.numel() * density)
    assert trim.thresholds()[0] == values.sort(descending=True).values[k - 1].item()


# ----------------------------------------------------------------------------------------------- pipelines
def test_mask_then_merge_masks_each_vector_with_its_own_votes():
    t1, t2 = torch.tensor([1.0, -1.0, 2.0]), torch.tensor([1.0, 1.0, -2.0])
    v1, v2 = torch.tensor([1, 1, 1], dtype=torch.int8), torch.tensor([-1, 1, -1], dtype=torch.int8)
    params = get("mask_then_merge").validate({})
    out = get("mask_then_merge").delta(inputs([t1, t2], [v1, v2]), params)
    assert out.tolist() == [1.0, 1.0, 0.0]  # t1 keeps 1, 2; t2 keeps 1 (col1), -2 (col2): sum → [1, 1, 0]


def test_merge_then_mask_uses_the_consensus_of_task_signs():
    votes = [torch.tensor([3, -1, 1, 0], dtype=torch.int8), torch.tensor([-1, -1, -1, 0], dtype=torch.int8),
             torch.tensor([-1, 1, 0, 0], dtype=torch.int8)]
    # each task counts once: col0 +,−,− → −; col1 −,−,+ → −; col2 +,−,0 → tie 0; col3 none → 0
    assert consensus_signs(votes).tolist() == [-1, -1, 0, 0]
    taus = [torch.tensor([1.0, -1.0, 1.0, 1.0]), torch.tensor([-3.0, -1.0, 1.0, 1.0]),
            torch.tensor([0.5, 0.5, 0.0, 0.0])]
    out = get("merge_then_mask").delta(inputs(taus, votes), get("merge_then_mask").validate({}))
    assert out.tolist() == [-1.5, -1.5, 0.0, 0.0]  # merged = [-1.5, -1.5, 2, 2], masked by [−, −, 0, 0]


def test_merge_then_mask_evidence_is_any_task():
    taus = [torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])]
    votes = [torch.tensor([0, 0], dtype=torch.int8)] * 2
    evidence = [torch.tensor([True, False]), torch.tensor([False, False])]
    params = get("merge_then_mask").validate({"no_evidence": "keep"})
    out = get("merge_then_mask").delta(inputs(taus, votes, evidence), params)
    assert out.tolist() == [0.0, 2.0]  # col0 had evidence (a tie: dropped); col1 none: kept


def test_multi_source_shares_one_vote():
    assert get("multi_source").shared_vote and not get("mask_then_merge").shared_vote
    t1, t2 = torch.tensor([1.0, -1.0]), torch.tensor([2.0, 2.0])
    v = torch.tensor([1, 1], dtype=torch.int8)
    params = get("multi_source").validate({"merge": "ties", "density": 1.0})
    assert get("multi_source").delta(inputs([t1, t2], [v, v]), params).tolist() == [1.5, 2.0]
