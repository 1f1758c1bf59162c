"""Mask semantics on small hand-made tensors: m = 1{sign(τ_A) = ŝ}, ties and τ = 0 keep nothing."""
import torch

from gradfix_hf.methods import keep_mask, sign_agreement_mask, transported

TAU = torch.tensor([0.5, -0.2, 0.3, 0.0, -0.7, 0.1])


def test_sign_agreement_keeps_only_matching_signs():
    votes = torch.tensor([3, 2, 0, 5, -1, -4], dtype=torch.int8)
    mask = sign_agreement_mask(TAU, votes)
    # +/+ kept, -/+ dropped, tie dropped, τ=0 dropped, -/- kept, +/- dropped
    assert mask.tolist() == [True, False, False, False, True, False]


def test_vote_magnitude_does_not_matter_only_its_sign():
    small = sign_agreement_mask(TAU, torch.tensor([1, -1, 1, 1, -1, 1], dtype=torch.int8))
    large = sign_agreement_mask(TAU, torch.tensor([100, -90, 7, 3, -127, 1], dtype=torch.int8))
    assert torch.equal(small, large)
    assert small.all() == torch.tensor(False)  # τ = 0 at index 3 is never kept
    assert small.sum() == 5


def test_tie_everywhere_keeps_nothing():
    assert not keep_mask("gradfix", TAU, signs=torch.zeros(6, dtype=torch.int8)).any()


def test_naive_keeps_every_nonzero_coordinate():
    assert keep_mask("naive", TAU).tolist() == [True, True, True, False, True, True]


def test_oracle_uses_sign_of_float_target_task_vector():
    tau_b = torch.tensor([1e-6, 0.4, -0.3, 2.0, -1e-3, 0.0])
    assert keep_mask("oracle", TAU, signs=tau_b).tolist() == [True, False, False, False, True, False]


def test_no_evidence_policy_drop_or_keep():
    votes = torch.tensor([0, 0, 1, 0, -2, 0], dtype=torch.int8)
    evidence = torch.tensor([False, True, True, False, True, True])  # index 0, 3: no sample touched them
    dropped = keep_mask("gradfix", TAU, signs=votes, evidence=evidence, no_evidence="drop")
    kept = keep_mask("gradfix", TAU, signs=votes, evidence=evidence, no_evidence="keep")
    assert dropped.tolist() == [False, False, True, False, True, False]
    # keep: index 0 gets τ_A; index 3 has τ = 0 so stays dropped; index 1 is a real tie, still dropped
    assert kept.tolist() == [True, False, True, False, True, False]


def test_transported_formula():
    target = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    mask = torch.tensor([True, False, True, True, False, True])
    out = transported(target, TAU, mask, 0.5)
    expected = target + 0.5 * TAU * mask.float()
    assert torch.allclose(out, expected)
    assert out[1] == target[1] and out[4] == target[4]
