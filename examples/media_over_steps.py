"""Images over steps (W&B's media panel with a step slider): one generated image every 10 steps, with a caption."""

import numpy as np

import ingest as wandb

run = wandb.init(project="examples", name="media-over-steps")
size = 32
yy, xx = np.mgrid[0:size, 0:size]
for step in range(50):
    run.log({"loss": 1 / (step + 1)}, step=step)
    if step % 10 == 0:
        r = np.sqrt((xx - size / 2) ** 2 + (yy - size / 2) ** 2)
        img = (np.sin(r / 2 - step / 5) + 1) / 2  # floats in [0, 1]: scaled to 8 bits
        rgb = np.stack([img, img * 0.5, 1 - img], axis=-1)
        run.log({"samples": wandb.Image(rgb, caption=f"step {step}")}, step=step)
run.finish()

api = wandb.Api()
rows = [r for r in api.run(f"examples/{run.id}").scan_history(keys=["samples"]) if r.get("samples") is not None]
print("images at steps:", [r["_step"] for r in rows])
