"""Turn generated token ids into streamable text deltas, honouring stop strings.

Incremental detokenisation follows vLLM's prefix/read offsets: decode a short
window twice and emit only the difference, holding text back while it ends in an
incomplete UTF-8 sequence ("\ufffd"). A few prompt tokens seed the window so that
SentencePiece tokenizers keep the leading space of the first generated word.

With stop strings, the last `len(longest stop) - 1` characters are held back until
they can no longer start a match, so a streamed client never sees part of a stop
string. Streamed and non-streamed responses are both the concatenation of these
deltas, hence identical.

Stop matching runs inside the batched decode step, so its cost per token is paid by
every sequence of the batch: only a stop string that ends in the new delta can match
now, so only those whose last character occurs in the delta are searched, each in
vLLM's window (its own length before the delta, plus the delta). With the protocol's
bounds (64 strings of 1024 characters) that is at most ~64k characters per token.
"""

from __future__ import annotations

from typing import Any

_PROMPT_CONTEXT_TOKENS = 5
_INCOMPLETE = "\ufffd"


class TextAssembler:
    """Owned by one sequence on the scheduler thread; not thread-safe."""

    def __init__(
        self,
        tokenizer: Any,
        prompt_ids: list[int],
        stop: tuple[str, ...] = (),
        include_stop: bool = False,
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids: list[int] = list(prompt_ids[-_PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._stop = stop
        self._by_last_char: dict[str, list[str]] = {}
        for s in filter(None, stop):  # the protocol drops empty ones already
            self._by_last_char.setdefault(s[-1], []).append(s)
        self._include_stop = include_stop
        self._holdback = max((len(s) for s in stop), default=1) - 1
        self.text = ""  # everything decoded so far, cut at a stop string once matched
        self._emitted = 0
        self.stop_reason: str | None = None  # the stop string that ended generation

    def push(self, token_id: int, check_stop: bool = True) -> str:
        """Add one generated token; return the text that may be sent now.

        `check_stop` is False while `min_tokens` is not reached. After a stop string
        matched (`stop_reason` set) the returned delta is final.
        """
        if self.stop_reason is not None:  # finished: later tokens are not part of the text
            return ""
        self._ids.append(token_id)
        delta = self._decode_delta()
        if delta:
            self.text += delta
            if self._stop and check_stop:
                self._find_stop(delta)
        if self.stop_reason is not None:
            return self.flush()
        return self._take(len(self.text) - self._holdback)

    def flush(self) -> str:
        """Release the held-back text; call once when the sequence finishes."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        if end <= self._emitted:
            return ""
        out = self.text[self._emitted : end]
        self._emitted = end
        return out

    def _decode(self, ids: list[int]) -> str:
        text: str = self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)
        return text

    def _decode_delta(self) -> str:
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) <= len(prefix) or full.endswith(_INCOMPLETE):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return full[len(prefix) :]

    def _find_stop(self, delta: str) -> None:
        """Cut at the earliest stop string ending in `delta`, the text just appended
        (the shorter one when two start at the same place)."""
        new_from = len(self.text) - len(delta)
        found: tuple[int, str] | None = None
        for last in self._by_last_char.keys() & set(delta):
            for s in self._by_last_char[last]:
                pos = self.text.find(s, max(0, new_from - len(s) + 1))
                if pos >= 0 and (found is None or (pos, s) < found):
                    found = (pos, s)
        if found is None:
            return
        pos, stop = found
        self.text = self.text[: pos + len(stop) if self._include_stop else pos]
        self.stop_reason = stop
