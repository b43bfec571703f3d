"""How history looks to people and to JSON: one plain value per cell, and whole tables as text, CSV or JSON.

Shared by the CLI, export and the gateway's read routes, so a value renders the same everywhere: missing and
NaN are empty (``null`` in JSON), ±inf are the strings ``"Infinity"``/``"-Infinity"`` (JSON has no such numbers),
numpy values are unwrapped, media are W&B-style ``{"_type": ...}`` dicts, bytes are hex and complex numbers
(stored before ``log()`` refused them) are ``{"_type": "complex", "real": r, "imag": i}``, at any depth.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from schemas import Media

from .query import Array, QueryError


def plain(v: Any) -> Any:
    """A JSON-friendly value: None for missing/NaN, ``"Infinity"``/``"-Infinity"`` for ±inf, numpy scalars and
    arrays unwrapped, media as W&B dicts, bytes as hex, complex numbers as ``{"_type": "complex", "real", "imag"}``.

    Applied all the way down (inside lists, arrays, dicts and media payloads), so ``json.dumps(plain(v),
    allow_nan=False)`` never fails on a stored value.
    """
    if v is None or isinstance(v, str | bool | int):
        return v
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        return None if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "biu":
            return v.tolist()
        if v.dtype.kind == "f" and bool(np.isfinite(v).all()):
            return v.tolist()
        return [plain(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return plain(v.item())
    if isinstance(v, Media):
        return plain(v.to_dict())
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [plain(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, complex):
        return {"_type": "complex", "real": plain(v.real), "imag": plain(v.imag)}
    return v


def _cell(v: Any) -> str:
    p = plain(v)
    if p is None:
        return ""
    if isinstance(p, float):
        return format(p, ".6g")
    if isinstance(p, str | int | bool):
        return str(p)
    return json.dumps(p, separators=(",", ":"))


def format_history(data: Mapping[str, Array], fmt: Literal["table", "csv", "json"] = "table") -> str:
    """Render ``history(pandas=False)`` output as an aligned text table, CSV, or JSON (a list of row objects).

    Missing values (None, NaN) are blank in table and CSV and omitted in JSON; ±inf are written as the
    strings ``"Infinity"``/``"-Infinity"`` in JSON (which has no such numbers); media are W&B-style dicts.
    """
    names = list(data)
    n = len(next(iter(data.values()))) if data else 0
    if fmt == "json":
        out = []
        for i in range(n):
            row = {k: plain(data[k][i]) for k in names}
            out.append({k: v for k, v in row.items() if v is not None})
        return json.dumps(out, allow_nan=False)
    rows = [[_cell(data[k][i]) for k in names] for i in range(n)]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(names)
        w.writerows(rows)
        return buf.getvalue()
    if fmt != "table":
        raise QueryError(f"format must be 'table', 'csv' or 'json', got {fmt!r}")
    # Long cells (media, tables) are cut so one wide value cannot push every other column off the screen.
    rows = [[c if len(c) <= 40 else c[:39] + "…" for c in r] for r in rows]
    widths = [max([len(k), *(len(r[j]) for r in rows)]) for j, k in enumerate(names)]
    numeric = [data[k].dtype.kind in "iuf" for k in names]
    lines = ["  ".join(k.rjust(w) if num else k.ljust(w) for k, w, num in zip(names, widths, numeric, strict=True))]
    for r in rows:
        lines.append("  ".join(
            c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True)
        ).rstrip())
    return "\n".join(lines) + "\n"
