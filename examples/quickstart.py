"""The README's 30-second example: log a run, then read its history back.

Start a stack first (`stepline up` in another terminal); this script finds it with nothing to configure.
"""

import ingest as wandb          # the W&B surface: init, log, define_metric, config, summary, finish

run = wandb.init(project="mnist", config={"lr": 1e-3})
run.define_metric("val/*", step_metric="epoch")
for step in range(1000):
    run.log({"train/loss": 1 / (step + 1), "train/acc": step / 1000}, step=step)
    if step % 100 == 99:
        run.log({"val/loss": 0.5, "epoch": step // 100, "weights": wandb.Histogram([0.1, 0.2, 0.2])}, step=step)
run.finish()                    # returns once a worker has committed the run: reading it now sees every row

api = wandb.Api()
print(api.run(f"mnist/{run.id}").history(keys=["train/loss"], samples=100))
