"""`mtp experiment create --method/--param`, `mtp runs --method`, `mtp show` of a set, and the
whole path through a fake engine: every run done once, each set generated in one call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from sqlmodel import select

from tui.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ("a dog on the beach", "a dog in the snow", "a dog in a car")


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def create(capsys, home, *extra):
    args = ["--home", str(home.root), "experiment", "create", "cmp", "--model", "tiny"]
    for p in PROMPTS:
        args += ["--prompt", p]
    args += ["--steps", "4", "--start-step", "1", "--mask-words", "dog"]
    return run(capsys, *args, "--mask-threshold", "otsu", *extra)


def test_method_and_param_flags_expand_and_unknown_names_are_one_line_errors(capsys, home):
    code, out, err = create(
        capsys,
        home,
        "--method",
        "consistory,masactrl",
        "--param",
        "consistory.mask_dropout=0,0.5",
        "--param",
        "consistory.inject=false",
        "--dry-run",
    )
    # consistory: per seed a baseline set + 2 dropout values, 3 images each; masactrl 3 x 2
    assert code == 0 and out.strip() == f"{3 * 3 + 6} runs", err
    for bad, words in (
        (["--method", "masactrl,storydiffusion"], "method: 'storydiffusion' is not one of"),
        (
            ["--method", "consistory", "--param", "consistory.dropout=0"],
            "has no parameter 'dropout'",
        ),
        (["--method", "consistory", "--param", "nope.x=1"], "'nope' is not one of"),
        (["--method", "consistory", "--param", "consistory.mask_dropout"], "METHOD.NAME=VALUES"),
        (["--method", "consistory", "--param", "consistory.n_anchors=5"], "n_anchors"),
        (["--method", "consistent_sa", "--mask-mode", "auto"], "no subject mask"),
    ):
        code, out, err = create(capsys, home, *bad, "--dry-run")
        assert code == 2 and words in err, (bad, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_spec_file_fields_method_and_method_params(capsys, home, tmp_path):
    spec = {
        "model": "tiny",
        "target_prompts": list(PROMPTS),
        "num_steps": 4,
        "start_step": "1",
        "method": "consistent_sa",
        "method_params": {"consistent_sa": {"sa_rate_low": [0.5, 1.0], "skip_early": "0"}},
        "seeds": "0,1",
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    code, out, err = run(
        capsys, "--home", str(home.root), "experiment", "create", "f", "--spec", str(path)
    )
    # 2 seeds x (baseline set + 2 rates) x 3 images
    assert code == 0 and "(18 runs, draft)" in out, err
    code, out, _ = run(capsys, "--home", str(home.root), "experiment", "show", "f")
    shown, _ = json.JSONDecoder().raw_decode(out[out.index("{") :])
    assert shown["method"] == "consistent_sa"
    assert shown["method_params"]["consistent_sa"]["skip_early"] == "0"


def test_three_methods_through_a_fake_engine_each_run_once_each_set_in_one_call(
    capsys, home, tmp_path
):
    from store.db import Store
    from store.models import Run

    # The source prompt does not name the subject: set methods have no source, so their subject
    # words need only be in the target prompts (masactrl is unmasked here).
    code, out, err = create(
        capsys,
        home,
        "--method",
        "masactrl,consistent_sa,consistory",
        "--seeds",
        "0,1",
        "--source-prompt",
        "a photo",
        "--queue",
    )
    assert code == 0, err
    log = tmp_path / "generate.log"
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        MTP_FAKE_LOG=str(log),
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "--home",
            str(home.root),
            "--backend",
            "fake",
            "--once",
            "--max-batch",
            "2",
            "--poll",
            "0.05",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = Store(home)
    try:
        with store.session() as s:
            runs = {r.id: r for r in s.exec(select(Run))}
        assert Counter(r.status for r in runs.values()) == {"done": len(runs)}
        assert len(runs) == 3 * 2 * 2 * 3  # 3 methods x 2 seeds x (baseline + 1) x 3 prompts
        calls = [line.split("\t") for line in log.read_text().splitlines()]
        generated = [int(i) for c in calls for i in c[2].split(",")]
        assert sorted(generated) == sorted(runs)  # every run exactly once
        sets = Counter((r.method, r.group_key) for r in runs.values() if r.method != "masactrl")
        assert len(sets) == 8 and set(sets.values()) == {3}
        for c in calls:
            ids = [int(i) for i in c[2].split(",")]
            methods = set(c[3].split(","))
            assert methods == {runs[ids[0]].method}
            if runs[ids[0]].method != "masactrl":
                # a whole set in one call despite --max-batch 2, in prompt order
                assert {runs[i].group_key for i in ids} == {runs[ids[0]].group_key}
                assert len(ids) == 3 and [runs[i].prompt_index for i in ids] == [0, 1, 2]
            else:
                assert len(ids) <= 2
        # a set's images are its own: one file per run
        images = {r.image_path for r in runs.values()}
        assert len(images) == len(runs) and all((home.root / p).is_file() for p in images)
        consistory = [r for r in runs.values() if r.method == "consistory" and not r.is_baseline]
        assert consistory and all(r.mask_path for r in consistory)

        code, out, _ = run(capsys, "--home", str(home.root), "runs", "--method", "consistory")
        assert code == 0 and out.startswith("12 runs match")
        assert all("consistory" in line for line in out.splitlines()[1:])
        code, out, _ = run(
            capsys, "--home", str(home.root), "runs", "--sort", "method", "--limit", "500"
        )
        listed = [line.split()[2] for line in out.splitlines()[1:]]
        assert listed == sorted(listed) and set(listed) == {
            "masactrl",
            "consistent_sa",
            "consistory",
        }
        code, out, err = run(capsys, "--home", str(home.root), "runs", "--method", "nope")
        assert code == 2 and "'nope' is not one of" in err

        one = consistory[0]
        code, out, _ = run(capsys, "--home", str(home.root), "show", str(one.id), "--no-image")
        assert code == 0
        assert "method         consistory" in out and "mask_dropout" in out
        assert "--- set (3 images, consistory)" in out
        members = [r for r in runs.values() if r.group_key == one.group_key]
        for m in members:
            assert f"run {m.id} [done] {m.target_prompt!r}" in out
            assert str(home.root / m.image_path) in out and str(home.root / m.mask_path) in out
    finally:
        store.close()
