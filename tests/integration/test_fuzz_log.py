"""Values into ``log()``: every call is refused at once with a SchemaError naming the key, or stored exactly, as
read back through a real worker process and ``history.Api`` (``tests/support/log_fuzz.py`` says what is
generated and checked; ``bench/fuzz.py --target log`` runs the same for longer).

The seed is fixed and printed (``pytest -s``); a failure reproduces with
``python bench/fuzz.py --target log --seed SEED --count N``. Failures matching a product bug already known
(``support.fuzz_report.KNOWN``, each with a strict-xfail reproducer) are counted, not failed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.log_fuzz import drive_log

pytestmark = pytest.mark.integration
SEED = 5


def test_fuzzed_log_calls_are_stored_exactly_or_refused(redis_url: str, namespace: str, tmp_path: Path) -> None:
    print(f"log() fuzz: seed={SEED}, 3000 calls")
    res = drive_log(SEED, 3_000, tmp_path, redis_url, namespace, calls_per_run=250)
    print(res.line())
    assert not res.crashes.unknown(), res.crashes.report()
    assert res.runs_checked == res.runs >= 12 and res.rows_checked > 800, res.line()
    assert res.accepted > 1_500 and len(res.refused) > 25, (res.line(), res.refused)
    assert {"bad_key", "bad_value", "reserved_key", "too_deep", "int_range", "bad_text", "bad_step",
            "key_too_long", "too_large"} <= set(res.refused_codes), res.refused_codes
