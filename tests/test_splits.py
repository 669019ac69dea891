"""Split plans: family rules, sizes, seeding, and zero overlap with held-out."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import needs_shared_data

from lm_eval_promptopt.errors import PromptOptError
from lm_eval_promptopt.harness.splits import plan_splits, resolve_split, task_family
from lm_eval_promptopt.options import RunOptions


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
    plan = plan_splits(
        "bbh_cot_zeroshot_snarks", config(dataset_path="SaylorTwift/bbh"), RunOptions(), sizes({"test": n}), no_shots
    )
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
    plan = plan_splits(
        "mmlu_flan_cot_zeroshot_anatomy", cfg, RunOptions(), sizes({"dev": 20, "validation": 20}), no_shots
    )
    assert plan.train.split == "dev" and plan.heldout.split == "validation"
    assert "'dev'" in plan.rule


def test_gsm8k_excludes_the_few_shot_exemplars():
    cfg = config(training_split="train", fewshot_split="train")
    shots = set(range(0, 1000, 2))
    plan = plan_splits(
        "gsm8k", cfg, RunOptions(), sizes({"train": 1000, "test": 50}), lambda s: shots if s == "train" else set()
    )
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


def test_explicit_sizes_beyond_separate_splits_are_an_error_naming_the_count():
    cfg = config(training_split="train", validation_split="validation")
    args = (cfg, sizes({"train": 60, "validation": 120, "test": 40}), no_shots)
    with pytest.raises(
        PromptOptError, match=r"train_size=100000, but 'train' has 60 usable docs; choose train_size <= 60"
    ):
        plan_splits("arc_easy", args[0], RunOptions(train_size=100000, dev_size=10), *args[1:])
    with pytest.raises(PromptOptError, match=r"dev_size=121, but 'validation' has 120 usable docs"):
        plan_splits("arc_easy", args[0], RunOptions(train_size=60, dev_size=121), *args[1:])
    plan = plan_splits("arc_easy", args[0], RunOptions(train_size=60, dev_size=120), *args[1:])
    assert (len(plan.train.indices), len(plan.dev.indices)) == (60, 120)


@pytest.mark.parametrize(("n", "dev"), [(250, 100), (187, 68), (178, 64), (146, 48)])
def test_greater_split_is_the_papers_bbh_rows(n, dev):
    plan = plan_splits(
        "bbh_cot_zeroshot_snarks", config(), RunOptions(split="greater", seed=7), sizes({"test": n}), no_shots
    )
    assert plan.train.indices == tuple(range(50))  # rows [0:50], whatever the seed
    assert plan.dev.indices == tuple(range(50, 50 + dev))  # [50:150]; small tasks: half the rest
    assert plan.heldout.indices == tuple(range(50 + dev, n)) and len(plan.heldout.indices) in (
        n - 50 - dev,
        dev,
        dev + 1,
    )
    assert plan.rule.startswith("GReaTer's BBH rows")


@pytest.mark.parametrize(("n", "size"), [(250, 48), (187, 35), (178, 33), (146, 27)])
def test_gpo_split_has_the_papers_bbh_sizes(n, size):
    plan = plan_splits("bbh_cot_zeroshot_snarks", config(), RunOptions(split="gpo"), sizes({"test": n}), no_shots)
    assert (len(plan.train.indices), len(plan.dev.indices), len(plan.heldout.indices)) == (size, size, n - 2 * size)
    assert plan.train.indices != tuple(range(size))  # a seeded draw: GPO's rows are not recoverable
    assert plan == plan_splits(
        "bbh_cot_zeroshot_snarks", config(), RunOptions(split="gpo"), sizes({"test": n}), no_shots
    )


def test_gpo_split_gives_mmlu_twenty_train_docs_so_nine_steps():
    from lm_eval_promptopt.optimizers.gpo import total_steps

    cfg = config(dataset_path="cais/mmlu", fewshot_split="dev")
    plan = plan_splits(
        "mmlu_anatomy", cfg, RunOptions(split="gpo"), sizes({"dev": 20, "validation": 20, "test": 60}), no_shots
    )
    assert (plan.train.split, len(plan.train.indices), plan.dev.split, len(plan.dev.indices)) == (
        "dev",
        20,
        "validation",
        20,
    )
    assert plan.heldout.split == "test" and len(plan.heldout.indices) == 60
    assert total_steps(len(plan.train.indices), 3, 8) == 9  # the paper's T for MMLU (the seeded plan's 7 give 3)
    hub = plan_splits(
        "mmlu_anatomy", cfg, RunOptions(split="gpo"), sizes({"dev": 5, "validation": 27, "test": 135}), no_shots
    )
    assert (len(hub.train.indices), len(hub.dev.indices)) == (5, 20)  # capped by what the hub's splits hold


def test_paper_presets_elsewhere_and_their_errors():
    gsm = plan_splits(
        "gsm8k",
        config(training_split="train"),
        RunOptions(split="greater"),
        sizes({"train": 1000, "test": 50}),
        no_shots,
    )
    assert (len(gsm.train.indices), len(gsm.dev.indices)) == (100, 100) and gsm.rule.startswith("GReaTer's GSM8k sizes")
    other = plan_splits(
        "mmlu_anatomy",
        config(fewshot_split="dev"),
        RunOptions(split="greater"),
        sizes({"dev": 20, "validation": 20, "test": 60}),
        no_shots,
    )
    assert other.rule.startswith("the GReaTer paper has no split for mmlu tasks")
    assert resolve_split(RunOptions(split="paper"), "greater").split == "greater"
    assert resolve_split(RunOptions(split="paper"), "gpo").split == "gpo"
    with pytest.raises(PromptOptError, match="'candidates' has none: use split=greater"):
        resolve_split(RunOptions(split="paper"), "candidates")
    with pytest.raises(ValueError, match="split=gpo sets the sizes itself"):
        RunOptions(split="gpo", train_size=10)
    with pytest.raises(ValueError, match="split must be one of seeded, paper, greater, gpo"):
        RunOptions(split="textgrad")


def test_family_detection_by_name_or_dataset():
    assert task_family("leaderboard_bbh_navigate", None) == "bbh"
    assert task_family("my_copy", "SaylorTwift/bbh") == "bbh"
    assert task_family("mmlu_generative_anatomy", None) == "mmlu"
    assert task_family("gsm8k_cot_zeroshot", None) == "gsm8k"
    assert task_family("arc_easy", "allenai/ai2_arc") == "other"


@needs_shared_data
def test_split_paper_through_lm_eval_records_the_papers_rows(local_tasks: Path, evaluate):
    task = "bbh_cot_zeroshot_boolean_expressions"
    results = evaluate(model="oracle", include_path=local_tasks, tasks=[task], limit=3, optimizer="candidates",
                       optimizer_args="candidates=Be quick.,split=greater,seed=3")  # fmt: skip
    plan = results["prompt_optimization"]["tasks"][task]["plan"]
    assert plan["train"]["indices"] == list(range(50)) and plan["dev"]["indices"] == list(range(50, 150))
    assert (
        plan["heldout"]["planned_size"] == 100
        and plan["heldout"]["size"] == 3
        and plan["rule"].startswith("GReaTer's BBH rows")
    )
    with pytest.raises(PromptOptError, match="'candidates' has none: use split=greater") as refused:
        evaluate(
            model="oracle",
            include_path=local_tasks,
            tasks=[task],
            optimizer="candidates",
            optimizer_args="candidates=Be quick.,split=paper",
        )
    assert refused.value.exit_code == 2
