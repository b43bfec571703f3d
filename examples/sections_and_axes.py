"""Panel sections and a custom x-axis, as in W&B: keys `train/...` and `val/...` become two sections of the page,
and `define_metric` plots the `val/*` metrics against `epoch` instead of the step. The summary keeps the best
validation accuracy (`summary="max"`) next to the values set by hand.
"""

import math

import ingest as wandb

run = wandb.init(project="examples", name="sections-and-axes", config={"lr": 3e-4, "epochs": 5})
run.define_metric("epoch")
run.define_metric("val/*", step_metric="epoch")
run.define_metric("val/acc", summary="max")
step = 0
for epoch in range(run.config["epochs"]):
    for _ in range(100):
        run.log({"train/loss": math.exp(-step / 200), "train/lr": run.config.lr})
        step += 1
    run.log({"epoch": epoch, "val/loss": 1 / (epoch + 1), "val/acc": 0.5 + epoch / 10}, commit=False)
run.summary["note"] = "validation once per epoch"
run.finish()

api = wandb.Api()
r = api.run(f"examples/{run.id}")
val = r.history(keys=["val/acc"], x_axis="epoch", samples=None, pandas=False)
print("epochs:", val["epoch"].tolist())
print("val/acc:", [round(v, 3) for v in val["val/acc"].tolist()])
print("summary val/acc:", r.summary["val/acc"], "| note:", r.summary["note"])
print("sections:", sorted({k.split("/")[0] for k in r.summary if "/" in k}))
