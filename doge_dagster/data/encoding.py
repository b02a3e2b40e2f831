"""Tokenize on every core, in order: a bounded, ordered map of batches over worker processes.

The mixers read their sources in one process (the seeded shuffle is sequential) and hand batches of texts
or examples to `dataset_num_proc` workers. Results come back in submission order, so the mixture is the same
whatever the number of processes; at most `window` batches per stream are in flight, so reading ahead never
holds more than a few batches in memory. `multiprocessing.Pool.imap` would do the ordering, but its feeder
thread drains the whole input iterator at once, which for a source of billions of tokens is the whole source.

On Linux the workers are forked, as `datasets.map(num_proc=...)` does: a spawned worker re-imports the
caller's main script, so the seed's snippet (a script without an `if __name__ == "__main__"` guard) would run
again in every worker. They are forked when the mapper is made, before any source is read, so no reader
thread is live at the fork; elsewhere they are spawned. A worker gets the backend's JSON for a plain fast
tokenizer, else the pickled tokenizer (chat templates, subclasses).
"""

from __future__ import annotations

import os
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

WINDOW_PER_WORKER = 2  # batches in flight per worker and stream: keeps workers busy, memory bounded


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plain_backend(tokenizer: PreTrainedTokenizerBase):
    """The Rust backend of a plain fast tokenizer, or None when `__call__` does more than `encode_batch`.

    For a plain fast tokenizer `tokenizer(texts, add_special_tokens=False)` comes down to the backend's
    `encode_batch`; calling the backend directly skips the per-text `BatchEncoding` conversion (a third of the
    tokenizing time). Subclasses with their own encoding, or backend truncation/padding left on, are not plain.
    """
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

    cls, backend = type(tokenizer), getattr(tokenizer, "backend_tokenizer", None)
    plain = (
        isinstance(tokenizer, PreTrainedTokenizerFast)
        and cls.__call__ is PreTrainedTokenizerBase.__call__
        and cls._encode_plus is PreTrainedTokenizerFast._encode_plus
        and not hasattr(tokenizer, "_switch_to_input_mode")
        and backend is not None
        and backend.truncation is None
        and backend.padding is None
        and backend.encode_special_tokens == bool(tokenizer.split_special_tokens)
    )
    return backend if plain else None


def ids_encoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[str]], list[list[int]]]:
    """`texts -> token ids` without special tokens: the same ids as `tokenizer(texts, add_special_tokens=False)`."""
    backend = plain_backend(tokenizer)
    if backend is None:
        return lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]
    encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return lambda texts: [encoding.ids for encoding in encode_batch(texts, add_special_tokens=False)]


# -- worker side --------------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(payload: tuple[str, Any]) -> None:
    # One process per core already: the backend's own thread pool would oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    kind, value = payload
    if kind == "backend":
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(value)
        encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
        _WORKER["ids"] = lambda texts: [encoding.ids for encoding in encode_batch(texts, add_special_tokens=False)]
        _WORKER["tokenizer"] = None
    else:
        _WORKER["tokenizer"] = value
        _WORKER["ids"] = ids_encoder(value)


def _ready() -> bool:
    return True


def _run(task: str, batch: Any) -> Any:
    return TASKS[task](_WORKER, batch)


# -- the tasks ----------------------------------------------------------------------------------------------
def documents(state: dict[str, Any], batch: tuple[list[str], int]) -> tuple[array, list[int]]:
    """Token ids of each text with `eos` appended, as one flat int32 array and the documents' lengths.

    One flat array crosses the process boundary far cheaper than a list of Python lists.
    """
    texts, eos = batch
    flat, lengths = array("i"), []
    for ids in state["ids"](texts):
        ids.append(eos)
        flat.extend(ids)
        lengths.append(len(ids))
    return flat, lengths


def example_lengths(state: dict[str, Any], examples: list[dict]) -> list[int]:
    """Token length of each example as its trainer sees it (chat template applied; longer side of a pair)."""
    tokenizer = state["tokenizer"]
    if "messages" in examples[0]:
        conversations = [example["messages"] for example in examples]
    elif "chosen" in examples[0]:
        conversations = [example["prompt"] + example[side] for example in examples for side in ("chosen", "rejected")]
    else:
        conversations = [example["prompt"] for example in examples]
    texts = tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt="answer" in examples[0])
    lengths = [len(ids) for ids in state["ids"](texts)]
    if "chosen" in examples[0]:
        return [max(lengths[index], lengths[index + 1]) for index in range(0, len(lengths), 2)]
    return lengths


TASKS: dict[str, Callable[[dict[str, Any], Any], Any]] = {"documents": documents, "example_lengths": example_lengths}


class BatchMapper:
    """Apply a task of `TASKS` to batches, inline or on worker processes, results in order."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, num_proc: int, needs_full_tokenizer: bool):
        self.num_proc = max(1, num_proc)
        self._state: dict[str, Any] = {"tokenizer": tokenizer, "ids": ids_encoder(tokenizer)}
        self._pool: ProcessPoolExecutor | None = None
        if self.num_proc > 1:
            import multiprocessing

            backend = None if needs_full_tokenizer else plain_backend(tokenizer)
            payload = ("backend", backend.to_str()) if backend is not None else ("tokenizer", tokenizer)
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(
                self.num_proc, mp_context=multiprocessing.get_context(method), initializer=_init_worker, initargs=(payload,)
            )
            self._pool.submit(_ready).result()  # start the workers now, while no reader thread runs

    def map(self, task: str, batches: Iterable[Any]) -> Iterator[Any]:
        """Results of `task` on each batch, in the order of `batches`; reads ahead by a bounded window only."""
        if self._pool is None:
            function = TASKS[task]
            for batch in batches:
                yield function(self._state, batch)
            return
        pending: deque[Future] = deque()
        window = WINDOW_PER_WORKER * self.num_proc
        for batch in batches:
            pending.append(self._pool.submit(_run, task, batch))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        """Stop the workers (batches still in flight are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
