"""Seeded, reproducible workloads shaped like real traffic, as sessions of steps.

A :class:`Session` is a conversation: opening messages (system prompt, few-shot
examples), then steps. Each step appends its messages to the history and sends it all;
the reply is appended as an assistant message before the next step, so a session's
next request exists only after its previous reply. The harness interleaves sessions.
Sizes are in the simulator's tokens (4 characters each, see tokens.py).

* ``chat``: multi-turn chats behind one shared product system prompt; 6 turns each.
* ``agent``: tool-using loops of 3 agent types, each with a 3-3.5k-token system prompt
  (instructions and 8 tool schemas); each step feeds back a tool result of 100-600 tokens.
* ``fewshot``: one-shot requests on a few long few-shot templates (popular ones more
  often) with a short varying question.
* ``noreuse``: unique random prompts; the control where no routing can find a hit.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.fleet_sim.tokens import CHARS_PER_TOKEN

Message = dict[str, Any]
NAMES = ("chat", "agent", "fewshot", "noreuse")


@dataclass(frozen=True)
class Step:
    messages: tuple[Message, ...]  # appended to the history before this request
    max_tokens: int


@dataclass(frozen=True)
class Session:
    """One conversation. ``id`` is sent as ``x-session-id`` and ``user`` when ``sticky``
    (a client that names its conversations); single-shot traffic sends neither.
    ``adapter``, when set, is the LoRA adapter every request names as its ``model``."""

    id: str
    opening: tuple[Message, ...]
    steps: tuple[Step, ...]
    sticky: bool = True
    adapter: str | None = None


@dataclass(frozen=True)
class Workload:
    name: str
    sessions: tuple[Session, ...]

    @property
    def requests(self) -> int:
        return sum(len(s.steps) for s in self.sessions)


class Text:
    """Seeded pseudo-English: words from a fixed vocabulary, sized in tokens."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        vocab_rng = random.Random(7)  # the same words in every workload
        letters = "etaoinshrdlucmfwypvbgk"
        self.words = ["".join(vocab_rng.choices(letters, k=vocab_rng.randint(2, 9)))
                      for _ in range(2000)]

    def tokens(self, n: int) -> str:
        out: list[str] = []
        size = 0
        while size < n * CHARS_PER_TOKEN:
            word = self.rng.choice(self.words)
            out.append(word)
            size += len(word) + 1
        return " ".join(out)[: n * CHARS_PER_TOKEN]


def _user(content: str) -> Message:
    return {"role": "user", "content": content}


def chat(count: int, seed: int) -> Workload:
    """``count`` requests as 6-turn chats sharing a ~250-token system prompt."""
    rng = random.Random(seed)
    text = Text(rng)
    system = {"role": "system", "content": "You are a helpful assistant. " + text.tokens(250)}
    sessions = []
    for i in range(max(1, count // 6)):
        steps = tuple(Step((_user(text.tokens(rng.randint(15, 120))),), rng.randint(40, 160))
                      for _ in range(6))
        sessions.append(Session(f"chat-{seed}-{i}", (system,), steps))
    return Workload("chat", tuple(sessions))


def _tool_schemas(text: Text, n: int) -> str:
    tools = [{"type": "function", "function": {
        "name": f"tool_{i}_{text.tokens(2).replace(' ', '_')}", "description": text.tokens(60),
        "parameters": {"type": "object", "properties": {
            f"arg{j}": {"type": "string", "description": text.tokens(15)} for j in range(4)}}}}
        for i in range(n)]
    return json.dumps(tools)


def agent(count: int, seed: int) -> Workload:
    """``count`` requests as 3-6-step tool loops of 3 agent types."""
    rng = random.Random(seed)
    text = Text(rng)
    systems = [{"role": "system", "content": f"You are agent {kind}. " + text.tokens(
        rng.randint(1200, 1900)) + "\nTools:\n" + _tool_schemas(text, 8)} for kind in range(3)]
    sessions: list[Session] = []
    total = 0
    while total < count:
        n = min(rng.randint(3, 6), count - total)
        first = Step((_user(text.tokens(rng.randint(50, 150))),), rng.randint(30, 80))
        rest = tuple(Step(({"role": "tool", "tool_call_id": f"call_{k}",
                            "content": text.tokens(rng.randint(100, 600))},),
                          rng.randint(30, 80)) for k in range(1, n))
        sessions.append(Session(f"agent-{seed}-{len(sessions)}", (rng.choice(systems),),
                                (first, *rest)))
        total += n
    return Workload("agent", tuple(sessions))


def fewshot(count: int, seed: int) -> Workload:
    """``count`` single requests on 4 templates of 1.2-2k tokens, weighted 8:4:2:1."""
    rng = random.Random(seed)
    text = Text(rng)
    templates = []
    for t in range(4):
        shots = "\n\n".join(f"Q: {text.tokens(40)}\nA: {text.tokens(60)}"
                            for _ in range(rng.randint(12, 20)))
        templates.append({"role": "system", "content": f"Task {t}. Examples:\n{shots}"})
    sessions = []
    for i in range(count):
        template = rng.choices(templates, weights=(8, 4, 2, 1))[0]
        step = Step((_user("Q: " + text.tokens(rng.randint(20, 60))),), rng.randint(8, 32))
        sessions.append(Session(f"fewshot-{seed}-{i}", (template,), (step,), sticky=False))
    return Workload("fewshot", tuple(sessions))


def noreuse(count: int, seed: int) -> Workload:
    """``count`` unique prompts of 300-800 tokens."""
    rng = random.Random(seed)
    text = Text(rng)
    sessions = [Session(f"noreuse-{seed}-{i}", (),
                        (Step((_user(text.tokens(rng.randint(300, 800))),),
                              rng.randint(16, 64)),), sticky=False)
                for i in range(count)]
    return Workload("noreuse", tuple(sessions))


BUILDERS: dict[str, Callable[[int, int], Workload]] = {
    "chat": chat, "agent": agent, "fewshot": fewshot, "noreuse": noreuse}


def build(name: str, count: int, seed: int = 1) -> Workload:
    return BUILDERS[name](count, seed)
