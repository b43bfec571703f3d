"""Lists logged as values (each row holds the list it was given) and the same numbers as a histogram, over steps:
W&B's `run.log({"preds": [...]})` and `wandb.Histogram(values)` / `np_histogram=`.
"""

import numpy as np

import ingest as wandb

rng = np.random.default_rng(0)
run = wandb.init(project="examples", name="lists-and-histograms")
for step in range(20):
    sample = rng.normal(loc=step / 10, scale=1.0, size=256)
    run.log({
        "top3": sorted(sample.tolist(), reverse=True)[:3],          # a list under a key
        "weights": wandb.Histogram(sample, num_bins=32),            # its distribution
        "grads": wandb.Histogram(np_histogram=np.histogram(sample * 0.01, bins=16)),
        "mean": float(sample.mean()),
    }, step=step)
run.finish()

api = wandb.Api()
rows = list(api.run(f"examples/{run.id}").scan_history(keys=["top3", "weights"]))
print("rows:", len(rows))
print("first top3 has", len(rows[0]["top3"]), "values")
hist = rows[-1]["weights"]  # media read back: kind and payload (a histogram's bin edges and counts)
print("last histogram:", hist.kind, len(hist.payload["bins"]) - 1, "bins,", int(sum(hist.payload["values"])), "values")
