"""A multi-turn conversation on one Engine, its KV cache kept across turns.

Each turn renders the whole conversation with the chat template, tokenizes it, and hands it to
``Engine.generate(reuse_cache=True)``: the cache already holds every earlier turn (the prompt and the
reply as generated), so only the tokens after the longest cached prefix are prefilled, typically the new
user message and the headers around it. Where re-tokenizing an earlier reply gives other ids than the ones
generated, the cache is rolled back to where they differ (PopN), so the K/V always belong to exactly the
ids the template gives: the logits are those of a prefill of the whole conversation from scratch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from .chat_template import load_chat_template
from .engine import Engine, Generation
from .errors import LlamaAotError


@dataclass
class TurnStats:
    prompt_tokens: int  # the whole rendered conversation
    prefilled_tokens: int  # of which this turn prefilled (the rest was in the cache)
    generated_tokens: int
    prefill_seconds: float
    decode_seconds: float
    first_token_seconds: float  # from the call to the first token


@dataclass
class Chat:
    """``Chat(engine, system="...").send("hi", on_text=print)`` -> the reply; ``reset()`` forgets the turns."""

    engine: Engine
    system: str | None = None
    messages: list[dict] = field(default_factory=list)
    turns: list[TurnStats] = field(default_factory=list)

    def __post_init__(self):
        self.template = load_chat_template(self.engine.package_dir, self.engine.tokenizer.get_vocab())
        self.stop_ids = set(self.engine.eos_token_ids)
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.turns = []
        self.engine.reset()

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The template's text for ``messages`` plus the assistant header, as token ids (the text carries its
        own special tokens, so nothing is added, as transformers' ``apply_chat_template`` tokenizes)."""
        text = self.template.render(messages, add_generation_prompt=True)
        return self.engine.tokenizer.encode(text, add_special_tokens=False).ids

    def send(
        self,
        text: str,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> str:
        """Add a user turn, generate the assistant's reply (streamed to ``on_text`` piece by piece), keep both."""
        messages = [*self.messages, {"role": "user", "content": text}]
        reply, gen, first = complete(self.engine, self.prompt_ids(messages), max_tokens=max_tokens,
                                     temperature=temperature, top_p=top_p, seed=seed, stop=stop,
                                     stop_ids=self.stop_ids, on_text=on_text)
        self.messages = [*messages, {"role": "assistant", "content": reply}]
        self.turns.append(TurnStats(len(gen.prompt_ids), gen.prefilled_tokens, len(gen.token_ids),
                                    gen.prefill_seconds, gen.decode_seconds, first))
        return reply

    def stats_text(self) -> str:
        if not self.turns:
            return "no turns yet"
        t = self.turns[-1]
        prefill = t.prefilled_tokens / t.prefill_seconds if t.prefill_seconds else 0.0
        decode = max(t.generated_tokens - 1, 0) / t.decode_seconds if t.decode_seconds else 0.0
        return (f"turn {len(self.turns)}: conversation {t.prompt_tokens} tokens, prefilled {t.prefilled_tokens} "
                f"({t.prompt_tokens - t.prefilled_tokens} from the cache) at {prefill:.1f} tok/s, first token "
                f"{t.first_token_seconds * 1e3:.0f} ms, {t.generated_tokens} generated at {decode:.1f} tok/s")


def complete(
    engine: Engine,
    prompt_ids: list[int],
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    stop: list[str] | None,
    stop_ids: set[int],
    on_text: Callable[[str], None] | None = None,
) -> tuple[str, Generation, float]:
    """Generate after ``prompt_ids`` reusing the cached prefix; stop on ``stop_ids`` or a ``stop`` string.

    Returns the text (without the end-of-turn token or the stop string), the Generation and the seconds to
    the first token. Text is streamed as it becomes whole: a piece that ends inside a multi-byte character
    (U+FFFD so far) or could be the start of a stop string waits for the next token."""
    stop = [s for s in (stop or []) if s]
    if len(prompt_ids) >= engine.context_window and not engine.unbounded:
        raise LlamaAotError(f"the prompt is {len(prompt_ids)} tokens, the context window {engine.context_window}: "
                            "shorten it (or /reset the chat), or recompile with a larger --context-window")
    ids: list[int] = []
    state = {"text": "", "sent": 0, "first": None}
    t0 = time.perf_counter()

    def on_token(token: int) -> bool:
        if state["first"] is None:
            state["first"] = time.perf_counter() - t0
        if token in stop_ids:
            return True
        ids.append(token)
        text = engine.decode_text(ids)
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
        if cut >= 0:
            state["text"] = text[:cut]
            _emit(on_text, state, len(state["text"]))
            return True
        state["text"] = text
        hold = max((_partial_suffix(text, s) for s in stop), default=0)
        end = len(text) - hold
        if text.endswith("\ufffd"):
            end = min(end, len(text) - 1)
        _emit(on_text, state, end)
        return False

    gen = engine.generate(prompt_ids, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                          stop_on_eos=False, on_token=on_token, reuse_cache=True)
    _emit(on_text, state, len(state["text"]))
    return state["text"], gen, state["first"] or 0.0


def _emit(on_text, state: dict, end: int) -> None:
    if on_text and end > state["sent"]:
        on_text(state["text"][state["sent"] : end])
        state["sent"] = end


def _partial_suffix(text: str, stop: str) -> int:
    """The length of the longest end of ``text`` that begins ``stop`` (held back until it is decided)."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
