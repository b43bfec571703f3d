"""Reading history back, as with W&B's public API: list a project's runs, a run's summary and config, sampled and
full history (pandas when installed), a streamed scan, and the rejected calls with their reasons.
"""

import ingest as wandb

run = wandb.init(project="examples", name="read-history", config={"batch_size": 64})
for step in range(500):
    run.log({"loss": 1 / (step + 1), "acc": step / 500}, step=step)
run.log({"loss": 9.9}, step=3)   # a step below the cursor: rejected by the worker, with the reason kept
run.summary["best_acc"] = 0.998
run.finish()

api = wandb.Api()
print("runs in project:", [r.id for r in api.runs("examples")][:5])
r = api.run(f"examples/{run.id}")
print("state:", r.state, "| rows:", r.rows, "| config:", dict(r.config))
print("summary best_acc:", r.summary["best_acc"])
sampled = r.history(keys=["loss"], samples=50, pandas=False)
print("sampled rows:", len(sampled["_step"]), "first/last step:", sampled["_step"][0], sampled["_step"][-1])
print("streamed rows:", sum(1 for _ in r.scan_history(keys=["acc"])))
print("rejected:", r.rejected, [x["reason"] for x in r.rejections()])
