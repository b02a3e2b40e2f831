"""The custom lighteval tasks of doge-dagster, in one module (lighteval's `custom_tasks` / `TASKS_TABLE`).

Two families:

- The seed's tasks (SmallDoge `evaluation/base/tasks.py` and `evaluation/reason/tasks.py`), ported to
  lighteval 0.11 (`metric=` became `metrics=`, `loglikelihood_acc_norm_nospace` became
  `loglikelihood_acc` with `LogProbCharNorm(ignore_first_space=True)`, `quasi_exact_match_triviaqa`
  became `exact_match` with the triviaqa normalizer, `trust_dataset` is gone) on the same Hub repos and
  revisions: `arc:easy` / `arc:challenge` (the `custom|arc` superset), `mmlu:<subject>` x 57 (the
  `custom|mmlu` superset, cloze prompt), `openbook_qa`, `trivia_qa`, `hellaswag` (the seed's prompt),
  `aime24`, `math_500`, `gpqa:diamond` (+ `harness|bbh:causal_judgement`, see below). One fix: the seed drew the position of GPQA's correct answer
  with the unseeded global `random`, so two runs of the same model scored differently; here the order
  comes from a generator seeded by the question itself. Reasoning tasks also report `think_format`.
- The tiny recipe's offline arithmetic tasks, read from a local folder the evaluation process writes
  (`write_arithmetic_data`): `arithmetic_mc` (log-likelihood multiple choice between equations that
  differ in the result), `arithmetic_gen` (generative; exact match of the number) and
  `arithmetic_think` (generative; the answer after the `</think>` block, and the think format rate).

Lighteval imports happen at module import: import this module only in evaluation processes and tests
(`compat.apply()` first), never from the Dagster code location.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
from pathlib import Path
from types import ModuleType

from doge_dagster.evaluation import compat
from doge_dagster.evaluation.report import FORMAT_METRIC

compat.apply()

import numpy as np
from lighteval.metrics.dynamic_metrics import MultilingualExtractiveMatchMetric
from lighteval.metrics.metrics import Metrics
from lighteval.metrics.metrics_sample import SampleLevelComputation
from lighteval.metrics.normalizations import LogProbCharNorm, harness_triviaqa_normalizer
from lighteval.metrics.utils.extractive_match_utils import ExprExtractionConfig, LatexExtractionConfig
from lighteval.metrics.utils.metric_utils import SampleLevelMetric, SamplingMethod
from lighteval.tasks import default_prompts as prompt
from lighteval.tasks import default_tasks
from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc
from lighteval.utils.language import Language

from doge_dagster.data.generated import QUESTION_TEMPLATES, held_out_problems
from doge_dagster.training.rewards import THINK_FORMAT, final_answer

# -- metrics -------------------------------------------------------------------------------------------------
# The seed's `loglikelihood_acc_norm_nospace`: accuracy on log-probabilities normalised by characters.
acc_norm_nospace = Metrics.loglikelihood_acc(
    sample_params={"logprob_normalization": LogProbCharNorm(ignore_first_space=True)}
)
triviaqa_exact_match = Metrics.exact_match(
    sample_params={"strip_strings": True, "normalize_pred": harness_triviaqa_normalizer}
)
expr_gold_metric = Metrics.expr_gold_metric.value  # the seed's expr_gold_metric (precision 5), unchanged
latex_gold_metric = SampleLevelMetric(  # the seed's latex_gold_metric
    metric_name="extractive_match",
    sample_level_fn=MultilingualExtractiveMatchMetric(
        language=Language.ENGLISH,
        fallback_mode="first_match",
        precision=5,
        gold_extraction_target=(LatexExtractionConfig(),),
        pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig(boxed_match_priority=0)),
        aggregation_function=max,
    ),
    category=SamplingMethod.GENERATIVE,
    corpus_level_fn=np.mean,
    higher_is_better=True,
)
gpqa_metric = Metrics.gpqa_instruct_metric.value  # letter extraction, as the seed's gpqa_metric

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def extract_number(text: str) -> str | None:
    """The number a reply gives as its answer: the first number after the first `=`, else the first
    number at all ("3 + 4 = 7." -> 7, "The answer is 7" -> 7, "7" -> 7); None when there is none."""
    if "=" in text:
        found = NUMBER.search(text.split("=", 1)[1])
        if found:
            return found.group()
    found = NUMBER.search(text)
    return found.group() if found else None


def _gold_number(doc: Doc) -> str:
    return str(doc.specific["answer"]) if doc.specific and "answer" in doc.specific else doc.get_golds()[0]


class NumberExactMatch(SampleLevelComputation):
    """1.0 when the number the reply answers with equals the gold number. Scores the reply after
    lighteval's post-processing (which removes `<think>` blocks), i.e. the final answer."""

    def compute(self, doc: Doc, model_response, **kwargs) -> float:
        predicted = extract_number(model_response.final_text[0])
        return float(predicted is not None and float(predicted) == float(_gold_number(doc)))


class ThinkAnswerMatch(SampleLevelComputation):
    """1.0 when the number after the last `</think>` of the raw reply equals the gold number (the whole
    reply when it has no think block, as the GRPO accuracy reward)."""

    def compute(self, doc: Doc, model_response, **kwargs) -> float:
        predicted = extract_number(final_answer(model_response.text[0]))
        return float(predicted is not None and float(predicted) == float(_gold_number(doc)))


class ThinkFormat(SampleLevelComputation):
    """1.0 when the raw reply is a well-formed `<think>...</think>` block followed by an answer (the GRPO
    format reward's rule); its mean is the format rate."""

    def compute(self, doc: Doc, model_response, **kwargs) -> float:
        return float(bool(THINK_FORMAT.match(model_response.text[0])))


def _generative(name: str, computation: SampleLevelComputation) -> SampleLevelMetric:
    return SampleLevelMetric(
        metric_name=name,
        sample_level_fn=computation,
        category=SamplingMethod.GENERATIVE,
        corpus_level_fn=np.mean,
        higher_is_better=True,
    )


number_exact_match = _generative("exact_match", NumberExactMatch())
think_answer_match = _generative("acc", ThinkAnswerMatch())
think_format = _generative(FORMAT_METRIC, ThinkFormat())

# -- the seed's prompts ----------------------------------------------------------------------------------------


def prompt_hellaswag(line: dict, task_name: str | None = None) -> Doc:
    """The seed's HellaSwag prompt (activity label, both contexts, harness preprocessing)."""

    def preprocess(text: str) -> str:
        text = text.replace(" [title]", ". ")
        text = re.sub("\\[.*?\\]", "", text)
        return text.replace("  ", " ")

    ctx = f"{line['ctx_a']} {line['ctx_b'].capitalize()} "
    return Doc(
        task_name=task_name,
        query=preprocess(line["activity_label"] + ": " + ctx),
        choices=[" " + preprocess(ending) for ending in line["endings"]],
        gold_index=int(line["label"]) if line["label"] != "" else -1,
    )


def mmlu_cloze_prompt(line: dict, task_name: str | None = None) -> Doc:
    """The seed's MMLU cloze prompt: the subject, the question, and the answers as continuations."""
    topic = line["subject"].replace("_", " ")
    return Doc(
        task_name=task_name,
        query=f"The following are questions about {topic}.\nQuestion: {line['question']}\nAnswer:",
        choices=[f" {choice}" for choice in line["choices"]],
        gold_index=int(line["answer"]),
        instruction=f"The following are questions about {topic}.\n",
    )


def math_prompt(line: dict, task_name: str | None = None) -> Doc:
    """MATH-500: the problem; the solution holds the boxed gold answer."""
    return Doc(task_name=task_name, query=line["problem"], choices=[line["solution"]], gold_index=0)


def aime_prompt(line: dict, task_name: str | None = None) -> Doc:
    """AIME: the problem and its integer answer."""
    return Doc(task_name=task_name, query=line["problem"], choices=[line["answer"]], gold_index=0)


GPQA_TEMPLATE = (
    "Answer the following multiple choice question. The last line of your response should be of the following "
    "format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step before answering."
    "\n\n{Question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}"
)


def gpqa_gold_index(question: str) -> int:
    """Where the correct answer goes: seeded by the question, so every run (and every process) agrees."""
    return random.Random(int(hashlib.sha256(question.encode()).hexdigest()[:16], 16)).randint(0, 3)


def gpqa_prompt(line: dict, task_name: str | None = None) -> Doc:
    """The seed's GPQA prompt (simple-evals template) with a seeded answer order."""
    gold_index = gpqa_gold_index(line["Question"])
    choices = [line["Incorrect Answer 1"], line["Incorrect Answer 2"], line["Incorrect Answer 3"]]
    choices.insert(gold_index, line["Correct Answer"])
    query = GPQA_TEMPLATE.format(A=choices[0], B=choices[1], C=choices[2], D=choices[3], Question=line["Question"])
    return Doc(task_name=task_name, query=query, choices=["A", "B", "C", "D"], gold_index=gold_index, instruction=query)


# -- the seed's tasks ------------------------------------------------------------------------------------------
MMLU_SUBJECTS = [
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
]

SEED_TASKS = [
    *(
        LightevalTaskConfig(
            name=f"arc:{level.lower()}",
            prompt_function=prompt.arc,
            suite=["custom"],
            hf_repo="allenai/ai2_arc",
            hf_revision="210d026faf9955653af8916fad021475a3f00453",
            hf_subset=f"ARC-{level}",
            hf_avail_splits=["train", "validation", "test"],
            evaluation_splits=["test"],
            metrics=[acc_norm_nospace],
        )
        for level in ("Easy", "Challenge")
    ),
    LightevalTaskConfig(
        name="openbook_qa",
        prompt_function=prompt.openbookqa,
        suite=["custom"],
        hf_repo="allenai/openbookqa",
        hf_subset="main",
        hf_revision="388097ea7776314e93a529163e0fea805b8a6454",
        hf_avail_splits=["train", "validation", "test"],
        evaluation_splits=["validation"],
        metrics=[acc_norm_nospace],
    ),
    LightevalTaskConfig(
        name="hellaswag",
        prompt_function=prompt_hellaswag,
        suite=["custom"],
        hf_repo="Rowan/hellaswag",
        hf_subset="default",
        hf_revision="6002345709e0801764318f06bf06ce1e7d1a1fe3",
        hf_avail_splits=["train", "validation", "test"],
        evaluation_splits=["validation"],
        metrics=[acc_norm_nospace],
    ),
    LightevalTaskConfig(
        name="trivia_qa",
        prompt_function=prompt.triviaqa,
        suite=["custom"],
        hf_repo="mandarjoshi/trivia_qa",
        hf_subset="rc.nocontext",
        hf_revision="0f7faf33a3908546c6fd5b73a660e0f8ff173c2f",
        hf_avail_splits=["train", "validation"],
        evaluation_splits=["validation"],
        metrics=[triviaqa_exact_match],
        generation_size=20,
        stop_sequence=["Question:", "Question"],
        few_shots_select="random_sampling_from_train",
    ),
    *(
        LightevalTaskConfig(
            name=f"mmlu:{subject}",
            prompt_function=mmlu_cloze_prompt,
            suite=["custom"],
            hf_repo="cais/mmlu",
            hf_subset=subject,
            hf_revision="c30699e8356da336a370243923dbaf21066bb9fe",
            hf_avail_splits=["test", "validation"],
            evaluation_splits=["test"],
            few_shots_split="validation",
            few_shots_select="random",
            metrics=[acc_norm_nospace],
            generation_size=-1,
        )
        for subject in MMLU_SUBJECTS
    ),
    LightevalTaskConfig(
        name="aime24",
        suite=["custom"],
        prompt_function=aime_prompt,
        hf_repo="HuggingFaceH4/aime_2024",
        hf_subset="default",
        hf_avail_splits=["train"],
        evaluation_splits=["train"],
        generation_size=32768,  # capped at the model's context by lighteval
        metrics=[expr_gold_metric, think_format],
        version=1,
    ),
    LightevalTaskConfig(
        name="math_500",
        suite=["custom"],
        prompt_function=math_prompt,
        hf_repo="HuggingFaceH4/MATH-500",
        hf_subset="default",
        hf_avail_splits=["test"],
        evaluation_splits=["test"],
        generation_size=32768,
        metrics=[latex_gold_metric, think_format],
        version=1,
    ),
    LightevalTaskConfig(
        name="gpqa:diamond",
        suite=["custom"],
        prompt_function=gpqa_prompt,
        hf_repo="Idavidrein/gpqa",
        hf_subset="gpqa_diamond",
        hf_avail_splits=["train"],
        evaluation_splits=["train"],
        generation_size=32768,
        metrics=[gpqa_metric, think_format],
        stop_sequence=[],  # the end of turn stops generation
        version=2,  # 1 was the seed's, with an unseeded answer order
    ),
    # The recipes' `harness|bbh:causal_judgement` (the seed's name, and the dataset config's spelling) is
    # lighteval 0.11's `harness|bbh:causal_judgment`: the same task under the seed's name.
    dataclasses.replace(default_tasks.bbh_causal_judgment_harness, name="bbh:causal_judgement"),
]

# -- offline arithmetic ---------------------------------------------------------------------------------------
ARITHMETIC_SEED = 20_250  # the training sources use seed 233 with their own generator names
ARITHMETIC_ROWS = 500
ARITHMETIC_FILE = "test.jsonl"
DATA_DIR_ENV = "DOGE_EVAL_DATA_DIR"


def arithmetic_rows(
    num_rows: int = ARITHMETIC_ROWS, seed: int = ARITHMETIC_SEED, continuation_prefix: str = " "
) -> list[dict]:
    """Held-out arithmetic questions in the form the tiny model is trained on ("What is 23 + 14?").

    The problems are `generated.held_out_problems()`: two-digit sums without carry and differences without
    borrow that no generated training row contains (`generated.is_held_out`), drawn without repeats in an
    order seeded by `seed`. Answering them takes the one-digit facts and the digit-by-digit method the data
    teaches, not recall of a seen answer. Multiple-choice options are the correct equation and three with a
    result off by 1 to 3. `continuation_prefix` goes before every option: a space after a plain-text
    question, nothing after a chat template's assistant header (lighteval 0.11 tokenizes the options on
    their own, so a space there would be a token the model never saw in that place).
    """
    rng = random.Random(f"arithmetic-eval:{seed}")
    problems = held_out_problems()
    if num_rows > len(problems):
        raise ValueError(f"num_rows {num_rows} is more than the {len(problems)} held-out problems")
    rows = []
    for index, (a, op, b, c) in enumerate(rng.sample(problems, num_rows)):
        wrong = [n for n in (c - 2, c - 1, c + 1, c + 2, c + 3) if n >= 0][:4]
        options = [c, *rng.sample(wrong, 3)]
        rng.shuffle(options)
        rows.append({
            "id": index, "question": QUESTION_TEMPLATES[0].format(a=a, op=op, b=b), "a": a, "op": op, "b": b,
            "answer": str(c), "choices": [f"{continuation_prefix}{a} {op} {b} = {n}." for n in options],
            "gold_index": options.index(c),
        })  # fmt: skip
    return rows


def write_arithmetic_data(
    folder: Path, num_rows: int = ARITHMETIC_ROWS, seed: int = ARITHMETIC_SEED, chat: bool = False
) -> Path:
    """Write the held-out questions as `folder/test.jsonl` (a local dataset `load_dataset` reads); return folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = arithmetic_rows(num_rows, seed, continuation_prefix="" if chat else " ")
    (folder / ARITHMETIC_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def arithmetic_mc_prompt(line: dict, task_name: str | None = None) -> Doc:
    """ "What is 23 + 14?" with the four equations as continuations."""
    return Doc(task_name=task_name, query=line["question"], choices=list(line["choices"]), gold_index=int(line["gold_index"]),
               specific={"answer": line["answer"]})  # fmt: skip


def arithmetic_gen_prompt(line: dict, task_name: str | None = None) -> Doc:
    """ "What is 23 + 14?" answered freely; the gold is the number."""
    return Doc(
        task_name=task_name,
        query=line["question"],
        choices=[line["answer"]],
        gold_index=0,
        specific={"answer": line["answer"]},
    )


def arithmetic_tasks(data_dir: str | Path) -> list[LightevalTaskConfig]:
    """The three arithmetic tasks on the questions in `data_dir` (written by `write_arithmetic_data`)."""
    common = {
        "suite": ["custom"], "hf_repo": str(data_dir), "hf_subset": "default", "hf_avail_splits": ["test"],
        "evaluation_splits": ["test"], "few_shots_split": None, "few_shots_select": None,
    }  # fmt: skip
    # Room for a think block (the tiny traces are a few dozen tokens) before the answer; chat models stop
    # at the end of their turn, plain models at the first newline.
    generative = {"generation_size": 160, "stop_sequence": ["\n"]}
    mc_metrics, gen_metrics, think_metrics = (
        [Metrics.loglikelihood_acc],
        [number_exact_match],
        [think_answer_match, think_format],
    )
    return [
        LightevalTaskConfig(name="arithmetic_mc", prompt_function=arithmetic_mc_prompt, metrics=mc_metrics, **common),
        LightevalTaskConfig(
            name="arithmetic_gen", prompt_function=arithmetic_gen_prompt, metrics=gen_metrics, **common, **generative
        ),
        LightevalTaskConfig(
            name="arithmetic_think",
            prompt_function=arithmetic_gen_prompt,
            metrics=think_metrics,
            **common,
            **generative,
        ),
    ]


def default_data_dir() -> Path:
    """Where `TASKS_TABLE`'s arithmetic tasks read (for the lighteval CLI): $DOGE_EVAL_DATA_DIR or a temp folder."""
    import tempfile

    return Path(os.environ.get(DATA_DIR_ENV) or Path(tempfile.gettempdir()) / "doge-eval-arithmetic")


def tasks_table(data_dir: str | Path) -> list[LightevalTaskConfig]:
    """Every custom task, the arithmetic ones reading `data_dir`."""
    return [*SEED_TASKS, *arithmetic_tasks(data_dir)]


def tasks_module(data_dir: str | Path) -> ModuleType:
    """A module holding `TASKS_TABLE` for `data_dir`: what lighteval's `custom_tasks` accepts."""
    module = ModuleType("doge_eval_tasks")
    module.TASKS_TABLE = tasks_table(data_dir)
    module.__file__ = __file__
    return module


TASKS_TABLE = tasks_table(default_data_dir())
