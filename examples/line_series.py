"""Several named lines on one chart: `wandb.plot.line_series`, logged once at the end of a run (W&B's custom chart).
"""

import math

import ingest as wandb

run = wandb.init(project="examples", name="line-series")
xs = list(range(50))
for step in xs:
    run.log({"loss": math.exp(-step / 10)}, step=step)
run.log({"schedules": wandb.plot.line_series(
    xs=xs,
    ys=[
        [math.exp(-x / 10) for x in xs],
        [1 - math.exp(-x / 10) for x in xs],
        [0.5 + 0.5 * math.cos(x / 5) for x in xs],
    ],
    keys=["decay", "warmup", "cosine"],
    title="learning-rate schedules",
    xname="step",
)})
run.finish()

api = wandb.Api()
chart = api.run(f"examples/{run.id}").history(keys=["schedules"], samples=None, pandas=False)["schedules"][-1]
print("chart:", chart.kind, chart.payload["kind"], repr(chart.payload["title"]))
print("lines:", chart.payload["keys"], "of", len(chart.payload["xs"][0]), "points")
