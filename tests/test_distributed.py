"""Scale-out: the same flow with the tuning phases under `accelerate launch` on 2 CPU processes (gloo).

Batches are split across processes (not multiplied), so 2 processes follow the same optimisation
as 1; what differs is float summation order in the gradient all-reduce.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_project, tiny_overrides
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
LOSS_TOLERANCE = 1e-3  # relative, on test loss
ACCURACY_TOLERANCE = 0.02  # absolute: at most one or two test rows may flip


def run_flow(root, model_dir, processes):  # type: ignore[no-untyped-def]
    from flows.retrain import retrain

    overrides = tiny_overrides(model_dir) + [f"train.processes={processes}"]
    return retrain(params_file="params/default.yaml", overrides=overrides, project_dir=str(root))


def test_two_processes_match_one_and_only_rank_0_logs(tmp_path, tiny_bert_dir, prefect_db) -> None:  # type: ignore[no-untyped-def]
    single = run_flow(make_project(tmp_path / "one", tiny_bert_dir), tiny_bert_dir, 1)
    root = make_project(tmp_path / "two", tiny_bert_dir)
    double = run_flow(root, tiny_bert_dir, 2)

    assert double.test_metrics["test/loss"] == pytest.approx(
        single.test_metrics["test/loss"], rel=LOSS_TOLERANCE
    )
    assert (
        abs(double.test_metrics["test/accuracy"] - single.test_metrics["test/accuracy"]) <= ACCURACY_TOLERANCE
    )

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    children = client.search_runs(
        [client.get_experiment_by_name("bitune").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{double.run_id}'",
    )
    assert sorted(r.info.run_name for r in children) == [
        "bottom",
        "evaluate",
        "head",
    ]  # one of each: rank 0 only
    bottom = next(r for r in children if r.info.run_name == "bottom")
    assert bottom.data.params["processes"] == "2"
    assert len(client.search_model_versions("name='bitune-classifier'")) == 1
    logs = list((root / ".bitune" / "runs").glob("*/bottom.job.log"))
    assert len(logs) == 1, "the bottom phase did not go through accelerate launch"
    assert "Traceback" not in logs[0].read_text(errors="ignore")


TWO_PROCESS_PHASE = """
import gc, json, sys, torch
from torch.nn.parallel import DistributedDataParallel
from pathlib import Path
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[2])
from test_phase_guarantees import gradients_at_each_step, still_model
from test_tuning_engine import rows
from bitune.device import make_accelerator
from bitune.params import PhaseSpec, TrainParams
from bitune.tuning.phase import PhaseContext, PhaseData, run_phase
from bitune.model.layer_groups import resolve_layer_groups
from bitune.tuning.schedule import PhaseRun

out = Path(sys.argv[1])
accelerator = make_accelerator(TrainParams(device="cpu", precision="fp32"))
model = still_model()
data = PhaseData(rows(45), rows(16, seed=1), 0)
index = {tuple(r["input_ids"]): i for i, r in enumerate(data.train)}
seen, wrappers = [[]], []

def record_rows(module, args):
    if torch.is_grad_enabled():  # training, not the validation pass
        for ids, mask in zip(args[0].tolist(), args[1].tolist()):
            seen[-1].append(index[tuple(ids[: sum(mask)])])

registered, held = [], []  # every DDP wrapper stays alive in `held`: no two share an id()

def on_epoch(metrics, epoch):
    registered.append(len(accelerator._models))
    held.extend(o for o in gc.get_objects() if isinstance(o, DistributedDataParallel) and o not in held)
    wrappers.append(len(held))
    seen.append([])

model.register_forward_pre_hook(record_rows)
spec = PhaseSpec(**json.loads(sys.argv[3]))
pretrained = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
groups = resolve_layer_groups(model.backbone)
ctx = PhaseContext(accelerator, groups, pretrained, on_epoch=on_epoch, progress=False)
with gradients_at_each_step(model) as steps:
    run_phase(model, PhaseRun(0, 1, spec), data, ctx)
rank = accelerator.process_index
report = {"seen": seen[:-1], "wrappers": wrappers, "registered": registered}
report["after"] = len(accelerator._models)
(out / f"rank{rank}.json").write_text(json.dumps(report))
if rank == 0:
    torch.save(steps, out / "steps.pt")
"""


def test_two_processes_see_every_row_once_and_step_like_one(tmp_path: Path) -> None:
    """45 rows in batches of 8 under 2 DDP processes (gloo): the short batch of 5, wherever the
    shuffle puts it, is split 3/2 and trained, never dropped or padded with repeats; every step
    applies the gradient a single process computes; the model is wrapped once per trainable set."""
    from test_phase_guarantees import gradients_at_each_step, still_model
    from test_tuning_engine import context, phase, rows

    from bitune.tuning.batching import length_grouped_batches
    from bitune.tuning.phase import PhaseData, run_phase
    from bitune.tuning.schedule import PhaseRun
    from tasks.phase_launch import free_port

    spec = phase(
        train=["head", "layers[1:2]"],
        unfreeze="gradual",
        epochs=3,
        lr=1e-5,
        grad_accum=2,
        schedule="constant",
    )
    data = PhaseData(rows(45), rows(16, seed=1), 0)
    lengths = [len(r["input_ids"]) for r in data.train]
    orders = [
        [len(b) for b in length_grouped_batches(lengths, 8, seed=epoch, min_rows=2)] for epoch in (1, 2, 3)
    ]
    assert any(sizes.index(5) < len(sizes) - 1 for sizes in orders), orders  # covers a short batch mid-list

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--main_process_port", str(free_port()), "--dynamo_backend", "no"]
    launch += ["--mixed_precision", "no"]
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESS_PHASE)
    tests = str(Path(__file__).parent)
    done = subprocess.run(
        [*launch, str(script), str(tmp_path), tests, json.dumps(spec.model_dump(mode="json"))],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in range(3):
        assert sorted(ranks[0]["seen"][epoch] + ranks[1]["seen"][epoch]) == list(range(45)), epoch
    for rank in ranks:
        assert rank["registered"] == [1, 1, 1]  # one model prepared at a time, never a pile
        assert rank["wrappers"] == [1, 2, 2]  # DDP wrappers made: again only when layer 1 joined
        assert rank["after"] == 0  # and released when the phase ended

    single = still_model()
    with gradients_at_each_step(single) as expected:
        run_phase(single, PhaseRun(0, 1, spec), data, context(single))
    steps = torch.load(tmp_path / "steps.pt", weights_only=True)
    assert len(steps) == len(expected) == 9  # 6 batches, windows of 2: 3 steps an epoch
    for step, (got, want) in enumerate(zip(steps, expected, strict=True)):
        assert got.keys() == want.keys()
        for name, grad in want.items():
            torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-7, msg=f"step {step}: {name}")
