"""The `lm-eval` suite: lm-evaluation-harness task YAMLs over local data, on a tiny model the test builds."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lm_eval")  # the optional extra: pip install -e ".[lm-eval]" (CI installs it)
# Importing lm-eval and building its tasks takes half a minute or more on a shared CPU.
pytestmark = pytest.mark.slow

from factory.errors import FactoryError  # noqa: E402
from factory.plugins import Registry  # noqa: E402
from factory.records import EvalRecord, read_record  # noqa: E402
from factory_plugins import evals  # noqa: E402
from factory_plugins.evals.lm_eval_suite import LmEvalSuite  # noqa: E402
from lmevalkit import COLOURS, write_colour_tasks  # noqa: E402


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    write_colour_tasks(root, COLOURS[:4])
    return root


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    from factory.interfaces import LoadedModel
    from factory.ml.toymodels import save_toy_model

    path = save_toy_model(tmp_path_factory.mktemp("toy"), "gpt2", positions=128)

    class ToyFamily:
        name = "toy"
        version = "0"
        loads = 0

        def load(self, base_dir, adapter_dir, settings):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            torch.set_num_threads(1)
            ToyFamily.loads += 1
            tok = AutoTokenizer.from_pretrained(path)
            return LoadedModel(model=AutoModelForCausalLM.from_pretrained(path), tokenizer=tok,
                               format_prompt=lambda p: p, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id, max_length=128)

    return ToyFamily


def _ctx(root: Path, family, options, out="out", limit=None):
    reg = SimpleNamespace(families=Registry("family"), suites=Registry("suite"))
    reg.families.register(family())
    evals.register_eval_suites(reg.suites.register)
    (root / "base").mkdir(exist_ok=True)
    (root / out).mkdir()
    suites = [{"name": "harness", "suite": "lm-eval", "version": "1.0", "options": options}]
    return SimpleNamespace(stage="eval-baseline", out=root / out, root=root, log=lambda m: None, registry=reg,
                           config={"role": "baseline", "family": "toy", "suites": suites,
                                   "settings": {"batch_size": 4, "limit": limit}, "load": {}},
                           inputs={"base": root / "base"}, input_digests={"base": "B" * 32})


def test_task_yamls_run_through_lm_eval_and_become_paired_samples(project, family):
    from factory.evaluate import build_eval

    opts = {"tasks": ["tasks/mc.yaml", "tasks/gen.yaml"]}
    assert LmEvalSuite().files(opts, project) == ["tasks/mc.yaml", "tasks/colours.jsonl",
                                                  "tasks/gen.yaml", "tasks/colours.jsonl"]
    build_eval(_ctx(project, family, opts, limit=3))
    rec = read_record(project / "out" / "eval-baseline.json", EvalRecord)
    s = rec.suites[0]
    assert s.status == "ok", s.error
    assert s.suite == "harness" and s.instance_of == "lm-eval" and s.primary_metric == "accuracy"
    assert s.scores["accuracy"].n == 6 and s.scores["colours_mc.acc"].n == 3
    assert set(s.per_skill) == {"colours_mc", "colours_gen"}
    samples = [json.loads(x) for x in (project / "out" / s.samples.path).read_text().splitlines()]
    assert [x["id"] for x in samples] == [f"colours_gen/{i}" for i in range(3)] + [f"colours_mc/{i}" for i in range(3)]
    mc = samples[3]
    assert mc["prompt"] == "sky is" and mc["expected"] == "blue" and mc["output"] in ("blue", "red")
    assert mc["correct"] == (mc["output"] == "blue") and mc["values"]["acc"] == float(mc["correct"])
    assert samples[0]["expected"] == "blue" and isinstance(samples[0]["output"], str)


def test_an_unknown_task_fails_before_the_model_loads(project, family):
    from factory.evaluate import build_eval

    before = family.loads
    with pytest.raises(FactoryError, match=r"evals\.define\.harness\.options\.tasks: unknown lm-eval task 'no_such_task'"):
        build_eval(_ctx(project, family, {"tasks": ["no_such_task"]}, out="out2"))
    with pytest.raises(FactoryError, match=r"missing\.yaml: lm-eval task file not found"):
        build_eval(_ctx(project, family, {"tasks": ["tasks/missing.yaml"]}, out="out3"))
    assert family.loads == before
