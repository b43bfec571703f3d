"""The README's quick start, exactly as written: ``stepline up`` in a fresh folder, the 30-second example run
unchanged in another process with nothing configured, and it prints the history, every row of it, every time
(``run.finish()`` returns once a worker has committed the run)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.up_stack import ROOT, UpStack

from history import Api

pytestmark = pytest.mark.integration


def readme_example() -> str:
    """The python block under the README's "30-second example" heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## 30-second example", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "the README has no python block under '## 30-second example'"
    return m.group(1)


def test_the_readme_example_is_examples_quickstart() -> None:
    """examples/quickstart.py is the README's example (plus its docstring), so both stay the same."""
    body = (ROOT / "examples" / "quickstart.py").read_text().split('"""', 2)[2].lstrip("\n")
    assert body == readme_example()


def printed_steps(stdout: str) -> list[int]:
    """The ``_step`` column of the DataFrame the example prints (pandas abbreviates the middle rows)."""
    return [int(m.group(1)) for m in re.finditer(r"^\s*\d+\s+(\d+)\s+[0-9.e-]+\s*$", stdout, re.M)]


def test_readme_example_against_stepline_up(up: UpStack, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    res = up.run(["python", str(script)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    # init says where the run goes and links its page; finish says it again with the row count.
    m = re.search(r"stepline: run mnist/(\w+) logging to (\S+) \(the local `stepline up`\); view it at (\S+)",
                  res.stderr)
    assert m, res.stderr
    run_id, where, page = m.groups()
    assert where == up.record.redis_url
    assert page == f"{up.record.gateway_url}/#/p/mnist/r/{run_id}"
    assert f"stepline: run mnist/{run_id} finished: 1000 rows; view it at {page}" in res.stderr
    # It printed the history: 100 sampled rows from step 0 to step 999.
    assert "[100 rows x 2 columns]" in res.stdout, res.stdout
    steps = printed_steps(res.stdout)
    assert steps[0] == 0 and steps[-1] == 999, res.stdout
    with Api(data_dir=up.record.data_dir) as api:
        r = api.run(f"mnist/{run_id}")
        assert (r.rows, r.state) == (1000, "finished")
        assert r.history(keys=["train/loss"], samples=None, pandas=False)["_step"].tolist() == list(range(1000))


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 20 processes on a loaded 2-core CI machine; only a hang should hit this
def test_readme_example_20_times_never_misses_a_row(up: UpStack, tmp_path: Path) -> None:
    """Reading right after finish() is not a race: 20 runs in a row, each prints its complete sample."""
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    for i in range(20):
        res = up.run(["python", str(script)], cwd=tmp_path)
        assert res.returncode == 0, f"run {i}: {res.stderr}"
        assert "[100 rows x 2 columns]" in res.stdout, f"run {i} missed rows:\n{res.stdout}\n{res.stderr}"
        steps = printed_steps(res.stdout)
        assert steps[0] == 0 and steps[-1] == 999, f"run {i}:\n{res.stdout}"
        assert "finished: 1000 rows" in res.stderr, f"run {i}: {res.stderr}"


def test_stepline_commands_find_the_stack(up: UpStack, tmp_path: Path) -> None:
    """`stepline history` and `stepline status`, run in another folder with nothing configured, use the stack."""
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    res = up.run(["python", str(script)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    run_id = re.search(r"stepline: run mnist/(\w+) finished", res.stderr).group(1)  # type: ignore[union-attr]
    hist = up.run(["stepline", "history", f"mnist/{run_id}", "--keys", "train/loss", "--format", "csv"],
                  cwd=tmp_path)
    assert hist.returncode == 0, hist.stderr
    lines = hist.stdout.strip().splitlines()
    assert lines[0].split(",")[:2] == ["_step", "train/loss"] and len(lines) == 1001
    status = up.run(["stepline", "status", "--format", "json"], cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert '"workers"' in status.stdout and up.record.namespace


def test_stepline_alone_says_what_it_can_do(up: UpStack, tmp_path: Path) -> None:
    res = up.run(["stepline"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "stepline up" in res.stdout and "stepline history" in res.stdout
    assert len(res.stdout.strip().splitlines()) <= 15
    assert f"A stepline up is running here (pid {up.record.pid}): {up.record.gateway_url}/" in res.stdout


def test_a_second_up_is_refused_while_one_runs(up: UpStack, tmp_path: Path) -> None:
    res = up.run(["stepline", "up"], cwd=tmp_path, timeout=120)
    assert res.returncode == 1
    assert res.stderr.startswith("stepline: error: a stepline up is already running"), res.stderr


def test_finish_over_http_waits_for_the_commit(up: UpStack, tmp_path: Path) -> None:
    """With the HTTP transport too, finish() returns once the run is committed (the gateway's committed route)."""
    script = tmp_path / "over_http.py"
    script.write_text(
        "import ingest\n"
        f"run = ingest.init(project='http', url={up.record.gateway_url!r})\n"
        "for s in range(300):\n"
        "    run.log({'loss': 1 / (s + 1)}, step=s)\n"
        "run.log({'loss': 0.0}, step=2)\n"
        "res = run.finish()\n"
        "print('finished', res.committed, res.rows, res.rejected)\n"
        "print('read', ingest.Api().run(f'http/{run.id}').rows)\n"
    )
    res = up.run(["python", str(script)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "finished True 300 1" in res.stdout.splitlines(), res.stdout + res.stderr
    assert "read 300" in res.stdout.splitlines()
    assert f"logging to the gateway {up.record.gateway_url}" in res.stderr


def test_the_committed_route_refuses_a_bad_id(up: UpStack) -> None:
    import json
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{up.record.gateway_url}/api/v1/projects/p/runs/r/committed?id=abc", timeout=30)
    assert e.value.code == 400
    assert json.loads(e.value.read())["error"] == "bad_param"
    e.value.close()
