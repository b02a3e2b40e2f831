"""lighteval 0.11 on this stack (huggingface_hub 2.x, no network): two import-time fixes, isolated here.

Fix `hub_list_models_model_name`
    Importing lighteval's task registry imports its extended tasks; `mix_eval` builds an LLM-judge
    metric at import time, whose constructor calls `HfApi().list_models(model_name=...)`.
    huggingface_hub 1.x removed the `model_name` argument, so the import (and with it every
    evaluation, even of tasks that never use a judge) fails with `TypeError`. The fix maps
    `model_name=` to `search=`, its successor. `list_models` is a lazy generator, so nothing reaches
    the network at import time either.
    Remove it when `needed()["hub_list_models_model_name"]` is False: hub accepts `model_name` again
    or lighteval no longer passes it (tests/test_eval_tasks.py fails and says so).

Fix `tiny_benchmarks_download_at_import`
    The same registry import also imports the extended `tiny_benchmarks` tasks, whose metric objects
    download `tinyBenchmarks.pkl` from GitHub with `requests.get` when they are built, at import time.
    Without network that raises `ConnectionError`, and again no task can be evaluated. The fix imports
    the registry once with `requests.get` answering connection errors as an HTTP 503 response, which
    lighteval already handles (it skips the download). Only tinyBenchmarks tasks would need the file;
    no recipe uses them. Remove it when `needed()["tiny_benchmarks_download_at_import"]` is False
    (lighteval stops downloading at import, or the file is already there).

Not fixed here, on purpose:
- xxhash 4 rejects `xxh64(str)`, which lighteval's details logger calls: pinned (`xxhash<4` in
  pyproject.toml), a pin being cleaner than a patch. A test checks that the pin still holds.
- The ifeval module calls `nltk.download("punkt")` at import: offline it prints an error and returns
  False after a failed DNS lookup (about a second); nothing breaks, and ifeval itself (a real-size
  instruct task) needs the data anyway, so real runs need the network or a pre-filled NLTK_DATA.
- The prediction cache keyed by model config rather than weights: handled in the runner
  by the folder the model is loaded from (`runner.model_view`), not by patching lighteval.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

_APPLIED_MARKER = "_doge_compat_model_name"


def _lighteval_dir() -> Path:
    spec = importlib.util.find_spec("lighteval")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("lighteval is not installed: pip install 'lighteval[extended_tasks]==0.11.0'")
    return Path(next(iter(spec.submodule_search_locations)))


def _lighteval_passes_model_name() -> bool:
    """Whether lighteval still calls `list_models(model_name=...)` (read from its source, no import)."""
    source = _lighteval_dir() / "metrics" / "metrics_sample.py"
    return source.is_file() and "list_models(model_name=" in source.read_text()


def _hub_accepts_model_name() -> bool:
    from huggingface_hub import HfApi

    # `signature` follows `__wrapped__`, so this reads the hub's own signature even once patched.
    return "model_name" in inspect.signature(HfApi.list_models).parameters


def _tiny_benchmarks_downloads_at_import() -> bool:
    """Whether importing lighteval's tiny_benchmarks tasks downloads a file it does not have yet."""
    folder = _lighteval_dir() / "tasks" / "extended" / "tiny_benchmarks"
    source = folder / "main.py"
    return (
        source.is_file() and "self.download()" in source.read_text() and not (folder / "tinyBenchmarks.pkl").is_file()
    )


def needed() -> dict[str, bool]:
    """Each fix and whether the installed versions still need it."""
    return {
        "hub_list_models_model_name": _lighteval_passes_model_name() and not _hub_accepts_model_name(),
        "tiny_benchmarks_download_at_import": _tiny_benchmarks_downloads_at_import(),
    }


@contextlib.contextmanager
def _connection_errors_as_http_503() -> Iterator[None]:
    """Within the block, `requests.get` answers a connection failure with an HTTP 503 response."""
    import requests

    original = requests.get

    def get(url, *args, **kwargs):
        try:
            return original(url, *args, **kwargs)
        except requests.ConnectionError:
            response = requests.Response()
            response.status_code, response.url = 503, url
            return response

    requests.get = get
    try:
        yield
    finally:
        requests.get = original


def apply() -> list[str]:
    """Apply the fixes the installed versions need (idempotent) and import lighteval's task registry;
    return the names of the fixes applied. Call before importing `lighteval.pipeline` or the registry."""
    fixes = needed()
    applied = []
    if fixes["hub_list_models_model_name"]:
        from huggingface_hub import HfApi

        if not getattr(HfApi.list_models, _APPLIED_MARKER, False):
            original = HfApi.list_models

            @functools.wraps(original)
            def list_models(self, *args, model_name: str | None = None, **kwargs):
                if model_name is not None and "search" not in kwargs:
                    kwargs["search"] = model_name
                return original(self, *args, **kwargs)

            setattr(list_models, _APPLIED_MARKER, True)
            HfApi.list_models = list_models
        applied.append("hub_list_models_model_name")
    if fixes["tiny_benchmarks_download_at_import"] and "lighteval.tasks.registry" not in sys.modules:
        with _connection_errors_as_http_503():
            import lighteval.tasks.registry  # noqa: F401
        applied.append("tiny_benchmarks_download_at_import")
    return applied
