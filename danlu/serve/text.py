"""Generated tokens -> text deltas, with stop strings and incomplete UTF-8 held back until safe."""

from __future__ import annotations


class TextTracker:
    """Decodes a sequence's generated tokens and says what text is safe to send so far."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.tokens: list[int] = []
        self.sent = 0  # characters already handed out
        self.text = ""
        self.stopped = False

    def add(self, token: int) -> str:
        """Add a token; return the new text that can be sent now (may be empty). After a stop string
        is found, `stopped` is True and the text ends just before it."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if self.stop:
            start = max(0, self.sent - max(len(s) for s in self.stop))
            hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.stopped = True
                self.text = text[:min(hits)]
                return self._take(len(self.text))
        self.text = text
        safe = len(text)
        if text.endswith("\ufffd"):  # a multi-byte character split over tokens: wait for the rest
            safe -= 1
        hold = 0
        for s in self.stop:  # a suffix that may be the start of a stop string waits for more text
            for k in range(min(len(s) - 1, safe), 0, -1):
                if text[safe - k:safe] == s[:k]:
                    hold = max(hold, k)
                    break
        safe -= hold
        return self._take(safe)

    def flush(self) -> str:
        """At the end: everything not yet sent (held-back stop-string prefixes and a character cut
        by max_tokens included, so the text equals `tokenizer.decode` of the tokens)."""
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        delta = self.text[self.sent:upto]
        self.sent = upto
        return delta
