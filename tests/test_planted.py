"""The planted-instruction benchmark: data, rendering, the trained model, and optimizer efficacy.

The model is trained once (a few minutes on 2 CPU cores) into the cache
(``$LM_EVAL_PROMPTOPT_CACHE`` or ``~/.cache/lm_eval_promptopt``); later runs reuse it.
"""

from __future__ import annotations

import glob
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, load_results, run_lm_eval
from scripted_server import ScriptedServer, current_and_budget

from benchmarks import planted
from benchmarks.planted import KEYWORDS, NEUTRAL_INSTRUCTIONS, OPS, TASK_DIR


NEUTRAL = NEUTRAL_INSTRUCTIONS[1]


@pytest.fixture(scope="session")
def planted_dir() -> Path:
    return planted.planted_model()


def test_training_estimate_uses_the_average_rate_since_the_start():
    """The bar's remaining time follows the whole run's rate, not the last steps' (which swing with
    the load: the estimate once went from 11 min to 3 h): slow steps, then fast ones, then the rate."""
    import torch

    weight = torch.nn.Parameter(torch.zeros(1))
    optim = torch.optim.SGD([weight], lr=0.1)
    with planted.training_progress() as bar:
        for step in range(20):
            time.sleep(0.03 if step < 10 else 0.0)
            optim.step()
        shown = bar.format_dict
    average = shown["n"] / shown["elapsed"]
    assert shown["n"] == 20 and (shown["rate"] or average) == pytest.approx(average, rel=0.05)


def test_docs_are_deterministic_and_splits_disjoint():
    for op in OPS:
        docs = {s: planted.make_docs(op, s, n, seed=0) for s, n in planted.SPLIT_SIZES.items()}
        assert docs["test"] == planted.make_docs(op, "test", 200, seed=0)
        assert docs["test"] != planted.make_docs(op, "test", 200, seed=1)
        inputs = {s: {d["input"] for d in ds} for s, ds in docs.items()}
        assert all(len(inputs[s]) == n for s, n in planted.SPLIT_SIZES.items())
        assert not (inputs["train"] & inputs["validation"] or inputs["test"] & (inputs["train"] | inputs["validation"]))
        for doc in docs["test"]:
            digits = [int(x) for x in doc["input"].split()]
            assert len(set(digits)) == len(digits) and doc["answer"] == str(planted.apply_op(op, digits))
            assert doc["target"].endswith(f"The answer is {doc['answer']}.") and f" {op} " in doc["target"]


def test_committed_task_data_matches_the_generator(tmp_path: Path):
    fresh = planted.write_task_data(tmp_path)
    committed = sorted(p.name for p in planted.DATA_DIR.glob("*.jsonl"))
    assert committed == sorted(p.name for p in fresh.glob("*.jsonl")) and len(committed) == 3 * len(OPS)
    for name in committed:
        assert (fresh / name).read_bytes() == (planted.DATA_DIR / name).read_bytes(), name


def test_instructions_and_hidden_op():
    assert planted.instruction_op("Please find the Biggest one.") == "largest"
    assert all(planted.instruction_op(i) is None for i in NEUTRAL_INSTRUCTIONS)
    assert not set(planted.FILLER) & {w for ws in KEYWORDS.values() for w in ws}
    assert {planted.hidden_op(d) for d in ([2, 1, 4], [2, 1, 3], [3, 1, 4], [3, 1, 5])} == set(OPS)


def test_training_shows_a_progress_bar_and_keeps_what_is_trained(tmp_path: Path, monkeypatch, capfd):
    """The first demo run trains for minutes: a tqdm bar with its estimate shows it (3 steps here).
    The settings hash (settings and training code) is the released model's: same weights."""
    assert (
        planted.settings_hash() == "05221c30ee"
    )  # 97d702d46e before the shared padding and model builders: byte-identical weights
    monkeypatch.setitem(planted.TRAIN_CONFIG, "steps", 3)
    monkeypatch.setitem(planted.TRAIN_CONFIG, "batch_size", 4)
    path = planted.planted_model(tmp_path)
    err = capfd.readouterr().err
    assert (
        "training the planted model once, then cached (2 min on 2 idle cores; an hour or more on a busy machine)" in err
    )
    assert "3/3" in err and (path / "config.json").is_file()


def test_training_text_is_what_lm_eval_renders(planted_dir: Path):
    """Contexts and their token ids: planted's renderer vs lm-eval's, through the plugin's placement."""
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    from lm_eval_promptopt.harness.prompting import Placement, render

    lm = get_model("hf").create_from_arg_string(f"pretrained={planted_dir},device=cpu", {"batch_size": 1})
    task = TaskManager(include_path=str(TASK_DIR)).load(["planted_largest"])["tasks"]["planted_largest"]
    doc = task.test_docs()[0]
    for chat in (False, True):
        for instruction in ("", NEUTRAL, planted.keyword_instruction("largest", 1)):
            ours = planted.render_context(instruction, planted.doc_to_text(doc), chat)
            theirs = render(task, doc, instruction, Placement(chat_template=chat), lm, fewshot_as_multiturn=chat).text
            assert ours == theirs
            assert lm.tok_batch_encode([theirs])[0][0].tolist() == lm.tokenizer(ours)["input_ids"]


def test_checker_requirements_hold_on_the_cached_model(planted_dir: Path):
    """The first 100 test docs per task (scripts/check_planted_model.py scores all 200)."""
    result = planted.check(planted_dir, chat_template=(False, True), limit=100)
    assert result.passed, result.table()


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat_template"])
def test_candidates_optimizer_finds_the_planted_keyword(planted_dir: Path, evaluate, chat: bool):
    """The Python API (`lm_eval_promptopt.simple_evaluate`) with the candidates optimizer: each task
    picks its keyword; held-out accuracy jumps."""
    right = {"planted_largest": "Please find the biggest one.", "planted_first": "Kindly return the initial digit."}
    candidates = [NEUTRAL, "Think carefully now and give the number.", *right.values(), "Please find the lowest one."]
    results = evaluate(
        model="hf", model_args=f"pretrained={planted_dir}", tasks=list(right), device="cpu", batch_size=32,
        include_path=REPO / "task_configs" / "planted", apply_chat_template=chat, optimizer="candidates",
        optimizer_args={"candidates": candidates, "compare_baseline": True, "instruction": NEUTRAL},
    )  # fmt: skip
    section = results["prompt_optimization"]
    assert {t["placement"] for t in section["tasks"].values()} == {"system_message" if chat else "text_prefix"}
    rows = {row["name"]: row for row in section["baseline_vs_optimized"]}
    for task, instruction in right.items():
        assert section["tasks"][task]["final_instruction"] == instruction
        assert rows[task]["baseline"] <= 0.45 and rows[task]["optimized"] >= 0.90, json.dumps(rows[task])
        assert results["results"][task][planted.METRIC] == rows[task]["optimized"]


def test_greater_finds_the_planted_keyword_from_a_neutral_instruction(planted_dir: Path, tmp_path: Path):
    """Real `lm_eval --optimize greater` with the paper's defaults (top-k 5, example-conditioned
    proposal, 3 scored candidates) and 8 steps: the gradient over the model's own reasoning
    finds each op's keyword; held-out accuracy rises from chance to 1.0 on two ops."""
    tasks = ["planted_largest", "planted_first"]
    started = time.perf_counter()
    run_lm_eval(
        [
            "--model", "hf", "--model_args", f"pretrained={planted_dir}", "--device", "cpu", "--batch_size", "32",
            "--include_path", str(REPO / "task_configs" / "planted"), "--tasks", ",".join(tasks), "--optimize", "greater",
            "--optimize_args", "instruction=Use please answer the question.,extractor=task,steps=8,train_size=16,dev_size=40,compare_baseline=true",
            "--output_path", str(tmp_path),
        ],
        **ONE_THREAD,
    )  # fmt: skip
    results = load_results(tmp_path)
    section = results["prompt_optimization"]
    rows = {row["name"]: row for row in section["baseline_vs_optimized"]}
    for task in tasks:
        outcome = section["tasks"][task]
        op = task.removeprefix("planted_")
        assert planted.instruction_op(outcome["final_instruction"]) == op, outcome["final_instruction"]
        # the start names no op; the planted model's answer to an unknown word ("Use") leans to
        # one op on some machines (planted_largest 0.345 on one, 0.56 on another), hence no bound of 0.45
        assert planted.instruction_op(outcome["initial_instruction"]) is None
        assert rows[task]["baseline"] <= 0.60 and rows[task]["optimized"] >= 0.90, json.dumps(rows[task])
        assert results["results"][task][planted.METRIC] == rows[task]["optimized"]
        assert outcome["stop_reason"] == "steps" and len([s for s in outcome["details"]["steps"] if "step" in s]) == 8
        print(f"{task}: held-out {rows[task]['baseline']:.3f} -> {rows[task]['optimized']:.3f}, "
              f"{outcome['final_instruction']!r}, search {outcome['wall_time_s']:.1f} s")  # fmt: skip
    print(f"greater on the planted model: {time.perf_counter() - started:.1f} s wall")


#: What the scripted optimizer LLM writes with: filler plus every op's keywords (right and wrong ones).
PLANTED_VOCAB = (*planted.FILLER, *(word for words in KEYWORDS.values() for word in words))
#: The planted model is tiny: one torch thread is fastest, and on a busy 2-core machine two threads
#: spin against the other jobs (generation measured 50-100x slower).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def planted_edits(body: dict[str, Any], sample: int) -> str:
    """A blind, deterministic optimizer LLM: replace 1 to min(3, budget) words of the current prompt by
    words of PLANTED_VOCAB, drawn with a seed made of the sample index and the current prompt. Some
    proposals hold the task's keyword, some another op's, most none: only dev scores tell them apart."""
    current, budget = current_and_budget(body["messages"][-1]["content"])
    rng = random.Random(f"{sample}:{current}")
    words = current.split()
    end = "." if words and words[-1].endswith(".") else ""
    words = [w.rstrip(".").lower() for w in words] or [rng.choice(PLANTED_VOCAB)]
    edits = rng.randint(1, min(3, budget or 3))
    for position in rng.sample(range(len(words)), min(edits, len(words))):
        words[position] = rng.choice(PLANTED_VOCAB)
    return f"A better prompt:\n<START>{' '.join(words)}{end}<END>"


def trajectory_log(out: Path, task: str) -> list[dict]:
    (path,) = glob.glob(str(out / "**" / "trajectories" / f"{task}.jsonl"), recursive=True)
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_gpo_with_a_scripted_server_finds_the_planted_keyword(planted_dir: Path, tmp_path: Path):
    """Real `lm_eval --optimize gpo` on the planted model, with a scripted OpenAI-compatible optimizer
    that edits blindly within the word budget: GPO's dev-score feedback must keep a keyword of the
    task's op, and held-out accuracy (all 200 test docs per task) must jump from chance to ~100 %.
    With a filler-only vocabulary (or other ops' keywords only) no proposal leaves chance: this fails.

    Measured (2 busy CPU cores, seed 0, 3 steps, budgets 2/1/1, 8 samples per step, train/dev 8/24,
    200 held-out docs per task): planted_largest 0.345 -> 1.000 ("Please answer the biggest."),
    planted_first 0.350 -> 1.000 ("First answer the question."), both found at step 1 (dev 1.0);
    21-34 s for the whole test (the lm_eval run, both tasks, baseline included)."""
    ops = {"planted_largest": "largest", "planted_first": "first"}
    # 8 train docs in batches of 8 (the default) for 3 epochs: 3 steps; budgets 2, 1, 1 words.
    settings = f"instruction={NEUTRAL},retrieval=recency,train_size=8,dev_size=24,epochs=3,budget_start=3,budget_end=1"
    started = time.perf_counter()
    with ScriptedServer(planted_edits, lifetime_s=600) as server:
        proc = run_lm_eval(
            [
                "--model", "hf", "--model_args", f"pretrained={planted_dir}", "--device", "cpu", "--batch_size", "32",
                "--include_path", str(REPO / "task_configs" / "planted"), "--tasks", ",".join(ops),
                "--optimize", "gpo",
                "--optimize_args",
                f"optimizer_model=scripted,optimizer_base_url={server.url},api_key_env=OPENAI_API_KEY,compare_baseline=true,{settings}",
                "--output_path", str(tmp_path),
            ],
            OPENAI_API_KEY="sk-planted",
            **ONE_THREAD,
        )  # fmt: skip
    wall = time.perf_counter() - started
    results = load_results(tmp_path)
    section = results["prompt_optimization"]
    rows = {row["name"]: row for row in section["baseline_vs_optimized"]}
    for task, op in ops.items():
        outcome, row = section["tasks"][task], rows[task]
        print(f"{task}: held-out {row['baseline']:.3f} -> {row['optimized']:.3f} with {outcome['final_instruction']!r}")
        assert outcome["initial_instruction"] == NEUTRAL and outcome["details"]["steps"] == 3
        assert outcome["details"]["budgets"] == [2, 1, 1]
        assert row["baseline"] <= 0.45 and row["optimized"] >= 0.90, json.dumps([row, outcome["details"]["trajectory"]])
        assert planted.instruction_op(outcome["final_instruction"]) == op
        assert results["results"][task][planted.METRIC] == row["optimized"]
        assert results["n-samples"][task]["effective"] >= 100  # the held-out docs behind the claim
        steps = [e for e in trajectory_log(tmp_path, task) if e.get("kind") == "gpo_step"]
        assert [s["budget"] for s in steps] == [2, 1, 1]
        assert all(c["word_edits"] <= s["budget"] for s in steps for c in s["candidates"])  # within budget
    assert sorted(current_and_budget(p)[1] for p in server.prompts()) == [1, 1, 1, 1, 2, 2]
    assert all(r["_authorization"] == "Bearer sk-planted" for r in server.requests)
    assert "prompt optimization outputs:" in proc.stdout
    print(f"gpo on the planted model: {wall:.1f} s wall for {len(ops)} tasks")


def test_gpo_optimizer_model_self_runs_end_to_end_on_the_planted_model(planted_dir: Path, tmp_path: Path):
    """`optimizer_model=self`: the planted model writes the proposals. It cannot write instructions,
    so this only checks that the run completes and records its outcome (no efficacy claim).
    max_tokens stays small: the model's context is 512 tokens (GPO's default 512 leaves no room)."""
    task = "planted_smallest"
    settings = (
        f"optimizer_model=self,retrieval=recency,instruction={NEUTRAL},train_size=8,dev_size=8,epochs=1,samples=2"
    )
    run_lm_eval(
        [
            "--model", "hf", "--model_args", f"pretrained={planted_dir}", "--device", "cpu", "--batch_size", "32",
            "--include_path", str(REPO / "task_configs" / "planted"), "--tasks", task,
            "--optimize", "gpo", "--optimize_args", f"{settings},max_tokens=16",
            "--limit", "20", "--output_path", str(tmp_path),
        ],
        **ONE_THREAD,
    )  # fmt: skip
    results = load_results(tmp_path)
    outcome = results["prompt_optimization"]["tasks"][task]
    details = outcome["details"]
    assert details["optimizer"]["backend"] == "self" and details["optimizer"]["usage"]["completions"] == 2
    assert details["steps"] == 1 and len(details["trajectory"]) == 2
    assert outcome["final_instruction"] in {e["instruction"] for e in details["trajectory"]}
    assert outcome["final_dev_score"] is not None
    (call,) = [e for e in trajectory_log(tmp_path, task) if e.get("kind") == "optimizer_call"]
    assert call["request"]["gen_kwargs"]["do_sample"] is True and len(call["response"]["texts"]) == 2
    assert isinstance(results["results"][task][planted.METRIC], float)
