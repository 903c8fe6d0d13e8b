"""A multi-turn conversation on one Engine, its KV cache kept across turns.

Each turn renders the whole conversation with the chat template, tokenizes it, and hands it to
``Engine.generate(reuse_cache=True)``: the cache already holds every earlier turn (the prompt and the
reply as generated), so only the tokens after the longest cached prefix are prefilled, typically the new
user message and the headers around it. Where re-tokenizing an earlier reply gives other ids than the ones
generated, the cache is rolled back to where they differ (PopN), so the K/V always belong to exactly the
ids the template gives: the logits are those of a prefill of the whole conversation from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .chat_template import load_chat_template
from .engine import Engine, Generation
from .errors import LlamaAotError


@dataclass
class Chat:
    """``Chat(engine, system="...").send("hi", on_text=print)`` -> the reply; ``reset()`` forgets the turns."""

    engine: Engine
    system: str | None = None
    messages: list[dict] = field(default_factory=list)
    turns: list[Generation] = field(default_factory=list)  # prompt_ids: the whole conversation of that turn

    def __post_init__(self):
        self.template = load_chat_template(self.engine.package_dir, self.engine.tokenizer.get_vocab())
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
        reply, gen = complete(self.engine, self.prompt_ids(messages), max_tokens=max_tokens,
                              temperature=temperature, top_p=top_p, seed=seed, stop=stop, on_text=on_text)
        self.messages = [*messages, {"role": "assistant", "content": reply}]
        self.turns.append(gen)
        return reply

    def stats_text(self) -> str:
        if not self.turns:
            return "no turns yet"
        t = self.turns[-1]
        return (f"turn {len(self.turns)}: conversation {len(t.prompt_ids)} tokens, prefilled {t.prefilled_tokens} "
                f"({t.reused_tokens} from the cache) at {t.prefill_tokens_per_s:.1f} tok/s, first token "
                f"{t.first_token_seconds * 1e3:.0f} ms, {len(t.token_ids)} generated at {t.decode_tokens_per_s:.1f} tok/s")


def complete(
    engine: Engine,
    prompt_ids: list[int],
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    stop: list[str] | None,
    on_text: Callable[[str], None] | None = None,
) -> tuple[str, Generation]:
    """Generate after ``prompt_ids`` reusing the cached prefix; stop on the model's end-of-turn ids
    (``engine.eos_token_ids``) or a ``stop`` string.

    Returns the text (without the end-of-turn token or the stop string) and the Generation. Text is streamed as it becomes whole: a piece that ends inside a multi-byte character
    (U+FFFD so far) or could be the start of a stop string waits for the next token."""
    stop = [s for s in (stop or []) if s]
    if len(prompt_ids) >= engine.context_window and not engine.unbounded:
        raise LlamaAotError(f"the prompt is {len(prompt_ids)} tokens, the context window {engine.context_window}: "
                            "shorten it (or /reset the chat), or recompile with a larger --context-window")
    ids: list[int] = []
    state = {"text": "", "sent": 0}

    def on_token(token: int) -> bool:
        if token in engine.eos_token_ids:
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
    return state["text"], gen


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
