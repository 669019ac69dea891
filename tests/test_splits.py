"""Split plans: family rules, sizes, seeding, and zero overlap with held-out."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lm_eval_promptopt.errors import PromptOptError
from lm_eval_promptopt.options import RunOptions
from lm_eval_promptopt.splits import plan_splits, task_family


def config(**kw):
    base = dict(dataset_path=None, training_split=None, validation_split=None, test_split="test", fewshot_split=None)
    return SimpleNamespace(**{**base, **kw})


def sizes(counts):
    return lambda split: counts.get(split)


def no_shots(_split):
    return set()


@pytest.mark.parametrize(
    ("n", "train", "dev"),
    [(250, 50, 100), (187, 41, 83), (178, 39, 79), (146, 32, 65)],
)
def test_bbh_internal_split_keeps_a_third_held_out(n, train, dev):
    plan = plan_splits("bbh_cot_zeroshot_snarks", config(dataset_path="SaylorTwift/bbh"), RunOptions(), sizes({"test": n}), no_shots)
    assert (len(plan.train.indices), len(plan.dev.indices)) == (train, dev)
    assert len(plan.heldout.indices) >= n / 3
    assert plan.train.split == plan.dev.split == plan.heldout.split == "test"
    everything = set(plan.train.indices) | set(plan.dev.indices) | set(plan.heldout.indices)
    assert everything == set(range(n))
    assert len(everything) == len(plan.train.indices) + len(plan.dev.indices) + len(plan.heldout.indices)
    assert not plan.heldout_is_whole_split


def test_plans_are_seeded_per_task():
    args = (config(), RunOptions(seed=3), sizes({"test": 250}), no_shots)
    a = plan_splits("bbh_x", *args)
    assert a == plan_splits("bbh_x", *args)
    assert a.train != plan_splits("bbh_y", *args).train
    assert a.train != plan_splits("bbh_x", config(), RunOptions(seed=4), sizes({"test": 250}), no_shots).train


def test_mmlu_optimizes_on_validation_and_evaluates_all_of_test():
    cfg = config(dataset_path="cais/mmlu", fewshot_split="dev")
    plan = plan_splits("mmlu_anatomy", cfg, RunOptions(), sizes({"dev": 20, "validation": 20, "test": 60}), no_shots)
    assert plan.train.split == plan.dev.split == "validation"
    assert (len(plan.train.indices), len(plan.dev.indices)) == (7, 13)
    assert plan.heldout.indices == tuple(range(60)) and plan.heldout.split == "test"


def test_mmlu_variant_that_evaluates_validation_optimizes_on_dev():
    cfg = config(dataset_path="cais/mmlu", test_split=None, validation_split="validation", fewshot_split="dev")
    plan = plan_splits("mmlu_flan_cot_zeroshot_anatomy", cfg, RunOptions(), sizes({"dev": 20, "validation": 20}), no_shots)
    assert plan.train.split == "dev" and plan.heldout.split == "validation"
    assert "'dev'" in plan.rule


def test_gsm8k_excludes_the_few_shot_exemplars():
    cfg = config(training_split="train", fewshot_split="train")
    shots = set(range(0, 1000, 2))
    plan = plan_splits("gsm8k", cfg, RunOptions(), sizes({"train": 1000, "test": 50}), lambda s: shots if s == "train" else set())
    assert (len(plan.train.indices), len(plan.dev.indices)) == (100, 100)
    assert not (set(plan.train.indices) | set(plan.dev.indices)) & shots
    assert "500 few-shot exemplars of 'train' excluded" in plan.rule


def test_other_task_uses_train_for_train_and_validation_for_dev():
    cfg = config(training_split="train", validation_split="validation")
    plan = plan_splits("arc_easy", cfg, RunOptions(), sizes({"train": 30, "validation": 300, "test": 40}), no_shots)
    assert plan.train.split == "train" and len(plan.train.indices) == 30
    assert plan.dev.split == "validation" and len(plan.dev.indices) == 100
    assert plan.heldout_is_whole_split


def test_explicit_sizes_are_honoured_and_checked():
    plan = plan_splits("bbh_x", config(), RunOptions(train_size=5, dev_size=7), sizes({"test": 20}), no_shots)
    assert (len(plan.train.indices), len(plan.dev.indices), len(plan.heldout.indices)) == (5, 7, 8)
    with pytest.raises(PromptOptError, match="choose smaller sizes"):
        plan_splits("bbh_x", config(), RunOptions(train_size=10, dev_size=10), sizes({"test": 20}), no_shots)


def test_family_detection_by_name_or_dataset():
    assert task_family("leaderboard_bbh_navigate", None) == "bbh"
    assert task_family("my_copy", "SaylorTwift/bbh") == "bbh"
    assert task_family("mmlu_generative_anatomy", None) == "mmlu"
    assert task_family("gsm8k_cot_zeroshot", None) == "gsm8k"
    assert task_family("arc_easy", "allenai/ai2_arc") == "other"
