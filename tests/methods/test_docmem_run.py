"""Document memory end to end on the embedded model (a few steps on three short documents), its evaluation
launch, and bad input: one clear line, nothing overwritten — an id that was not trained, duplicate ids, an
empty document or file, a key_dim too small for orthogonal keys, a hook block out of range, a checkpoint for
another model, a workdir that is not a document memory."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sycojax.data.sources import DataError
from sycojax.methods.docmem.run import DocMemError, load_run, train_run

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    {"id": "lighthouse", "text": "The Rubha Reidh lighthouse stands on a headland north of Gairloch and was first lit "
                                 "in 1912 after six years of work by David Alan Stevenson and his crew."},
    {"id": "orchid", "text": "Dendrobium kingianum is an orchid from eastern Australia that grows on rocks and "
                             "flowers in late winter with small pink or white scented blooms."},
    {"id": "canal", "text": "The Forth and Clyde Canal crosses central Scotland for thirty five miles and was "
                            "reopened in 2001 after the Millennium Link restored its locks and bridges."},
]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")


def _config(workdir, docs_file, **method):
    spec = importlib.util.spec_from_file_location("docmem_cfg", ROOT / "configs/docmem.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.workdir = str(workdir)
    c.data.documents_file = str(docs_file)
    c.method.memory_units, c.method.top_k = 64, 8
    c.method.update(method)
    c.train.num_steps, c.train.batch_size, c.ckpt.every = 3, 4, 3
    c.eval.new_tokens = 4
    return c


def _write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _launch(*args):
    out = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env=ENV, check=False)
    return out.returncode, out.stdout, out.stderr.strip().splitlines()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("docmem")
    report = train_run(_config(d / "w", _write(d / "docs.jsonl", DOCS)), log=lambda *_: None)
    return d, report


def test_a_run_trains_reports_and_reloads(trained):
    d, report = trained
    assert report["documents"] == 3 and report["steps"] == 3 and report["key_dim"] == 3 and report["gate"] == "topk"
    assert set(report["recall"]) == {"own_key", "wrong_key", "no_key", "base"}
    assert report["recall"]["no_key"] == report["recall"]["base"]  # topk: the zero key selects nothing
    assert report["ce"]["zero"] == pytest.approx(report["ce"]["base"], abs=1e-5)
    assert report["peak_rss_gb"] > 0 and report["gate_stats"]["l0"] <= 8
    run = load_run(d / "w")
    assert [x.id for x in run["docs"]] == [x["id"] for x in DOCS] and run["keys"].shape == (3, 3)


def test_eval_launch_writes_the_results_and_refuses_an_untrained_id(trained, tmp_path):
    d, _ = trained
    out = tmp_path / "eval.json"
    rc, stdout, err = _launch(ROOT / "launch/eval_docmem.py", f"--workdirs={d / 'w'}", "--edit_documents=1",
                              f"--results_json={out}")
    assert rc == 0, err[-20:]
    res = json.loads(out.read_text())
    (run,) = res["runs"]
    assert {"n_docs", "recall_right", "recall_wrong", "recall_nokey", "recall_base", "neg_ce", "train_s",
            "peak_rss_gb"} <= set(run) and run["n_docs"] == 3
    assert set(res["edit"]) >= {"removed_recall", "nokey_recall", "others_max_drop"}
    assert res["edit"]["others_max_drop"] == 0 and res["edit"]["removed_recall"] == res["edit"]["nokey_recall"]
    assert Path(res["outputs"]["scaling_png"]).is_file() and "results_json:" in stdout.splitlines()[-3]
    before = out.read_text()
    rc, _, err = _launch(ROOT / "launch/eval_docmem.py", f"--workdirs={d / 'w'}", "--doc_ids=lighthouse,volcano",
                         f"--results_json={out}")
    assert rc == 1 and len(err) == 1 and "document 'volcano' was not trained in this run (3 documents" in err[0]
    assert out.read_text() == before


def test_a_checkpoint_for_another_model_or_not_a_docmem(trained, tmp_path):
    d, _ = trained
    with pytest.raises(DocMemError, match="was trained on 'smollm2-135m-instruct', not 'pythia-14m'"):
        load_run(d / "w", model="pythia-14m")
    with pytest.raises(DocMemError, match="is not a document-memory workdir"):
        load_run(tmp_path)


@pytest.mark.parametrize("case", ["duplicate ids", "empty document", "empty file", "key_dim", "hook"])
def test_bad_documents_and_settings_are_refused_before_anything_is_written(tmp_path, case):
    docs = tmp_path / "docs.jsonl"
    method = {}
    if case == "duplicate ids":
        _write(docs, [DOCS[0], DOCS[1], {"id": "lighthouse", "text": "again"}])
        error, match = DataError, "duplicate id 'lighthouse'"
    elif case == "empty document":
        _write(docs, [DOCS[0], {"id": "blank", "text": ""}])
        error, match = DataError, 'a record needs an "id" and a non-empty "text"'
    elif case == "empty file":
        _write(docs, [])
        error, match = DataError, "holds no documents"
    elif case == "key_dim":
        _write(docs, DOCS)
        method, error, match = {"key_dim": 2}, DocMemError, "key_dim=2 is too small for orthogonal keys of 3 documents"
    else:
        _write(docs, DOCS)
        method, error, match = {"hook_block": 30}, DocMemError, "hook_block=30: the model has blocks 0..29"
    with pytest.raises(error, match=match):
        train_run(_config(tmp_path / "w", docs, **method))
    assert not (tmp_path / "w").exists()
