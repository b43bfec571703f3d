"""A table with an HTML column and a number column, and an HTML report on its own: `wandb.Table`, `wandb.Html`."""

import ingest as wandb

run = wandb.init(project="examples", name="table-html")
table = wandb.Table(columns=["id", "prediction", "confidence", "explanation"])
for i, (pred, conf) in enumerate([("cat", 0.91), ("dog", 0.65), ("cat", 0.55)]):
    table.add_data(i, pred, conf, wandb.Html(f"<p>sample <b>{i}</b>: <i>{pred}</i> at {conf:.0%}</p>"))
run.log({"predictions": table, "report": wandb.Html("<h1>Evaluation</h1><p>3 samples, 2 classes.</p>")})
run.finish()

api = wandb.Api()
row = next(iter(api.run(f"examples/{run.id}").scan_history(keys=["predictions", "report"])))
t = row["predictions"]
print("table columns:", t.payload["columns"])
print("table rows:", len(t.payload["data"]), "| html cells:", sum(1 for row in t.payload["data"] for c in row
                                                         if getattr(c, "kind", None) == "html"))
print("report:", row["report"].kind, row["report"].payload["size"], "bytes")
