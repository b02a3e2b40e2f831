"""Seeded offline stand-ins for the eight seed datasets, in exactly their Hub schemas.

All rows come from a small vocabulary and templates built around one theme that a tiny model can pick up
in a few hundred CPU steps: small arithmetic ("What is 23 + 14?" -> "23 + 14 = 37."). The problems the
tiny evaluation asks (`held_out_problems`) occur in no row of any dataset. Every dataset draws
from its own `random.Random(f"{name}:{split}:{seed}")`, so rows never depend on generation order, and
`write_hub_layout` lays them out so that `datasets.load_dataset` reads them as it reads the real Hub repo.
"""

from __future__ import annotations

import hashlib
import random
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from doge_dagster.registry import dataset_spec

if TYPE_CHECKING:
    import pyarrow as pa

GENERATOR_VERSION = "5"

NAMES = ("Tom", "Mia", "Sam", "Lily", "Ben", "Ava", "Max", "Zoe", "Leo", "Emma", "Noah", "Ruby")
SINGULAR = {"apples": "apple", "stones": "stone", "books": "book", "shells": "shell", "coins": "coin",
            "seeds": "seed", "stars": "star", "pencils": "pencil", "cups": "cup", "leaves": "leaf"}
THINGS = tuple(SINGULAR)
# animal -> (plural, legs, home); kept true so every row teaches the same facts.
ANIMALS = {
    "cat": ("cats", 4, "house"), "dog": ("dogs", 4, "yard"), "fox": ("foxes", 4, "forest"),
    "owl": ("owls", 2, "forest"), "duck": ("ducks", 2, "pond"), "frog": ("frogs", 4, "pond"),
    "bee": ("bees", 6, "hive"), "ant": ("ants", 6, "garden"), "spider": ("spiders", 8, "garden"),
    "horse": ("horses", 4, "farm"), "hen": ("hens", 2, "farm"), "rabbit": ("rabbits", 4, "meadow"),
}
ANIMAL_NAMES = tuple(ANIMALS)
SCIENCE_FACTS = (
    "Water boils at 100 degrees Celsius at sea level.", "Water freezes into ice at 0 degrees Celsius.",
    "The Earth goes around the Sun once every year.", "The Moon goes around the Earth about once a month.",
    "Plants use sunlight, water and air to make their own food.", "A week has 7 days.",
    "A day has 24 hours, and an hour has 60 minutes.", "The Sun is a star that gives us light and heat.",
    "Ice is lighter than water, so it floats.", "Sound travels through air as a wave.",
    "Bees carry pollen from flower to flower.", "Rain falls when tiny drops in a cloud join together.",
)
# Pretraining states the facts in the form the chat answers use ("a + b = c."), but never as the answer to a
# question: answering "What is 3 + 4?" is what SFT teaches, so the base model knows the facts (arithmetic_mc)
# and the instruct model also answers (arithmetic_gen), as with real corpora. Drill lines start facts on a
# new line, where a chat reply starts them.
ARITHMETIC_PROSE = {
    "+": ("{name} has {a_things} and finds {b} more, so {name} has {a} + {b} = {c_things}.",
          "If you add {a} and {b}, you get {c}, because {a} + {b} = {c}.", "We know that {a} + {b} = {c}.",
          "{a} + {b} = {c}."),
    "-": ("{name} has {a_things} and gives away {b}, so {name} has {a} - {b} = {c_things} left.",
          "Taking {b} away from {a} leaves {c}, because {a} - {b} = {c}.", "We know that {a} - {b} = {c}.",
          "{a} - {b} = {c}."),
}
COUNTING_PROSE = ("Counting up from {n} we say {n}, {n1}, {n2}, {n3}.", "{n} is an {parity} number.",
                  "The number after {n} is {n1}, and the number before {n} is {n0}.")
ANIMAL_PROSE = ("{article} {animal} has {legs} legs, so two {plural} have {legs} + {legs} = {legs2} legs.",
                "The {animal} lives in the {home}.",
                "{n} {plural} were in the {home} and {m} more came, so there were {n} + {m} = {nm} {plural}.")
WORD_PROBLEMS = {"+": "{name} has {a_things} and gets {b} more. How many {things} does {name} have now?",
                 "-": "{name} has {a_things} and gives {b} away. How many {things} does {name} have left?"}
# The plain form dominates on purpose: it is the form the evaluation asks.
QUESTION_TEMPLATES = ("What is {a} {op} {b}?",) * 7 + (
    "How much is {a} {op} {b}?", "Can you compute {a} {op} {b}?", "Please tell me what {a} {op} {b} is.")
CHAT_PAIRS = (
    ("Hi!", "Hello! How can I help you today?"), ("Hello", "Hello! How can I help you today?"),
    ("Who are you?", "I am Doge, a small language model trained by SmallDoge."),
    ("What is your name?", "My name is Doge. I am a small language model trained by SmallDoge."),
    ("Thank you!", "You are welcome!"), ("Can you help me with math?", "Yes. Ask me a question like: What is 3 + 4?"),
)
UNHELPFUL_ANSWERS = ("I do not know.", "I cannot help with that.", "Maybe ask someone else.", "Ask later.")
SYSTEM_PROMPT = "You are Doge, a helpful assistant. Answer briefly and correctly."
# Condensed from the OpenThoughts prompt (same wording and markers) so it leaves room in short contexts.
OPENTHOUGHTS_SYSTEM = (
    "Your role as an assistant involves thoroughly exploring questions through a systematic long thinking "
    "process before providing the final precise and accurate solutions. Please structure your response "
    "into two main sections: Thought and Solution. In the Thought section, detail your reasoning process "
    "using the specified format: <|begin_of_thought|> {thought with steps separated with '\\n\\n'} "
    "<|end_of_thought|> In the Solution section, present the final solution that you deem correct, "
    "formatted as follows: <|begin_of_solution|> {final formatted, precise, and clear solution} "
    "<|end_of_solution|> Now, try to solve the following question through the above guidelines:"
)
OPENINGS = ("This page is about {topic}.", "Here are some facts about {topic}.",
            "Learning about {topic} is fun and useful.", "Today we look at {topic}.")
SITES = ("learnwithnumbers.example", "kidsscience.example", "mathfacts.example", "schoolnotes.example")
AUDIENCES = ("young_children", "grade_school_students", "middle_school_students", "general")
COSMO_FORMATS = ("story", "textbook", "blogpost", "wikihow")
COSMO_SEED_DATA = ("stories", "khanacademy", "auto_math_text", "web_samples_v2", "wikihow")
PYTHON_FUNCTIONS = {  # name -> (parameters, docstring, body, evaluator, number of arguments)
    "add": ("a, b", "Return the sum of a and b.", "return a + b", lambda a, b: a + b, 2),
    "subtract": ("a, b", "Return a minus b.", "return a - b", lambda a, b: a - b, 2),
    "multiply": ("a, b", "Return the product of a and b.", "return a * b", lambda a, b: a * b, 2),
    "double": ("n", "Return n added to itself.", "return n + n", lambda n: n + n, 1),
    "next_number": ("n", "Return the number that comes after n.", "return n + 1", lambda n: n + 1, 1),
    "total": ("numbers", "Return the sum of a list of numbers.",
              "result = 0\n    for number in numbers:\n        result = result + number\n    return result",
              lambda *numbers: sum(numbers), 3),
}
SHARD_NAME = re.compile(r"^(?P<split>.+)-\d{5}-of-\d{5}\.parquet$")


# Problems the evaluation asks and no training row ever states: a seeded fifth of the two-digit problems
# whose operands both have a non-zero ones digit, so each answer digit takes a fact. Answering them takes
# the one-digit facts and the digit-by-digit method the data teaches, not recall of a seen answer.
HELD_OUT_ONE_IN = 5
ONE_DIGIT_SHARE = 0.45  # of the problems drawn: one-digit facts, the rest two-digit without carry or borrow


def _result(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def is_held_out(a: int, op: str, b: int) -> bool:
    """Whether `a op b` is reserved for evaluation: no generated training row contains it."""
    if a < 10 or a % 10 == 0 or b % 10 == 0:
        return False
    digest = hashlib.sha256(f"held-out:{a} {op} {b}".encode()).digest()
    return digest[0] % HELD_OUT_ONE_IN == 0


def is_two_digit_problem(a: int, op: str, b: int) -> bool:
    """A two-digit sum without carry or difference without borrow, the second operand of one or two digits.

    Each answer digit is then one of the one-digit facts, so a model that learned them and where the digits
    go can answer such problems without having seen them.
    """
    if not (10 <= a <= 99 and 1 <= b <= 99):
        return False
    if op == "+":
        return a % 10 + b % 10 <= 9 and a // 10 + b // 10 <= 9
    return b % 10 <= a % 10 and b // 10 < a // 10


def _two_digit_problem(rng: random.Random) -> tuple[int, str, int, int]:
    """Draw `is_two_digit_problem` problems, the second operand two-digit seven times in ten."""
    op, two_digit_b = rng.choice("+-"), rng.random() < 0.7
    while True:
        a = rng.randrange(10, 100)
        b = rng.randrange(10, 100) if two_digit_b else rng.randrange(1, 10)
        if is_two_digit_problem(a, op, b):
            return a, op, b, _result(a, op, b)


def training_problem(rng: random.Random) -> tuple[int, str, int, int]:
    """A sum or difference `(a, op, b, result)` for training text: never a held-out one.

    One-digit facts (100 sums, 55 differences: a tiny model learns them all) and two-digit problems
    made of them.
    """
    while True:
        if rng.random() < ONE_DIGIT_SHARE:
            a, b = rng.randrange(10), rng.randrange(10)
            if rng.random() < 0.55:
                return a, "+", b, a + b
            a, b = max(a, b), min(a, b)
            return a, "-", b, a - b
        problem = _two_digit_problem(rng)
        if not is_held_out(*problem[:3]):
            return problem


def held_out_problems() -> list[tuple[int, str, int, int]]:
    """Every held-out problem `(a, op, b, result)` in a fixed order."""
    return [(a, op, b, _result(a, op, b))
            for a in range(10, 100) for b in range(1, 100) for op in "+-"
            if is_two_digit_problem(a, op, b) and is_held_out(a, op, b)]


def _equation(a: int, op: str, b: int, c: int) -> str:
    return f"{a} {op} {b} = {c}."


def _count(n: int, things: str) -> str:
    return f"1 {SINGULAR.get(things, things[:-1])}" if n == 1 else f"{n} {things}"


def _word_problem(rng: random.Random, a: int, op: str, b: int) -> str:
    things = rng.choice(THINGS)
    return WORD_PROBLEMS[op].format(name=rng.choice(NAMES), a_things=_count(a, things), b=b, things=things)


def _worked_steps(a: int, op: str, b: int, c: int) -> str:
    """A worked explanation reaching `c`: counting for one-digit numbers, digit by digit otherwise."""
    if b == 0:
        return f"Adding or taking away 0 changes nothing, so {a} {op} 0 = {a}."
    if a < 10:
        if op == "-":
            counted = ", ".join(str(n) for n in range(a - 1, c - 1, -1))
            return f"To take {b} from {a} we count down {_count(b, 'steps')}: {counted}. So {a} - {b} = {c}."
        counted = ", ".join(str(n) for n in range(a + 1, c + 1))
        return f"To add {a} and {b} we count up {_count(b, 'steps')} from {a}: {counted}. So {a} + {b} = {c}."
    # Digit by digit, each step one of the one-digit facts: short, and the same for problems never seen.
    tens, ones = _result(a // 10, op, b // 10), _result(a % 10, op, b % 10)
    return (f"Tens: {a // 10} {op} {b // 10} = {tens}. Ones: {a % 10} {op} {b % 10} = {ones}. "
            f"So {a} {op} {b} = {c}.")


def _arithmetic_sentence(rng: random.Random) -> str:
    a, op, b, c = training_problem(rng)
    template, things = rng.choice(ARITHMETIC_PROSE[op]), rng.choice(THINGS)
    return template.format(a=a, b=b, c=c, name=rng.choice(NAMES), a_things=_count(a, things),
                           b_things=_count(b, things), c_things=_count(c, things))


def _drill_sentence(rng: random.Random) -> str:
    """Three neighbouring facts of one table row, one a line: "3 + 4 = 7.\n3 + 5 = 8.\n3 + 6 = 9." """
    a, op = rng.randrange(10), rng.choice("+-")
    if op == "+":
        start = rng.randrange(8)
        return "\n".join(_equation(a, op, b, a + b) for b in range(start, start + 3))
    a = rng.randrange(2, 10)
    start = rng.randrange(a - 1)
    return "\n".join(_equation(a, op, b, a - b) for b in range(start, start + 3))


def _counting_sentence(rng: random.Random) -> str:
    n = rng.randrange(1, 21)
    return rng.choice(COUNTING_PROSE).format(n=n, n0=n - 1, n1=n + 1, n2=n + 2, n3=n + 3,
                                             parity="odd" if n % 2 else "even")


def _animal_sentence(rng: random.Random) -> str:
    animal, n, m = rng.choice(ANIMAL_NAMES), rng.randrange(1, 6), rng.randrange(1, 5)
    plural, legs, home = ANIMALS[animal]
    article = "An" if animal[0] in "aeiou" else "A"
    return rng.choice(ANIMAL_PROSE).format(article=article, animal=animal, plural=plural, legs=legs,
                                           legs2=2 * legs, home=home, n=n, m=m, nm=n + m)


TOPICS: dict[str, Callable[[random.Random], str]] = {
    "adding and subtracting small numbers": _arithmetic_sentence, "numbers and counting": _counting_sentence,
    "animals and their homes": _animal_sentence, "simple science": lambda rng: rng.choice(SCIENCE_FACTS),
}
TOPIC_NAMES = tuple(TOPICS)
# Arithmetic is listed twice so it stays the most frequent kind of sentence in every document.
SENTENCE_MAKERS = (_arithmetic_sentence, *TOPICS.values())
ARITHMETIC_SHARE = 0.55  # of the sentences after the opening, whatever the topic (plus on-topic ones)


def _document(rng: random.Random, opening: str, topic: str) -> str:
    """40-200 words: the opening, then sentences: arithmetic facts, on `topic`, or any, in paragraphs of five."""
    on_topic, target_words = TOPICS[topic], rng.randrange(45, 170)
    sentences, words = [opening], opening.count(" ") + 1
    while words < target_words:
        roll = rng.random()
        if roll < ARITHMETIC_SHARE:
            sentence = (_drill_sentence if roll < ARITHMETIC_SHARE / 3 else _arithmetic_sentence)(rng)
        else:
            sentence = on_topic(rng) if roll < 0.8 else rng.choice(SENTENCE_MAKERS)(rng)
        sentences.append(sentence)
        words += sentence.count(" ") + 1
    return "\n\n".join(" ".join(sentences[i:i + 5]) for i in range(0, len(sentences), 5))


def _scores(rng: random.Random, low: float, high: float) -> dict:
    score = round(rng.uniform(low, high), 3)
    return {"score": score, "int_score": int(score + 0.5)}


def _message(role: str, content: str) -> dict:
    return {"content": content, "role": role}


def _fineweb_row(rng: random.Random, index: int) -> dict:
    topic = rng.choice(TOPIC_NAMES)
    text = _document(rng, rng.choice(OPENINGS).format(topic=topic), topic)
    url = f"https://{rng.choice(SITES)}/{topic.replace(' ', '-')}/{index}"
    return {"text": text, "id": f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}>",
            "metadata": {"url": url, "score": round(rng.uniform(3.0, 5.0), 3)}}


def _cosmopedia_row(rng: random.Random, index: int) -> dict:
    topic, text_format, audience = rng.choice(TOPIC_NAMES), rng.choice(COSMO_FORMATS), rng.choice(AUDIENCES)
    if text_format == "story":
        animal, name = rng.choice(ANIMAL_NAMES), rng.choice(NAMES)
        opening = f"Once upon a time, a little {animal} named {name} lived in the {ANIMALS[animal][2]}."
    elif text_format == "wikihow":
        opening = f"How to learn {topic}: take it one small step at a time."
    else:
        opening = f"Chapter {rng.randrange(1, 13)}: {topic.capitalize()}."
    text = f"{_document(rng, opening, topic)}\n\nRemember: {_equation(*training_problem(rng))}"
    readers = "a general audience" if audience == "general" else audience.replace("_", " ")
    return {"prompt": f"Write a {text_format} about {topic} for {readers}.", "text": text,
            "token_length": len(text.split()) * 4 // 3, "audience": audience, "format": text_format,
            "seed_data": rng.choice(COSMO_SEED_DATA)}


def _python_edu_row(rng: random.Random, index: int) -> dict:
    chosen = rng.sample(list(PYTHON_FUNCTIONS), rng.randrange(2, 5))
    parts, checks = [f'"""Small helpers for {rng.choice(TOPIC_NAMES)}."""'], []
    for name in chosen:
        parameters, doc, body, evaluate, arity = PYTHON_FUNCTIONS[name]
        parts.append(f'def {name}({parameters}):\n    """{doc}"""\n    {body}')
        for _ in range(rng.randrange(1, 3)):
            args = [rng.randrange(10) for _ in range(arity)]
            shown = ", ".join(map(str, args))
            checks.append(f"assert {name}({f'[{shown}]' if name == 'total' else shown}) == {evaluate(*args)}")
    text = "\n\n\n".join(parts) + "\n\n\n" + "\n".join(checks) + "\n"
    return {"blob_id": hashlib.sha1(text.encode()).hexdigest(),
            "repo_name": f"{rng.choice(NAMES).lower()}{index}/math-helpers", "path": f"src/{chosen[0]}.py",
            "length_bytes": len(text.encode()), **_scores(rng, 2.5, 5.0), "text": text}


def _finemath_row(rng: random.Random, index: int) -> dict:
    problems = [training_problem(rng) for _ in range(rng.randrange(2, 4))]
    practice = [training_problem(rng) for _ in range(rng.randrange(3, 7))]
    text = "\n\n".join(["# Adding and subtracting small numbers", *(_worked_steps(*p) for p in problems),
                        "Practice:", *(_equation(a, op, b, c) for a, op, b, c in practice)])
    return {"url": f"https://{rng.choice(SITES)}/arithmetic/lesson-{index}.html", "text": text,
            "token_count": len(text.split()) * 4 // 3, **_scores(rng, 4.0, 5.0)}


def _question(rng: random.Random, a: int, op: str, b: int) -> str:
    return rng.choice(QUESTION_TEMPLATES).format(a=a, op=op, b=b)


def _arithmetic_turn(rng: random.Random) -> list[dict]:
    a, op, b, c = training_problem(rng)
    return [_message("user", _question(rng, a, op, b)), _message("assistant", _equation(a, op, b, c))]


def _chat_turn(rng: random.Random) -> list[dict]:
    question, answer = rng.choice(CHAT_PAIRS)
    return [_message("user", question), _message("assistant", answer)]


def _smoltalk_row(rng: random.Random, index: int) -> dict:
    roll = rng.random()
    if roll < 0.6:
        return {"messages": _arithmetic_turn(rng), "source": "metamathqa-50k"}
    if roll < 0.7:
        return {"messages": [_message("system", SYSTEM_PROMPT), *_arithmetic_turn(rng)], "source": "systemchats-30k"}
    if roll < 0.82:
        return {"messages": _chat_turn(rng), "source": "everyday-conversations"}
    turns = rng.choice((_arithmetic_turn, _chat_turn))(rng)
    for _ in range(rng.randrange(1, 3)):
        turns += _arithmetic_turn(rng)
    return {"messages": turns, "source": "smol-magpie-ultra"}


def _ultrafeedback_row(rng: random.Random, index: int) -> dict:
    if rng.random() < 0.85:
        a, op, b, c = training_problem(rng)
        prompt, good, offset = _question(rng, a, op, b), _equation(a, op, b, c), rng.randrange(1, 4)
        wrong = c - offset if c >= offset and rng.random() < 0.5 else c + offset
        bad = _equation(a, op, b, wrong) if rng.random() < 0.7 else rng.choice(UNHELPFUL_ANSWERS)
    else:
        (prompt, good), bad = rng.choice(CHAT_PAIRS), rng.choice(UNHELPFUL_ANSWERS)
    chosen, score_chosen = [_message("user", prompt), _message("assistant", good)], rng.randrange(7, 11)
    return {"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(), "chosen": chosen,
            "rejected": [_message("user", prompt), _message("assistant", bad)], "messages": list(chosen),
            "score_chosen": float(score_chosen), "score_rejected": float(rng.randrange(1, score_chosen - 1))}


def _openthoughts_row(rng: random.Random, index: int) -> dict:
    a, op, b, c = training_problem(rng)
    word_problem = rng.random() < 0.3
    question = _word_problem(rng, a, op, b) if word_problem else _question(rng, a, op, b)
    reading = "This word problem turns into numbers: I need" if word_problem else "I need"
    # Short traces: restate the problem as numbers, then the equation the instruct model already answers.
    # Digit-by-digit steps made the trace the fragile part: copying each operand's ones digit is a skill
    # distillation had to learn from scratch, and with other seeds or CPU kernels it did not (a wrong
    # digit in the trace, then a wrong answer copied from it). The trace ends with the equation the
    # solution repeats, so the answer copies the thought instead of working it out again.
    steps = _equation(a, op, b, c) if a >= 10 else f"We know that {_equation(a, op, b, c)}"
    thought = f"{reading} to work out {a} {op} {b}.\n\n{steps}"
    answer = (f"<|begin_of_thought|>\n\n{thought}\n\n<|end_of_thought|>\n\n"
              f"<|begin_of_solution|>\n\n{_equation(a, op, b, c)}\n\n<|end_of_solution|>")
    return {"system": OPENTHOUGHTS_SYSTEM,
            "conversations": [{"from": "user", "value": question}, {"from": "assistant", "value": answer}]}


def _openr1_row(rng: random.Random, index: int) -> dict:
    a, op, b, c = training_problem(rng)
    word_problem = rng.random() < 0.4
    return {"problem": _word_problem(rng, a, op, b) if word_problem else f"What is {a} {op} {b}?",
            "solution": f"{_worked_steps(a, op, b, c)}\n\nThe answer is \\boxed{{{c}}}", "answer": str(c),
            "problem_type": "Logic and Puzzles" if word_problem else "Algebra",
            "question_type": "math-word-problem", "source": rng.choice(("cn_k12", "olympiads", "orca_math")),
            "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4))}


ROW_MAKERS: dict[str, Callable[[random.Random, int], dict]] = {
    "fineweb-edu": _fineweb_row, "cosmopedia-v2": _cosmopedia_row, "python-edu": _python_edu_row,
    "finemath": _finemath_row, "smoltalk": _smoltalk_row, "ultrafeedback": _ultrafeedback_row,
    "openthoughts": _openthoughts_row, "openr1-math": _openr1_row,
}


def generate_rows(dataset_name: str, num_rows: int, seed: int, split: str = "train") -> Iterator[dict]:
    """Deterministic rows in the Hub schema of `dataset_name` (a key of registry.DATASETS).

    The same (name, num_rows, seed, split) always gives the same rows, and a longer run starts with the
    rows of a shorter one. Raises KeyError for an unknown dataset and ValueError for a negative count
    at call time, not on first iteration.
    """
    dataset_spec(dataset_name)
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    make_row, rng = ROW_MAKERS[dataset_name], random.Random(f"{dataset_name}:{split}:{seed}")
    return (make_row(rng, index) for index in range(num_rows))


def arrow_schema(dataset_name: str) -> pa.Schema:
    """The pyarrow schema of `dataset_name`: `spec.columns` in order, nested types as on the Hub."""
    import pyarrow as pa

    text, integer, real = pa.string(), pa.int64(), pa.float64()
    chat = pa.list_(pa.struct([("content", text), ("role", text)]))
    # No column name has different types in different datasets, so one table covers all eight.
    non_text = {"metadata": pa.struct([("url", text), ("score", real)]), "messages": chat, "chosen": chat,
                "rejected": chat, "conversations": pa.list_(pa.struct([("from", text), ("value", text)])),
                "token_length": integer, "token_count": integer, "length_bytes": integer,
                "int_score": integer, "score": real, "score_chosen": real, "score_rejected": real}
    return pa.schema([(column, non_text.get(column, text)) for column in dataset_spec(dataset_name).columns])


def write_hub_layout(dataset_name: str, root: str | Path, num_rows: int, seed: int,
                     num_shards: int = 2, test_rows: int = 0, without: tuple[str, ...] = ()) -> Path:
    """Write the dataset into `root/<hub_id>/` laid out as the Hugging Face Hub serves it; return that folder.

    Shards go to `<config or "default">/<split>-0000i-of-0000N.parquet` (fewer than `num_shards` when there
    are fewer rows, so none is empty), replacing shards an earlier call wrote for this config. The test
    split (when `test_rows > 0` and the dataset has one) is seeded with its own split name, so its rows
    differ from train. README.md lists every config folder, since several datasets share one repo.
    Columns named in `without` are left out of the files, e.g. python-edu's `text`, which the Hub config does
    not ship (its rows carry blob ids; the texts of `generate_rows` are then what a blob store serves).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = dataset_spec(dataset_name)
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    unknown = [column for column in without if column not in spec.columns]
    if unknown:
        raise ValueError(f"{dataset_name} has no column(s) {', '.join(unknown)} to leave out; "
                         f"it has {', '.join(spec.columns)}")
    repo = Path(root) / spec.hub_id
    config_dir = repo / (spec.config or "default")
    config_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in ((spec.split, num_rows), (spec.test_split, test_rows)):
        if split is None:
            continue
        # Shards left from an earlier call (other seed, shard count or test size) would be read as data.
        for stale in config_dir.glob(f"{split}-*-of-*.parquet"):
            stale.unlink()
        if split == spec.test_split and rows <= 0:
            continue
        table = pa.Table.from_pylist(list(generate_rows(dataset_name, rows, seed, split)),
                                     schema=arrow_schema(dataset_name)).drop_columns(list(without))
        shards = max(1, min(num_shards, rows))
        bounds = [rows * shard // shards for shard in range(shards + 1)]
        for shard in range(shards):
            pq.write_table(table.slice(bounds[shard], bounds[shard + 1] - bounds[shard]),
                           config_dir / f"{split}-{shard:05d}-of-{shards:05d}.parquet")
    _write_readme(repo)
    return repo


def _write_readme(repo: Path) -> None:
    lines = ["---", "configs:"]
    for config_dir in sorted(path for path in repo.iterdir() if path.is_dir()):
        found = {match["split"] for file in config_dir.glob("*.parquet")
                 if (match := SHARD_NAME.match(file.name))}
        splits = sorted(found, key=lambda split: (not split.startswith("train"), split))
        if splits:
            lines += [f"- config_name: {config_dir.name}", "  data_files:"]
            for split in splits:
                lines += [f"  - split: {split}", f"    path: {config_dir.name}/{split}-*"]
    lines += ["---", "", ("Seeded offline stand-in written by `doge_dagster.data.generated` "
              f"(generator version {GENERATOR_VERSION})."), ""]
    (repo / "README.md").write_text("\n".join(lines), encoding="utf-8")
