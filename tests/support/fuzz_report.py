"""What the fuzzers found: failures grouped by a stable signature, a few examples of each, and the product bugs
already known (each pinned by a strict-xfail reproducer in ``tests/unit/test_fuzz_found.py``).

A failure's signature is the tag a check put in brackets in its message (``[not_json:TypeError: ...]``) or else
the exception's type and message with numbers and quoted text blanked, so one bug hit ten thousand times is one
line of the report and its first examples, not ten thousand tracebacks.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

#: Product bugs the fuzzers found that are not fixed yet: signature substring → what it is and its reproducer.
#: A failure matching one is counted under ``known`` and does not fail the bounded CI tests; its reproducer in
#: ``tests/unit/test_fuzz_found.py`` is ``xfail(strict=True)``, so the fix turns it red: then delete both.
KNOWN: dict[str, str] = {}


def signature(text: str) -> str:
    """The stable signature of a failure report (see the module docstring)."""
    tag = re.search(r"(?:^|AssertionError: )\[([a-z_0-9]+(?::[^\]\n]*)?)\]", text, re.MULTILINE)
    if tag:
        return f"[{tag.group(1)[:200]}]"
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if re.match(r"^[A-Za-z_.]+(Error|Exception|Failed|Invalid)\b", ln)),
                lines[-1] if lines else "")
    detail = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", last)
    return re.sub(r"\d+", "N", detail)[:160]


def known(sig: str) -> str | None:
    """The known bug a signature belongs to, if any."""
    return next((what for pattern, what in KNOWN.items() if pattern in sig), None)


@dataclass
class Findings:
    """Failures by signature: counts and the first few reports of each."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    keep: int = 3

    def add(self, text: str) -> None:
        sig = signature(text)
        self.counts[sig] += 1
        ex = self.examples.setdefault(sig, [])
        if len(ex) < self.keep:
            ex.append(text[-6000:])

    def merge(self, other: Findings) -> None:
        for sig, n in other.counts.items():
            self.counts[sig] += n
            ex = self.examples.setdefault(sig, [])
            ex.extend(other.examples.get(sig, [])[: max(0, self.keep - len(ex))])

    def __len__(self) -> int:
        return sum(self.counts.values())

    def unknown(self) -> dict[str, int]:
        return {s: n for s, n in self.counts.items() if known(s) is None}

    def report(self, limit: int = 3) -> str:
        """Every signature with its count, known or NEW, and the first example of each new one."""
        out = []
        for sig, n in self.counts.most_common():
            what = known(sig)
            out.append(f"{n:>9}  {'known' if what else 'NEW  '}  {sig}" + (f"\n{'':>18}{what}" if what else ""))
        for sig in list(self.unknown())[:limit]:
            out.append(f"--- first example of {sig}:\n{self.examples[sig][0]}")
        return "\n".join(out)

    def as_json(self) -> dict[str, dict[str, object]]:
        return {sig: {"count": n, "known": known(sig)} for sig, n in self.counts.most_common()}
