"""Hugging Face Transformers with :class:`ingest.integrations.transformers.SteplineCallback`: a tiny BERT built from
a config (nothing downloaded) trained on the CPU by the real ``Trainer`` against a real Redis and worker.

A second callback records what the Trainer reported (every ``on_log`` with its ``global_step``), so the history is
checked against it: W&B's key names, one row per log call, ``train/global_step``, the config and the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from support.compat_stack import Stack
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from ingest.integrations.transformers import SteplineCallback, rewrite_logs

pytestmark = pytest.mark.integration

SINGLE = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos"}


class Recorder(TrainerCallback):  # type: ignore[misc]
    def __init__(self) -> None:
        self.logs: list[tuple[int, dict[str, Any]]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        self.logs.append((state.global_step, dict(logs or {})))

    def on_predict(self, args: Any, state: Any, control: Any, metrics: dict[str, Any], **kw: Any) -> None:
        self.predicted = dict(metrics)


class Data(torch.utils.data.Dataset):  # type: ignore[misc, name-defined]
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 30, (n, 8), generator=g)
        self.labels = (self.ids[:, 0] % 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def tiny_bert() -> Any:
    config = BertConfig(
        vocab_size=32,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=2,
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config)


def test_train_evaluate_predict_write_what_the_trainer_reported(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingest import torch_watch

    # watch() counts watched models per process (W&B's key prefix): leave the count as this test found it.
    monkeypatch.setattr(torch_watch, "_global_watch_idx", torch_watch._global_watch_idx)
    model = tiny_bert()
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        run_name="tiny-bert",
        report_to="none",
        use_cpu=True,
        num_train_epochs=2,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        logging_steps=1,
        eval_strategy="epoch",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    ours, rec = SteplineCallback(project="hf", id="bert1", watch="gradients", watch_log_freq=4), Recorder()
    trainer = Trainer(model=model, args=args, train_dataset=Data(16, 1), eval_dataset=Data(8, 2), callbacks=[ours, rec])
    trainer.train()
    assert ours.run is not None and ours.run.finished  # train() ends the run it started
    trainer.evaluate()  # resumes it
    assert ours.run is not None and not ours.run.finished
    trainer.predict(Data(8, 3))
    ours.run.finish()

    view = stack.finished("hf/bert1")
    assert view.state == "finished"
    assert view.name == "tiny-bert"
    # 16 samples / 4 per batch x 2 epochs: loss at steps 1..8, eval at 4 and 8, the end-of-train numbers at 8,
    # then evaluate() at 8.
    steps = [s for s, _ in rec.logs]
    assert steps == [1, 2, 3, 4, 4, 5, 6, 7, 8, 8, 8, 8]
    expected = [
        {**rewrite_logs({k: v for k, v in logs.items() if k not in SINGLE}), "train/global_step": s}
        for s, logs in rec.logs
    ]
    # predict(): test/loss, test/runtime, ... logged without the step key; step_sync fills in its last value.
    expected.append({**rewrite_logs(rec.predicted), "train/global_step": 8})
    assert set(rec.predicted) >= {"test_loss", "test_runtime"}
    rows = [{k: v for k, v in r.items() if not k.startswith("_") and v is not None} for r in view.scan_history()]
    # watch(log="gradients") every 4th backward: the histograms join the row of steps 4 and 8's training loss.
    grads = [{k for k in r if k.startswith("gradients/")} for r in rows]
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert [i for i, g in enumerate(grads) if g] == [3, 8]
    assert all(len(grads[i]) == len(names) and all(any(k.endswith(n) for n in names) for k in grads[i]) for i in (3, 8))
    assert rows[3]["gradients/" + sorted(grads[3])[0].split("/", 1)[1]].kind == "histogram"
    rows = [{k: v for k, v in r.items() if not k.startswith("gradients/")} for r in rows]
    assert rows == expected
    assert "train/loss" in rows[0] and "eval/loss" in rows[4] and "train/epoch" in rows[0]
    # The summary: the end-of-training numbers under their own names, else the last value of each key.
    final = rec.logs[-2][1]
    assert set(final) >= SINGLE
    for k in SINGLE:
        assert view.summary[k] == final[k]
    assert view.summary["eval/loss"] == rec.logs[-1][1]["eval_loss"]
    assert view.summary["train/global_step"] == 8
    # W&B's axis and config: the model's config, then the arguments, then the parameter count.
    assert {m["name"]: m["step_metric"] for m in view.metrics} == {"train/global_step": None, "*": "train/global_step"}
    cfg = view.config
    assert cfg["hidden_size"] == 8 and cfg["num_hidden_layers"] == 2
    assert cfg["id2label"] == {"0": "LABEL_0", "1": "LABEL_1"}  # int keys become str, as in W&B's config
    assert cfg["learning_rate"] == 1e-3 and cfg["per_device_train_batch_size"] == 4
    assert cfg["run_name"] == "tiny-bert" and cfg["output_dir"] == str(tmp_path / "out")
    assert cfg["model/num_parameters"] == model.num_parameters()
