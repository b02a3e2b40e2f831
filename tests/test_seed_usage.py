"""The seed's usage snippets, verbatim, on this pipeline's published models.

README.md's *Using a trained model* prints the three snippets of the SmallDoge model cards (base, instruct with
`TextStreamer`, reason), each after an `<!-- seed-usage: NAME -->` comment. The quick test checks them against the
seed's text kept here: the Hub id replaced by `model_path`, `trust_remote_code=True` dropped, `return_dict=False`
added to the chat snippets (transformers 5 returns a dict there by default), and nothing else. The slow tests run
each block in a fresh, offline Python process against the tiny chain's published model (`model_path` set to its
folder, torch seeded): it must exit 0, build transformers' own Doge class without loading remote code, and print
what it generated.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dagster_dev import CHAIN_TEST_TIMEOUT_S
from helpers import tail

from doge_dagster.artifacts import ArtifactStore

README = Path(__file__).resolve().parents[1] / "README.md"

# SmallDoges/small-doge, docs/Doge-20M.md (the Doge-20M model card), trailing spaces removed
SEED_BASE = """\
>>> from transformers import AutoTokenizer, AutoModelForCausalLM

>>> tokenizer = AutoTokenizer.from_pretrained("SmallDoge/Doge-20M")
>>> model = AutoModelForCausalLM.from_pretrained("SmallDoge/Doge-20M", trust_remote_code=True)
>>> inputs = tokenizer("Hey how are you doing?", return_tensors="pt")

>>> out = model.generate(**inputs, max_new_tokens=100)
>>> print(tokenizer.batch_decode(out))
"""

# SmallDoges/small-doge, docs/Doge-20M-Instruct.md (the Doge-20M-Instruct model card), trailing spaces removed
SEED_INSTRUCT = """\
from transformers import AutoTokenizer, AutoModelForCausalLM, GenerationConfig, TextStreamer

tokenizer = AutoTokenizer.from_pretrained("SmallDoge/Doge-20M-Instruct")
model = AutoModelForCausalLM.from_pretrained("SmallDoge/Doge-20M-Instruct", trust_remote_code=True)

generation_config = GenerationConfig(
      max_new_tokens=100,
      use_cache=True,
      do_sample=True,
      temperature=0.8,
      top_p=0.9,
      repetition_penalty=1.0
)
steamer = TextStreamer(
      tokenizer=tokenizer,
      skip_prompt=True
)

prompt = "Hi, how are you doing today?"
conversation = [
      {"role": "user", "content": prompt}
]
inputs = tokenizer.apply_chat_template(
    conversation=conversation,
    tokenize=True,
    return_tensors="pt",
)

outputs = model.generate(
    inputs,
    tokenizer=tokenizer,
    generation_config=generation_config,
    streamer=steamer
)
"""

# SmallDoges/small-doge, docs/training.md, "Reasoning Model Usage" (there is no Doge-20M-Reason card)
SEED_REASON = """\
from transformers import AutoTokenizer, AutoModelForCausalLM, GenerationConfig, TextStreamer

tokenizer = AutoTokenizer.from_pretrained("SmallDoge/Doge-20M-Reason")
model = AutoModelForCausalLM.from_pretrained("SmallDoge/Doge-20M-Reason", trust_remote_code=True)

generation_config = GenerationConfig(
    max_new_tokens=1000,  # Longer for reasoning traces
    use_cache=True,
    do_sample=True,
    temperature=0.8,
    top_p=0.9,
    repetition_penalty=1.0
)

streamer = TextStreamer(tokenizer=tokenizer, skip_prompt=True)
prompt = "Solve this math problem step by step: What is 15% of 240?"

conversation = [{"role": "user", "content": prompt}]
inputs = tokenizer.apply_chat_template(
    conversation=conversation,
    tokenize=True,
    return_tensors="pt",
)

outputs = model.generate(
    inputs,
    generation_config=generation_config,
    streamer=streamer
)
"""

# snippet name -> (the seed's text, its Hub id, the published asset it runs on, its max_new_tokens)
SNIPPETS = {
    "base": (SEED_BASE, "SmallDoge/Doge-20M", "doge_base", 100),
    "instruct": (SEED_INSTRUCT, "SmallDoge/Doge-20M-Instruct", "doge_instruct", 100),
    "reason": (SEED_REASON, "SmallDoge/Doge-20M-Reason", "doge_reason", 1000),
}

# After the snippet, in the same process: what it built and generated, for the assertions.
EPILOGUE = """
import json as _json
_generated = outputs if "outputs" in globals() else out
_prompt = inputs if torch.is_tensor(inputs) else inputs["input_ids"]
with open(_RESULT, "w") as _file:
    _json.dump({
        "class": f"{type(model).__module__}.{type(model).__name__}",
        "new_tokens": _generated.shape[1] - _prompt.shape[1],
        "new_text": tokenizer.decode(_generated[0, _prompt.shape[1]:]),
        "batch_decode": tokenizer.batch_decode(_generated),
    }, _file)
"""


def readme_block(name: str) -> str:
    """The ```python block after `<!-- seed-usage: NAME -->` in README.md."""
    marker = f"<!-- seed-usage: {name} -->"
    text = README.read_text()
    assert text.count(marker) == 1, f"README.md needs exactly one {marker}"
    after = text.split(marker, 1)[1].lstrip("\n")
    assert after.startswith("```python\n"), f"{marker} must be followed by a ```python block"
    return after.removeprefix("```python\n").split("```", 1)[0]


def adapted(seed: str, hub_id: str) -> str:
    """The seed's snippet with the README's documented changes and nothing else."""
    text = seed.replace(f'"{hub_id}"', "model_path").replace(", trust_remote_code=True", "")
    return text.replace('    return_tensors="pt",\n', '    return_tensors="pt",\n    return_dict=False,\n')


def without_prompts(block: str) -> str:
    """An interactive session's code: `>>> ` and `... ` prompts removed, as doctest reads it."""
    return re.sub(r"^(>>>|\.\.\.) ?", "", block, flags=re.MULTILINE)


@pytest.mark.parametrize("name", SNIPPETS)
def test_the_readme_prints_the_seed_snippet_with_only_the_documented_changes(name):
    """The README block is the seed's text, line for line (trailing spaces aside), after the documented changes."""
    seed, hub_id, _, _ = SNIPPETS[name]
    block = readme_block(name)
    lines = [line.rstrip() for line in block.splitlines()]
    assert lines == adapted(seed, hub_id).splitlines()
    assert "trust_remote_code" not in block and "SmallDoge/" not in block


@pytest.mark.slow
@pytest.mark.timeout(CHAIN_TEST_TIMEOUT_S)
@pytest.mark.parametrize("name", SNIPPETS)
def test_the_seed_snippet_runs_on_the_published_tiny_model(name, tiny_chain, tmp_path):
    """The README block, `model_path` set to the tiny chain's published model, in a fresh offline process:
    transformers' own `DogeForCausalLM`, no remote code, and the generated text printed (the base snippet's
    `batch_decode`; through the chat snippets' streamer, exactly the new tokens)."""
    _, _, asset, max_new_tokens = SNIPPETS[name]
    store = ArtifactStore(str(tiny_chain.artifact_root))
    model = store.local_path(store.latest(asset, "tiny"))
    assert "auto_map" not in json.loads((model / "config.json").read_text()), "the folder offers remote code"
    result = tmp_path / "result.json"
    preamble = f"import torch\ntorch.manual_seed(0)\nmodel_path = {str(model)!r}\n_RESULT = {str(result)!r}\n"
    script = tmp_path / f"{name}.py"
    script.write_text(preamble + without_prompts(readme_block(name)) + EPILOGUE)
    modules = tmp_path / "hf_modules"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_MODULES_CACHE": str(modules), "TRANSFORMERS_VERBOSITY": "error"}  # fmt: skip
    completed = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=600, check=False)  # fmt: skip
    assert completed.returncode == 0, tail(completed.stdout + completed.stderr)
    ran = json.loads(result.read_text())
    assert ran["class"] == "transformers.models.doge.modeling_doge.DogeForCausalLM", ran["class"]
    assert not (modules.exists() and any(modules.rglob("*.py"))), "remote code was loaded into the modules cache"
    assert 1 <= ran["new_tokens"] <= max_new_tokens, ran
    assert ran["new_text"].strip(), f"nothing was generated: {ran}"
    if name == "base":
        assert str(ran["batch_decode"]) in completed.stdout, completed.stdout
        assert ran["batch_decode"][0].startswith("Hey how are you doing?"), ran
    else:  # the streamer printed the new tokens as they came, then a newline
        assert completed.stdout == ran["new_text"] + "\n", (completed.stdout, ran)
