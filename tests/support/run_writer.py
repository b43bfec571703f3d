"""What a worker does for one run, driven by hand (the real aligner, segment writer, merge and fenced commit), so a
test decides where segments begin and end and when they are compacted."""

from __future__ import annotations

from typing import Any

from schemas import Finish, Start
from schemas.objects import ObjectStore
from workers.align import Row, RowBatch, RunAligner
from workers.metastore import Commit, MetaStore, RejectionRow, RunUpdate, SegmentRef
from workers.segments import merge_tables, read_table, rows_to_table, write_table

PROJECT = "proj"


class RunWriter:
    """Apply events to one run's aligner, then commit the rows made since the last commit as one segment."""

    def __init__(self, store: MetaStore, objects: ObjectStore, run: str, partition: int = 0,
                 project: str = PROJECT) -> None:
        self.store, self.objects, self.run, self.partition, self.project = store, objects, run, partition, project
        self.epoch, _ = store.take_partition(partition, f"test-{run}")
        self.aligner = RunAligner()
        self.offset = 0
        self.ts = 1000.0

    def start(self, **config: Any) -> RunWriter:
        self.aligner.apply(Start(ts=self.ts, name=f"name-{self.run}", config=config))
        return self

    def log(self, data: dict[str, Any], step: int | None = None, commit: bool | None = None) -> RunWriter:
        self.ts += 1.0
        self.aligner.apply_log(self.ts, data, step, commit)
        return self

    def finish(self, exit_code: int = 0) -> RunWriter:
        self.ts += 1.0
        self.aligner.apply(Finish(ts=self.ts, exit_code=exit_code))
        return self

    def prepare(self, level: int = 0) -> Commit:
        """Write the rows made since the last commit as one segment; return the commit that references it."""
        rows, rejected = self.aligner.take()
        self.offset += 1
        c = Commit(partition=self.partition, epoch=self.epoch, offset=f"{self.offset}-0")
        if rows:
            table = rows_to_table(list[Row | RowBatch](rows), self.aligner.displays)
            rel, size = write_table(self.objects, self.project, self.run, table, level)
            c.segments.append(SegmentRef(self.project, self.run, level, rows[0].step, rows[-1].step, len(rows), size,
                                         rel))
        c.rejections.extend(
            RejectionRow(self.project, self.run, f"{self.offset}-{i}", r.reason, r.step, r.cursor, r.message, r.ts)
            for i, r in enumerate(rejected)
        )
        a = self.aligner
        c.runs.append(RunUpdate(
            project=self.project, run=self.run, partition=self.partition, name=a.name, state=a.state,
            created_at=a.created_at, updated_at=a.updated_at, last_step=a.last_step, rows=a.rows,
            rejected=sum(a.rejected.values()), info=a.info(), state_blob=a.dump(),
        ))
        return c

    def commit(self) -> RunWriter:
        self.store.commit(self.prepare())
        return self

    def compact(self) -> RunWriter:
        """Merge every segment of the run into one of the next level, as the workers' compaction does
        (``workers.segments.merge_tables``, then the fenced swap)."""
        old = self.store.segments_of(self.project, self.run)
        merged = merge_tables([read_table(self.objects, s["file"]) for s in old])
        level = max(int(s["level"]) for s in old) + 1
        rel, size = write_table(self.objects, self.project, self.run, merged, level=level)
        steps = merged.column("_step")
        self.store.swap_segments(self.partition, self.epoch, [int(s["id"]) for s in old], SegmentRef(
            self.project, self.run, level, int(steps[0].as_py()), int(steps[-1].as_py()), merged.num_rows, size, rel))
        return self
