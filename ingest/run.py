"""The W&B-shaped client: ``init()`` → :class:`Run` (``log``, ``config``, ``summary``, ``define_metric``, ``finish``).

Guarantees:

- ``log()`` validates and captures its values before returning: a bad value raises :class:`~schemas.SchemaError`
  naming the key and *nothing* of that call is sent; mutating an object afterwards cannot change what was logged.
  Bad means anything the pipeline could not store and serve back exactly (see :func:`schemas.capture`): text
  that is not valid Unicode (lone surrogates), NUL in keys, complex numbers, datetime64/timedelta64, ... The
  fast path checks its strings too (``isascii()`` first, so ASCII text costs no encoding).
- ``log()`` never does network I/O. It costs a few microseconds on its fast path (a plain ``dict`` with the same
  keys as the previous call and only ``float``/``int``/``str``/``bool``/``None`` values, which are immutable, so
  flattening and capture can be skipped). Under backpressure (``max_pending_rows`` calls not yet packed because
  the sender is stalled) ``log()`` packs the pending calls itself, which may write the spill file.
- Every call is sent in call order, including a call whose step is below the client's cursor (docs/DESIGN.md §2): the
  worker rejects it and records the reason; the client only logs a warning.
- ``finish()`` flushes and waits (``timeout``); what could not be sent is kept in the spill file and reported
  (:class:`FinishResult`, a warning naming the file). An ``atexit`` handler finishes every unfinished run.
- Read-your-writes: unless ``finish(wait=False)``, ``finish()`` then returns once a worker has committed the run's
  last frame, so its rows, summary and rejections are readable through ``Api`` (:mod:`ingest.commits`); when no
  worker commits it within ``commit_timeout_s`` it logs a warning saying why (never an exception).
- ``init`` prints one line (stderr) saying where the run goes and, when a gateway serves the web page, the run's
  page (``run.url``); ``finish`` prints the page again with the row count. ``STEPLINE_SILENT=1`` silences both.
- A call that ``log()`` accepted but that still fails to encode when the sender packs it (a bug) costs only that
  call: the rest of its batch is sent, the call is counted in ``FinishResult.dropped_calls`` and a ``warning``
  event puts it in the run's warnings (:mod:`ingest.batch`).

Memory: unacknowledged frames are held in memory up to ``ClientSettings.memory_cap_bytes`` (64 MiB by default);
beyond that they spill to ``<data_dir>/spill/<project>/<run>-<producer>.spill``.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import secrets
import string
import sys
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from dataclasses import replace as _replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from schemas import (
    Config,
    DefineMetric,
    Finish,
    Log,
    SchemaError,
    Start,
    SteplineError,
    Summary,
    capture,
    check_key,
    collect_blobs,
    decode_event,
    encode_event,
    flatten,
)
from schemas.frame import META_FIELDS, RunMeta, check_run_id, check_run_meta, check_run_name
from schemas.values import check_text, text_ok

from . import commits
from .batch import Batcher, Sig
from .http import HttpTransport
from .sender import AsyncSender, Core, ThreadSender, async_client, sync_client
from .settings import ClientSettings, SettingsError
from .spill import Outbox, spill_path

if TYPE_CHECKING:
    from .torch_watch import Watcher

logger = logging.getLogger("ingest")

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_NONE = type(None)
#: Immutable scalar types the fast path accepts without capture.
_FAST_TYPES = frozenset({float, int, str, bool, _NONE})
_ID_ALPHABET = string.ascii_lowercase + string.digits
_RESUME = {"allow", "must", "never", "auto"}
#: W&B ``init`` keywords that have no meaning here; accepted (and ignored) so W&B scripts run unchanged.
_WANDB_IGNORED = frozenset({
    "entity", "dir", "mode", "reinit", "save_code", "anonymous",
    "allow_val_change", "magic", "monitor_gym", "sync_tensorboard", "force", "tensorboard", "fork_from",
    "resume_from",
})

_time = time.time


@dataclass(frozen=True, slots=True)
class FinishResult:
    """What ``finish()`` achieved: frames acknowledged by Redis, frames left unsent and where they are, log
    calls dropped because they could not be encoded (each also reported in the run's warnings), and frames the
    HTTP gateway refused for good (each also logged as an error with the gateway's reason)."""

    sent_frames: int
    unsent_frames: int
    spill_path: Path | None
    dropped_calls: int = 0
    refused_frames: int = 0
    #: True once a worker committed everything sent (read-your-writes), False when the wait gave up (a warning
    #: said why), None when not waited for (``wait=False``, frames left unsent, or none acknowledged with a stream id).
    committed: bool | None = None
    #: The run's rows and rejected calls as committed, when a worker announced them.
    rows: int | None = None
    rejected: int | None = None

    @property
    def ok(self) -> bool:
        return self.unsent_frames == 0 and self.dropped_calls == 0 and self.refused_frames == 0


def _check_step_commit(step: Any, commit: Any) -> tuple[int | None, bool | None]:
    if step is not None:
        if type(step) is not int:
            if isinstance(step, bool) or not hasattr(step, "__index__"):
                raise SchemaError(f"step must be an int, got {type(step).__name__}", code="bad_step")
            step = step.__index__()
        if not 0 <= step <= _INT64_MAX:
            raise SchemaError(f"step must be within 0..2**63-1, got {step}", code="bad_step")
    if commit is not None and type(commit) is not bool:
        if not isinstance(commit, np.bool_):
            raise SchemaError(f"commit must be a bool or None, got {type(commit).__name__}", code="bad_event")
        commit = bool(commit)
    return step, commit


class _EventMap(MutableMapping[str, Any]):
    """A dict-like view whose writes become events (base of ``run.config`` and ``run.summary``)."""

    _run: Run
    _data: dict[str, Any]

    def __init__(self, run: Run, initial: dict[str, Any] | None = None) -> None:
        object.__setattr__(self, "_run", run)
        object.__setattr__(self, "_data", dict(initial or {}))

    def _emit(self, changes: dict[str, Any]) -> None:
        raise NotImplementedError

    def _capture(self, key: Any, value: Any) -> Any:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"{type(self).__name__} keys cannot be deleted")

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Set several keys as one event (all are validated first: a bad value sends nothing)."""
        src: dict[Any, Any] = {}
        for a in args:
            if a is None:
                continue
            if not isinstance(a, Mapping) and hasattr(a, "__dict__"):  # argparse.Namespace, W&B accepts it
                a = vars(a)
            src.update(a)
        src.update(kwargs)
        changes = {k: self._capture(k, v) for k, v in src.items()}
        if changes:
            self._emit(changes)
            self._data.update(changes)

    def setdefaults(self, d: Mapping[str, Any]) -> None:
        """W&B's ``config.setdefaults``: set only the keys not set yet."""
        self.update({k: v for k, v in d.items() if k not in self._data})

    def as_dict(self) -> dict[str, Any]:
        return dict(self._data)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self.update({name: value})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"


class RunConfig(_EventMap):
    """``run.config``: dict-like with attribute access; every write sends a ``Config`` event."""

    def _capture(self, key: Any, value: Any) -> Any:
        if type(key) is not str or not key:
            raise SchemaError(f"config keys must be non-empty str, got {key!r:.60}", code="bad_key")
        check_text(key, "a config key", key)
        return capture(value, key, self._run.settings.limits)

    def _emit(self, changes: dict[str, Any]) -> None:
        self._run._emit(Config(data=changes))


class RunSummary(_EventMap):
    """``run.summary``: explicit summary values; every write sends a ``Summary`` event.

    Reads return the values set through this object (the worker derives the rest from the history).
    """

    def _capture(self, key: Any, value: Any) -> Any:
        check_key(key, self._run.settings.limits)
        if isinstance(value, Mapping):
            raise SchemaError(f"summary value of {key!r} is a dict; set flattened keys instead", key=key)
        return capture(value, key, self._run.settings.limits)

    def _emit(self, changes: dict[str, Any]) -> None:
        self._run._emit(Summary(data=changes))

    def __delitem__(self, key: str) -> None:
        self.update({key: None})  # a None value removes the key (schemas.Summary)
        self._data.pop(key, None)


class Run:
    """One run of one producer. Create it with :func:`ingest.init`; thread-safe for concurrent ``log()``."""

    _sender: ThreadSender | AsyncSender | None
    #: The hooks of ``watch()`` (created on its first call).
    _watcher: Watcher | None = None

    def __init__(
        self,
        *,
        settings: ClientSettings,
        project: str,
        run_id: str,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        resume: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.project = check_run_id(project, "project")
        self.id = check_run_id(run_id, "run id")
        self.name = check_run_name(name) if name is not None else run_id
        self.resume = resume
        self.producer = secrets.token_hex(8)
        names = settings.names
        self.partition = names.partition(self.project, self.id)
        self.stream = names.stream(self.partition)
        p = self.partition
        self.spill_path = spill_path(settings.data_dir, self.project, self.id, self.producer)
        self._b = Batcher(
            project=self.project,
            run=self.id,
            producer=self.producer,
            stream=self.stream,
            blob_key=lambda sha: names.blob(p, sha),
            limits=settings.limits,
            frame_target_bytes=settings.frame_target_bytes,
            max_block_rows=settings.max_block_rows,
        )
        self._core = Core(self._b, Outbox(self.spill_path, settings.memory_cap_bytes), settings)
        self._step = 0
        self._max_pending = settings.max_pending_rows
        # Longest string (in characters) the fast path takes without an exact size check.
        self._fast_str_chars = min(settings.limits.max_value_bytes, settings.limits.max_event_bytes // 8) // 4
        # The fast path's last signature (see _learn_sig).
        self._sig: Sig = ()
        self._sig_ints: tuple[int, ...] = ()
        self._sig_strs: tuple[int, ...] = ()
        self._sig_checks = False
        self._warned_steps = 0
        self.start_time = _time()
        self.finished = False
        self.result: FinishResult | None = None
        cfg = {k: capture(v, k, settings.limits) for k, v in _as_mapping(config).items()}
        self.config = RunConfig(self, cfg)
        self.summary = RunSummary(self)
        self._sender = None
        # group, job_type, tags, notes (W&B's init arguments); a bad one raises here, before anything is sent.
        self._meta = check_run_meta({k: v for k, v in dict(meta or {}).items() if v is not None})
        self._emit(Start(ts=self.start_time, name=self.name, resume=resume, config=cfg, meta=self._meta))

    # -- logging ----------------------------------------------------------------------------------------------

    @property
    def step(self) -> int:
        """The client's view of the step cursor (docs/DESIGN.md §2): the step the next ``log(d)`` writes at."""
        return self._step

    def log(self, data: Mapping[str, Any], step: int | None = None, commit: bool | None = None) -> None:
        """Log a dict of values at ``step`` (W&B semantics, docs/DESIGN.md §2).

        Raises :class:`SchemaError` on bad input.
        """
        if self.finished:
            raise SteplineError(f"run {self.id} is finished; log() after finish() is not allowed")
        b = self._b
        if type(data) is dict:
            keys = tuple(data)
            bk = b.block_keys
            if keys == bk:
                # A tuple of immutable scalars: the garbage collector stops tracking it, so thousands of
                # pending rows do not lengthen full collections in the training loop.
                vals = tuple(data.values())
                sig = tuple(map(type, vals))
                # The value types are those of the previous call (the usual case) or were learnt now; then only
                # ints (int64 range) and strings (total size) need looking at, and only where they are.
                if (sig == self._sig or self._learn_sig(sig)) and (not self._sig_checks or self._values_ok(vals)):
                    if step is not None or commit is not None:
                        step, commit = _check_step_commit(step, commit)
                    t = _time()
                    with b.lock:
                        if step is None and commit is None:
                            self._step += 1
                        else:
                            self._advance(step, commit)
                        # The block's own keys and the learnt signature: the batcher compares them by identity.
                        sealed = b.add_row_locked(bk, (vals, step, commit, t), self._sig)
                    if sealed:
                        self._after_seal()
                    return
        self._log_slow(data, step, commit)

    def _learn_sig(self, sig: Sig) -> bool:
        """Remember a signature the fast path takes (scalars only) and where its ints and strings are."""
        if not set(sig) <= _FAST_TYPES:
            return False
        self._sig = sig
        self._sig_ints = tuple(i for i, t in enumerate(sig) if t is int)
        self._sig_strs = tuple(i for i, t in enumerate(sig) if t is str)
        self._sig_checks = bool(self._sig_ints or self._sig_strs)
        return True

    def _values_ok(self, vals: tuple[Any, ...]) -> bool:
        for i in self._sig_ints:
            v = vals[i]
            if v < _INT64_MIN or v > _INT64_MAX:
                return False
        if self._sig_strs:
            total = 0
            for i in self._sig_strs:
                v = vals[i]
                total += len(v)
                if not v.isascii() and not text_ok(v):
                    return False  # the slow path raises, naming the key
            return total <= self._fast_str_chars
        return True

    def _strs_ok(self, vals: tuple[Any, ...]) -> bool:
        limit = self._fast_str_chars
        total = 0
        for v in vals:
            if type(v) is str:
                total += len(v)
        return total <= limit

    def _log_slow(self, data: Any, step: Any, commit: Any) -> None:
        if not isinstance(data, Mapping):
            raise SchemaError(f"log() takes a dict, got {type(data).__name__}", code="bad_event")
        step, commit = _check_step_commit(step, commit)
        limits = self.settings.limits
        flat = flatten(data, limits)
        captured = {k: capture(v, k, limits) for k, v in flat.items()}
        t = _time()
        vals = tuple(captured.values())
        scalar = set(map(type, vals)) <= _FAST_TYPES and self._strs_ok(vals)
        if scalar:
            keys = tuple(captured)
            with self._b.lock:
                self._advance(step, commit)
                sealed = self._b.add_row_locked(keys, (vals, step, commit, t), tuple(map(type, vals)))
            if sealed:
                self._after_seal()
            return
        # Arrays, media, lists or long strings: one Log event, encoded now so a size limit fails in the caller.
        raw = encode_event(Log(ts=t, data=captured, step=step, commit=commit), limits)
        blobs: dict[str, bytes] = {}
        collect_blobs(captured, blobs)
        with self._b.lock:
            self._advance(step, commit)
            self._b.add_event_locked(raw, blobs)
        self._after_seal()

    def _advance(self, step: int | None, commit: bool | None) -> None:
        """Move the client-side cursor as the worker will (call with the batcher lock held)."""
        c = self._step
        if step is None:
            if commit is not False:
                self._step = c + 1
            return
        if step < c:
            self._warned_steps += 1
            n = self._warned_steps
            if n <= 10 or n % 1000 == 0:
                logger.warning(
                    "stepline: run %s logged step %d below the current step %d; the call is sent and the worker "
                    "will reject it (non_monotonic_step)%s",
                    self.id, step, c, f" [{n} such calls]" if n > 10 else "",
                )
            return
        self._step = step + 1 if commit else step

    def _after_seal(self) -> None:
        sender = self._sender
        if self._b.sealed_rows >= self._max_pending:
            # Backpressure: the sender is stalled (inside a network call); pack here so memory stays bounded.
            self._core.pump()
        elif sender is not None:
            sender.wake()

    # -- run metadata (W&B's run.group, run.job_type, run.tags, run.notes; settable while the run is live) ------

    @property
    def group(self) -> str | None:
        return self._meta.get("group")

    @group.setter
    def group(self, value: str | None) -> None:
        self._set_meta("group", value)

    @property
    def job_type(self) -> str | None:
        return self._meta.get("job_type")

    @job_type.setter
    def job_type(self, value: str | None) -> None:
        self._set_meta("job_type", value)

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(self._meta.get("tags") or ())

    @tags.setter
    def tags(self, value: Any) -> None:
        self._set_meta("tags", value if value is None or isinstance(value, str) else list(value))

    @property
    def notes(self) -> str | None:
        return self._meta.get("notes")

    @notes.setter
    def notes(self, value: str | None) -> None:
        self._set_meta("notes", value)

    def _set_meta(self, name: str, value: Any) -> None:
        """Validate (SchemaError naming the field), send a ``meta`` event, then remember the new value."""
        data = check_run_meta({name: value})
        self._emit(RunMeta(data=data))
        self._meta.update(data)
        if data[name] is None:
            del self._meta[name]

    def _emit(self, event: Start | Config | Summary | DefineMetric | Finish | RunMeta) -> None:
        raw = encode_event(event, self.settings.limits)  # raises in the caller: nothing is queued
        blobs: dict[str, bytes] = {}
        if isinstance(event, Config | Summary):
            collect_blobs(event.data, blobs)
        with self._b.lock:
            self._b.add_event_locked(raw, blobs)

    def define_metric(
        self,
        name: str,
        step_metric: str | None = None,
        step_sync: bool | None = None,
        hidden: bool | None = None,
        summary: str | None = None,
        goal: str | None = None,
        **_ignored: Any,
    ) -> None:
        """Declare a metric (``name`` may end in ``*``); invalid arguments raise :class:`SchemaError`."""
        ev = DefineMetric(
            name=name,
            step_metric=step_metric,
            summary=summary,
            hidden=bool(hidden),
            goal=goal,
            step_sync=True if step_sync is None else bool(step_sync),
        )
        decode_event(encode_event(ev, self.settings.limits), self.settings.limits)  # the worker's own checks
        self._emit(ev)

    def watch(self, models: Any, criterion: Any = None, log: str | None = "gradients", log_freq: int = 1000,
              idx: int | None = None, log_graph: bool = False) -> list[Any]:
        """W&B's ``run.watch``: gradient and/or parameter histograms of PyTorch models (``ingest.torch_watch``)."""
        if self.finished:
            raise SteplineError(f"run {self.id} is finished; watch() after finish() is not allowed")
        from .torch_watch import Watcher  # imports torch only when called

        if self._watcher is None:
            self._watcher = Watcher(self)
        return self._watcher.watch(models, criterion, log=log, log_freq=log_freq, idx=idx, log_graph=log_graph)

    def unwatch(self, models: Any = None) -> None:
        """W&B's ``run.unwatch``: remove the hooks of ``models`` (all watched models when ``None``)."""
        if self._watcher is not None:
            self._watcher.unwatch(models)

    # -- lifecycle --------------------------------------------------------------------------------------------

    def _start_thread_sender(self) -> None:
        self._sender = ThreadSender(self._core)

    @property
    def pending_frames(self) -> int:
        """Frames produced and not yet acknowledged by Redis (memory and spill file)."""
        return len(self._core.outbox)

    @property
    def sent_frames(self) -> int:
        """Frames acknowledged by Redis so far."""
        return self._core.sent_frames

    @property
    def sent_bytes(self) -> int:
        """Bytes of frames acknowledged by Redis so far."""
        return self._core.sent_bytes

    def _close_log_side(self, exit_code: int) -> bool:
        if self.finished:
            return False
        if self._watcher is not None:  # watch()'s hooks go with the run (W&B: hooks removed at finish)
            self._watcher.unwatch()
        self._emit(Finish(ts=_time(), exit_code=int(exit_code)))
        self.finished = True
        return True

    def _result(self, refused: int = 0) -> FinishResult:
        path = self._core.outbox.close()
        unsent = len(self._core.outbox)
        dropped = self._b.dropped_calls
        res = FinishResult(sent_frames=self._core.sent_frames, unsent_frames=unsent, spill_path=path,
                           dropped_calls=dropped, refused_frames=refused)
        if refused:
            logger.warning("stepline: run %s finished with %d frames refused by the gateway (see the errors above)",
                           self.id, refused)
        if dropped:
            logger.warning("stepline: run %s finished with %d log() calls dropped because they could not be encoded "
                           "(see the run's warnings)", self.id, dropped)
        if unsent:
            logger.warning(
                "stepline: run %s finished with %d frames not acknowledged by Redis; they are kept in %s "
                "(resend with `stepline sync %s`)", self.id, unsent, path, path,
            )
        self.result = res
        _forget(self)
        return res

    def finish(self, exit_code: int = 0, timeout: float | None = None, quiet: bool | None = None,
               wait: bool = True) -> FinishResult:
        """Send ``Finish``, flush, wait up to ``timeout`` seconds (default ``settings.finish_timeout_s``), close;
        then, with ``wait``, wait up to ``settings.commit_timeout_s`` for a worker to commit the run.

        Returns what was achieved; frames still unsent are in the spill file named in the result.
        """
        if not self._close_log_side(exit_code):
            return self.result or FinishResult(self._core.sent_frames, len(self._core.outbox), None,
                                               self._b.dropped_calls)
        t = self.settings.finish_timeout_s if timeout is None else timeout
        sender = self._sender
        if isinstance(sender, ThreadSender):
            sender.close(t)
        elif sender is None:
            self._core.pump()
        self._sender = None
        res = self._result(sender.refused_frames if sender is not None else 0)
        target = self._wait_target(res) if wait else None
        return self._committed(res, None if target is None else self._wait_committed(target))

    def _wait_committed(self, target: str) -> commits.Committed:
        """Block until a worker's commit reaches stream id ``target`` (over Redis, or asking the gateway)."""
        timeout = self.settings.commit_timeout_s
        if self.settings.url is not None:
            http = HttpTransport(self.settings, self.project, self.id)
            try:
                ok, reason, rows, rejected = http.wait_committed(target, timeout)
            finally:
                http.close()
            return commits.Committed(ok, reason, rows, rejected)
        client = sync_client(self.settings)
        try:
            return commits.wait_sync(client, self.settings, self.partition, self.project, self.id, target, timeout)
        finally:
            client.close()

    @property
    def url(self) -> str | None:
        """The run's page on the web page of the gateway that serves it, when one is known."""
        base = self.settings.page_url or self.settings.url
        if not base:
            return None
        return f"{base.rstrip('/')}/#/p/{quote(self.project, safe='')}/r/{quote(self.id, safe='')}"

    def _say(self, text: str) -> None:
        if not self.settings.silent:
            print(f"stepline: {text}", file=sys.stderr, flush=True)

    def _announce_start(self, where: str) -> None:
        page = f"; view it at {self.url}" if self.url else ""
        self._say(f"run {self.project}/{self.id} logging to {where}{page}")

    def _wait_target(self, res: FinishResult) -> str | None:
        """The stream id to wait for, or None when there is nothing to wait for (or no way to)."""
        if res.unsent_frames:
            return None
        return self._core.last_id

    def _committed(self, res: FinishResult, done: commits.Committed | None) -> FinishResult:
        if done is not None:
            res = _replace(res, committed=done.ok, rows=done.rows, rejected=done.rejected)
            if not done.ok:
                logger.warning("stepline: run %s/%s was sent, but %s: it becomes readable once a worker commits it "
                               "(finish(wait=False) skips this wait)", self.project, self.id, done.reason)
        self.result = res
        if res.committed or (done is None and res.ok):
            counts = ""
            if res.rows is not None:
                counts = f": {res.rows} row{'s' if res.rows != 1 else ''}" + (
                    f", {res.rejected} call{'s' if res.rejected != 1 else ''} rejected (run.rejections() says why)"
                    if res.rejected else "")
            page = f"; view it at {self.url}" if self.url else ""
            self._say(f"run {self.project}/{self.id} finished{counts}{page}")
        return res

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.project}/{self.id} step={self._step} producer={self.producer}>"


class AsyncRun(Run):
    """A run for asyncio programs: ``log()`` is the same cheap sync call; flushing and finishing are awaited.

    Create it with ``await ingest.async_init(...)``. The sender is an asyncio task of the loop it was created in,
    using ``redis.asyncio``; use ``await run.aflush()`` and ``await run.afinish()`` (or ``async with``).
    """

    def _start_async_sender(self) -> None:
        self._sender = AsyncSender(self._core)

    # ``timeout`` is not a cancellation: past it, what is unsent stays in the outbox / spill file and is reported.
    async def aflush(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Send everything logged so far; True when all of it is acknowledged within ``timeout``."""
        sender = self._sender
        if not isinstance(sender, AsyncSender):
            return len(self._core.outbox) == 0
        return await sender.flush(self.settings.finish_timeout_s if timeout is None else timeout)

    async def afinish(self, exit_code: int = 0, timeout: float | None = None,  # noqa: ASYNC109
                      wait: bool = True) -> FinishResult:
        """:meth:`Run.finish` for asyncio programs (the commit wait is an awaited blocking read)."""
        if not self._close_log_side(exit_code):
            return self.result or FinishResult(self._core.sent_frames, len(self._core.outbox), None,
                                               self._b.dropped_calls)
        sender = self._sender
        self._sender = None
        if isinstance(sender, AsyncSender):
            await sender.close(self.settings.finish_timeout_s if timeout is None else timeout)
        refused = sender.refused_frames if sender is not None else 0
        res = await asyncio.to_thread(self._result, refused)
        target = self._wait_target(res) if wait else None
        done = None
        if target is not None and self.settings.url is not None:
            done = await asyncio.to_thread(self._wait_committed, target)  # (http.client: off the loop)
        elif target is not None:
            client = async_client(self.settings)
            try:
                done = await commits.wait_async(client, self.settings, self.partition, self.project, self.id,
                                                target, self.settings.commit_timeout_s)
            finally:
                await client.aclose()
        return self._committed(res, done)

    def finish(self, exit_code: int = 0, timeout: float | None = None, quiet: bool | None = None,
               wait: bool = True) -> FinishResult:
        """Outside a running loop (e.g. at exit): send with a sync client, then spill what is left (no commit
        wait: at exit nobody reads the result)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise SteplineError("AsyncRun.finish() inside a running event loop: use `await run.afinish()`")
        if not self._close_log_side(exit_code):
            return self.result or FinishResult(self._core.sent_frames, len(self._core.outbox), None,
                                               self._b.dropped_calls)
        refused = self._sender.refused_frames if self._sender is not None else 0
        self._sender = None  # its loop is gone or not ours to drive
        t = self.settings.finish_timeout_s if timeout is None else timeout
        from .sender import sync_transport

        client = sync_transport(self.settings, self._b)
        try:
            deadline = time.monotonic() + t
            while time.monotonic() < deadline:
                self._core.pump()
                self._core.drain_sync(client, deadline)
                if len(self._core.outbox) == 0:
                    break
                time.sleep(max(0.01, min(0.5, self._core.next_attempt - time.monotonic())))
        finally:
            client.close()
        return self._result(refused + int(getattr(client, "refused_frames", 0)))

    async def __aenter__(self) -> AsyncRun:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.afinish(exit_code=0 if exc_type is None else 1)


# -- module state: the current run, every unfinished run (for atexit) --------------------------------------------

_lock = threading.Lock()
_current: Run | None = None
_live: dict[int, Run] = {}


def current_run() -> Run | None:
    return _current


def _remember(run: Run) -> None:
    global _current
    with _lock:
        _live[id(run)] = run
        _current = run


def _forget(run: Run) -> None:
    global _current
    with _lock:
        _live.pop(id(run), None)
        if _current is run:
            _current = None


def _finish_all() -> None:
    """``atexit``: finish every unfinished run (exit code 0; W&B does the same)."""
    with _lock:
        runs = list(_live.values())
    for r in runs:
        try:
            r.finish()
        except Exception:
            logger.exception("stepline: finishing run %s at exit failed", r.id)


atexit.register(_finish_all)


def _as_mapping(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        out = dict(config)
    elif hasattr(config, "__dict__"):  # argparse.Namespace and friends, as W&B accepts
        out = dict(vars(config))
    else:
        raise SchemaError(f"config must be a dict, got {type(config).__name__}", code="bad_event")
    for k in out:
        if type(k) is not str or not k:
            raise SchemaError(f"config keys must be non-empty str, got {k!r:.60}", code="bad_key")
        check_text(k, "a config key", k)
    return out


def _random_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def _resume_mode(resume: Any) -> str | None:
    if resume is None or resume is False:
        return None
    if resume is True:
        return "allow"
    if isinstance(resume, str) and resume in _RESUME:
        return resume
    raise SettingsError(f"resume must be None, a bool or one of {sorted(_RESUME)}, got {resume!r}")


def _build(
    cls: type[Run],
    project: str | None,
    name: str | None,
    id: str | None,
    config: Any,
    resume: Any,
    redis_url: str | None,
    url: str | None,
    api_key: str | None,
    settings: ClientSettings | Mapping[str, Any] | None,
    namespace: str | None,
    data_dir: str | Path | None,
    wandb_kwargs: dict[str, Any],
) -> Run:
    meta = {k: wandb_kwargs.pop(k) for k in META_FIELDS if k in wandb_kwargs}
    unknown = set(wandb_kwargs) - _WANDB_IGNORED
    if unknown:
        raise TypeError(f"init() got unexpected keyword arguments {sorted(unknown)}")
    if wandb_kwargs:
        logger.debug("stepline: ignoring W&B init arguments %s", sorted(wandb_kwargs))
    explicit = {"redis_url": redis_url, "namespace": namespace, "data_dir": Path(data_dir) if data_dir else None,
                "url": url, "api_key": api_key}
    stack = None
    if isinstance(settings, ClientSettings):
        s = settings.replace(**explicit)
    else:
        s, stack = ClientSettings.discover(**{**dict(settings or {}), **{k: v for k, v in explicit.items() if v}})
    s = s.replace(data_dir=s.data_dir.absolute())
    run = cls(
        settings=s,
        project=project or "uncategorized",
        run_id=id or _random_id(),
        name=name,
        config=_as_mapping(config),
        resume=_resume_mode(resume),
        meta=meta,
    )
    if s.url is not None:
        where = f"the gateway {s.url}"
    else:
        where = s.redis_url + (f" (namespace {s.namespace})" if s.namespace != "sl" else "")
        where += " (the local `stepline up`)" if stack is not None else ""
    run._announce_start(where)
    return run


def init(
    project: str | None = None,
    name: str | None = None,
    id: str | None = None,
    config: Any = None,
    resume: Any = None,
    redis_url: str | None = None,
    url: str | None = None,
    settings: ClientSettings | Mapping[str, Any] | None = None,
    namespace: str | None = None,
    data_dir: str | Path | None = None,
    api_key: str | None = None,
    **wandb_kwargs: Any,
) -> Run:
    """Start a run and make it the current one (``ingest.run``). Sends ``Start``; never blocks on the network.

    Settings come from ``STEPLINE_*`` variables (read once, here), then ``settings`` (a :class:`ClientSettings`
    or a mapping of overrides), then the explicit ``redis_url``/``namespace``/``data_dir`` arguments. With ``url``
    (or ``STEPLINE_URL``) and ``api_key`` (or ``STEPLINE_API_KEY``) frames go to the HTTP gateway instead of Redis,
    with the same guarantees (:mod:`ingest.http`). When neither an argument nor a variable says where frames go
    (and ``settings`` is not a :class:`ClientSettings`), a running local ``stepline up`` does
    (:meth:`ClientSettings.discover`). Prints one line (stderr) saying where the run goes and its page when known.
    Several runs may be live at once (e.g. one per thread); the last one started is the current one.
    """
    run = _build(Run, project, name, id, config, resume, redis_url, url, api_key, settings, namespace,
                 data_dir, wandb_kwargs)
    run._start_thread_sender()
    _remember(run)
    return run


async def async_init(
    project: str | None = None,
    name: str | None = None,
    id: str | None = None,
    config: Any = None,
    resume: Any = None,
    redis_url: str | None = None,
    url: str | None = None,
    settings: ClientSettings | Mapping[str, Any] | None = None,
    namespace: str | None = None,
    data_dir: str | Path | None = None,
    api_key: str | None = None,
    **wandb_kwargs: Any,
) -> AsyncRun:
    """Like :func:`init` for asyncio programs: the sender is a task of the running loop (``redis.asyncio``)."""
    run = _build(AsyncRun, project, name, id, config, resume, redis_url, url, api_key, settings, namespace,
                 data_dir, wandb_kwargs)
    assert isinstance(run, AsyncRun)
    run._start_async_sender()
    _remember(run)
    return run


def _require() -> Run:
    r = _current
    if r is None:
        raise SteplineError("call ingest.init() first")
    return r


def log(data: Mapping[str, Any], step: int | None = None, commit: bool | None = None) -> None:
    """``ingest.log``: log to the current run."""
    _require().log(data, step=step, commit=commit)


def define_metric(name: str, step_metric: str | None = None, step_sync: bool | None = None,
                  hidden: bool | None = None, summary: str | None = None, goal: str | None = None,
                  **kwargs: Any) -> None:
    """``ingest.define_metric``: declare a metric on the current run."""
    _require().define_metric(name, step_metric=step_metric, step_sync=step_sync, hidden=hidden,
                             summary=summary, goal=goal, **kwargs)


def watch(models: Any, criterion: Any = None, log: str | None = "gradients", log_freq: int = 1000,
          idx: int | None = None, log_graph: bool = False) -> list[Any]:
    """``ingest.watch``: watch PyTorch models on the current run (:meth:`Run.watch`)."""
    return _require().watch(models, criterion, log=log, log_freq=log_freq, idx=idx, log_graph=log_graph)


def unwatch(models: Any = None) -> None:
    """``ingest.unwatch``: remove watch hooks on the current run (a no-op without one)."""
    r = _current
    if r is not None:
        r.unwatch(models)


def finish(exit_code: int = 0, timeout: float | None = None, quiet: bool | None = None,
           wait: bool = True) -> FinishResult | None:
    """``ingest.finish``: finish the current run (a no-op without one, as in W&B)."""
    r = _current
    if r is None:
        return None
    return r.finish(exit_code=exit_code, timeout=timeout, wait=wait)
