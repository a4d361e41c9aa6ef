"""`mlconnect export` / `predict` / `serve --bundle` on one-epoch models of a tiny synthetic dataset.

Real torch export, real ONNX Runtime, real Parquet files, real uvicorn in subprocesses; the engine's
own Recommender is the reference every answer is compared with.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch
from tests.conftest import need_or_skip

from mlconnect.deploy.bundle import Bundle, BundleError, sha256_file
from mlconnect.deploy.export import compare_topk, export_bundle
from mlconnect.deploy.predict import Source, predict
from mlconnect.deploy.server import BundleRecommender
from mlconnect.engine.inference import Recommender
from mlconnect.errors import ExperimentError, UsageError
from support import deploy
from support.sshd import free_port

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "deploy"  # test_deploy_docker.py reuses what is built here
    path.mkdir(exist_ok=True)
    return path


def _cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlconnect", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, **kw)


# -- export ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", deploy.MODELS)
def test_export_verifies_and_equals_the_engine_for_every_user(base: Path, model: str) -> None:
    out = deploy.bundle(base, model)
    card = json.loads((out / "card.json").read_text())
    v = card["verification"]
    assert v["ok"] and v["users"] == deploy.N_USERS and v["k"] == 10 and v["max_abs_score_diff"] <= 1e-4
    assert v["predict_path"]["ok"] and v["predict_path"]["max_abs_score_diff"] <= 1e-4  # encoder + item candidates
    assert card["model"] == model and card["dataset"] == "syn" and card["mlconnect_version"]
    assert card["metrics"]["test"] and card["config"]["hidden_size"] == 16
    files = {p.name for p in out.iterdir()} - {"card.json"}
    assert set(card["files"]) == files >= {"model.onnx", "vocab.json", "histories.npz", "items.json"}
    assert all(sha256_file(out / f) == d for f, d in card["files"].items())
    # No graph needs a newer ONNX Runtime than torch's exporter targets for model.onnx (an IR version
    # from this onnx package's newest failed to load on a box with an older ONNX Runtime).
    import onnx

    ir = {f: onnx.load(str(out / f), load_external_data=False).ir_version for f in files if f.endswith(".onnx")}
    assert max(ir.values()) <= ir["model.onnx"], ir

    # Independently of the export's own check: every user, through the bundle server's recommender.
    rec, served = Recommender.load(deploy.trained(base, model)), BundleRecommender(Bundle.load(out))
    users = sorted(rec.known_users, key=int)
    for lo in range(0, len(users), 128):
        hist = [rec.user_history(u) for u in users[lo: lo + 128]]
        for exclude in (True, False):
            want, got = rec.recommend(hist, 10, exclude), served.recommend(hist, 10, exclude)
            assert [[i for i, _ in r] for r in got] == [[i for i, _ in r] for r in want]
            assert np.allclose([[s for _, s in r] for r in got], [[s for _, s in r] for r in want], atol=1e-4)
    # One short sequence per call: the graph runs at its smallest lengths (pad_batch trims to longest + 1).
    for user in users[:20]:
        for seq in (rec.user_history(user)[:1], rec.user_history(user)[:3]):
            assert [i for i, _ in served.recommend([seq], 10)[0]] == [i for i, _ in rec.recommend([seq], 10)[0]]
    assert card["dynamic_length"] is True


def test_compare_topk_allows_tie_swaps_only() -> None:
    eng = (np.array([[3.0, 2.0, 1.0, 1.0]]), np.array([[5, 6, 7, 8]]))  # the engine ranks one further
    ids, scores = np.array([[5, 6, 7]]), np.array([[3.0, 2.0, 1.0]])
    same = compare_topk(eng, (scores, ids))
    assert same["ok"] and same["identical_ids"]
    tie = compare_topk(eng, (scores, np.array([[5, 6, 8]])))  # 7 and 8 tie: either may come third
    assert tie["ok"] and tie["tie_swaps"] == 1 and not tie["identical_ids"]
    assert not compare_topk(eng, (scores, np.array([[5, 7, 6]])))["ok"]  # 6 and 7 do not tie
    assert not compare_topk(eng, (scores, np.array([[5, 6, 9]])))["ok"]  # 9 is nowhere near
    assert not compare_topk(eng, (np.array([[3.0, 2.001, 1.0]]), ids))["ok"]


@pytest.mark.parametrize("part", ["export_onnx", "export_encoder"])  # the server's graph; predict's path
def test_export_refuses_a_graph_that_does_not_reproduce_the_engine(base: Path, monkeypatch, part: str) -> None:
    """A real export of a perturbed copy of the model must fail verification and leave no folder."""
    import mlconnect.deploy.export as ex

    real = getattr(ex, part)

    def perturbed(rec: Recommender, path: Path) -> None:
        other = copy.copy(rec)
        other.model = copy.deepcopy(rec.model)
        with torch.no_grad():
            other.model.item_table().mul_(1.5).add_(0.01)
        real(other, path)

    monkeypatch.setattr(ex, part, perturbed)
    out = base / "refused"
    with pytest.raises(BundleError, match="does not reproduce the engine"):
        export_bundle(deploy.trained(base, "SASRec"), out)
    assert not out.exists() and not list(base.glob(".refused.partial-*"))


def test_export_cli_and_its_errors(base: Path) -> None:
    exp = deploy.trained(base, "GRU4Rec")
    out = base / "cli-bundle"
    r = _cli("export", str(exp), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["verification"]["ok"] and Bundle.load(out)
    with pytest.raises(ExperimentError, match="already exists"):
        export_bundle(exp, out)
    with pytest.raises(UsageError):
        export_bundle(exp, base / "y", fmt="pickle")
    with pytest.raises(ExperimentError):
        export_bundle(base / "missing", base / "z")


@pytest.mark.slow  # torch.export and a fresh `mlconnect export` process (~20 s on a loaded 2-core machine)
def test_export_format_torch_verifies_loads_and_predicts_like_the_engine(base: Path, tmp_path: Path) -> None:
    exp, out = deploy.trained(base, "BERT4Rec"), tmp_path / "torch-bundle"
    r = _cli("export", str(exp), "--out", str(out), "--format", "torch", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)["verification"]
    assert v["ok"] and v["users"] == deploy.N_USERS and v["k"] == 10 and v["max_abs_score_diff"] <= 1e-4
    b = Bundle.load(out)
    assert b.card["format"] == "torch" and b.card["model_file"] == "model.pt2"
    assert set(b.card["files"]) == {"model.pt2", "vocab.json", "histories.npz", "items.json"}

    # predict --bundle on it (the torch.export program read back from disk) writes the engine's top-10.
    src = Source.from_bundle(out)
    assert src.device == "torch.export cpu"
    predict(src, tmp_path / "t.parquet", k=10, exclude_seen=True, progress=False)
    predict(Source.from_experiment(exp), tmp_path / "e.parquet", k=10, exclude_seen=True, progress=False)
    order = [("user_id", "ascending"), ("rank", "ascending")]
    got, want = (pq.read_table(tmp_path / f).sort_by(order) for f in ("t.parquet", "e.parquet"))
    assert got.num_rows == deploy.N_USERS * 10 and got.column("item_id").equals(want.column("item_id"))
    assert np.allclose(got.column("score").to_numpy(), want.column("score").to_numpy(), atol=1e-4)

    # The torch-free bundle server cannot run it: one line saying what to do instead.
    r = subprocess.run([sys.executable, "-m", "mlconnect.deploy.server", "--bundle", str(out),
                        "--port", str(free_port())], capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 1 and r.stderr.startswith("error:") and r.stderr.strip().count("\n") == 0
    assert "--format onnx" in r.stderr


def test_export_registers_an_mlflow_model_version_when_the_config_asks(base: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        need_or_skip(False, "mlflow not installed (pip install 'mlconnect[mlflow]')")
    exp = tmp_path / "exp-mlflow"
    shutil.copytree(deploy.trained(base, "GRU4Rec"), exp)
    store = tmp_path / "mlruns"
    monkeypatch.chdir(tmp_path / "exp-mlflow")  # nothing may land in the folder export is typed in
    with open(exp / "config.yaml", "a") as f:
        f.write(f"mlflow_tracking_uri: {store}\nmlflow_experiment: deploy-test\n")
    first = export_bundle(exp, tmp_path / "b1")["mlflow"]
    second = export_bundle(exp, tmp_path / "b2")["mlflow"]
    assert (first["registered_model"], first["version"], second["version"]) == ("GRU4Rec-syn", 1, 2)
    client = MlflowClient(tracking_uri=store.as_uri(), registry_uri=store.as_uri())
    mv = client.get_model_version("GRU4Rec-syn", "2")
    assert mv.run_id == second["run_id"] and mv.tags["mlconnect.experiment"] == "exp-mlflow"
    logged = Path(mv.source.removeprefix("file://"))
    assert sha256_file(logged / "model.onnx") == sha256_file(tmp_path / "b2" / "model.onnx")
    assert Bundle.load(logged).card["verification"]["ok"]
    assert not (exp / "mlflow.db").exists()  # mlflow's default sqlite store was not touched


# -- reading a bundle --------------------------------------------------------------------------------

def test_tampered_or_incomplete_bundle_is_one_error_line_naming_the_file(base: Path, tmp_path: Path) -> None:
    good = deploy.bundle(base, "SASRec")
    flipped = tmp_path / "flipped"
    shutil.copytree(good, flipped)
    data = bytearray((flipped / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (flipped / "model.onnx").write_bytes(bytes(data))
    r = _cli("predict", "--bundle", str(flipped), "--out", str(tmp_path / "r.parquet"))
    assert r.returncode == 1, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "model.onnx" in lines[0] and "sha256" in lines[0]
    assert not (tmp_path / "r.parquet").exists()

    missing = tmp_path / "missing"
    shutil.copytree(good, missing)
    (missing / "vocab.json").unlink()
    r = subprocess.run([sys.executable, "-m", "mlconnect.deploy.server", "--bundle", str(missing),
                        "--port", str(free_port())], capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("error:") and "vocab.json is missing" in r.stderr
    with pytest.raises(BundleError, match="card.json is missing"):
        Bundle.load(base / "exp-sasrec")


# -- serve --bundle ---------------------------------------------------------------------------------

def test_serve_bundle_cli_answers_like_the_engine_without_importing_torch(base: Path, tmp_path: Path) -> None:
    out, exp = deploy.bundle(base, "BERT4Rec"), deploy.trained(base, "BERT4Rec")
    port, key = free_port(), "k-0123456789"
    # -X importtime lists every module the process imports, on stderr: torch must not be among them.
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "mlconnect", "serve", "--bundle", str(out),
                             "--port", str(port)], env={**ENV, "MLCONNECT_API_KEY": key},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url, h = f"http://127.0.0.1:{port}", {"X-API-Key": key}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", headers=h, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        rec = Recommender.load(exp)
        for user in ("1", "17", str(deploy.N_USERS)):
            got = httpx.post(url + "/recommend", json={"user_id": user, "k": 10}, headers=h).json()
            want = rec.recommend([rec.user_history(user)], 10, True)[0]
            assert [i["item_id"] for i in got["items"]] == [i for i, _ in want]
            assert got["experiment"] == exp.name and got["model"] == "BERT4Rec"
        assert httpx.post(url + "/recommend", json={"user_id": "1"}).status_code == 401
        bad = httpx.post(url + "/recommend", json={"items": ["1", "zzz"]}, headers=h)
        assert bad.status_code == 422 and "zzz" in bad.text
        assert httpx.post(url + "/recommend", json={"user_id": "1", "k": 101}, headers=h).status_code == 422
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, 130, -signal.SIGINT), err[-2000:]  # uvicorn re-raises the signal once done
    assert "Application shutdown complete" in err and "Traceback" not in err
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in err.splitlines() if ln.startswith("import time:")}
    assert "onnxruntime" in imported and "fastapi" in imported
    assert not {m for m in imported if m == "torch" or m.startswith(("torch.", "mlconnect.engine"))}


# -- predict -----------------------------------------------------------------------------------------

def _engine_seen(base: Path) -> dict[str, set[str]]:
    rec = Recommender.load(deploy.trained(base, "SASRec"))
    return {u: set(rec.user_history(u)) for u in rec.known_users}


def test_predict_long_wide_csv_and_exclude_seen(base: Path, tmp_path: Path) -> None:
    src = Source.from_bundle(deploy.bundle(base, "SASRec"), threads=1)
    seen = _engine_seen(base)
    res = predict(src, tmp_path / "recs.parquet", k=25, exclude_seen=True, chunk_users=64, progress=False)
    t = pq.read_table(tmp_path / "recs.parquet")
    assert t.column_names == ["user_id", "rank", "item_id", "score"]
    assert res["rows"] == t.num_rows == deploy.N_USERS * 25
    rows = t.to_pylist()
    by_user: dict[str, list[dict]] = {}
    for r in rows:
        by_user.setdefault(r["user_id"], []).append(r)
    assert set(by_user) == set(seen)
    for u, recs in by_user.items():
        items = [r["item_id"] for r in recs]
        assert len(set(items)) == 25 and [r["rank"] for r in recs] == list(range(1, 26))
        assert not set(items) & seen[u]
        assert all(a["score"] >= b["score"] for a, b in zip(recs, recs[1:]))

    # Chunks scored on two threads at once, written in order: the same table, row for row (scores to float
    # noise: other chunk sizes pad to other widths, and the matmuls sum in another order).
    two = Source.from_bundle(deploy.bundle(base, "SASRec"), threads=2)
    assert two.workers == 2
    predict(two, tmp_path / "two.parquet", k=25, exclude_seen=True, chunk_users=16, progress=False)
    t2 = pq.read_table(tmp_path / "two.parquet")
    for column in ("user_id", "rank", "item_id"):
        assert t2.column(column).equals(t.column(column)), column
    assert np.allclose(t2.column("score").to_numpy(), t.column("score").to_numpy(), rtol=0, atol=1e-5)

    # The experiment (engine) and the bundle (ONNX Runtime) write the same table.
    predict(Source.from_experiment(deploy.trained(base, "SASRec")), tmp_path / "eng.parquet", k=25,
            exclude_seen=True, progress=False)
    order = [("user_id", "ascending"), ("rank", "ascending")]  # the bundle goes by history length
    assert pq.read_table(tmp_path / "eng.parquet").sort_by(order).column("item_id").equals(
        t.sort_by(order).column("item_id"))

    predict(src, tmp_path / "inc.parquet", k=25, exclude_seen=False, progress=False)
    inc = pq.read_table(tmp_path / "inc.parquet").to_pylist()
    assert any(r["item_id"] in seen[r["user_id"]] for r in inc)  # without the flag seen items may come back

    users = tmp_path / "users.txt"
    users.write_text("user_id\n3\n5\n")
    predict(src, tmp_path / "wide.csv", users=str(users), k=5, wide=True, progress=False)
    wide = pcsv.read_csv(tmp_path / "wide.csv").to_pylist()
    assert sorted(str(r["user_id"]) for r in wide) == ["3", "5"] and len(json.loads(wide[0]["item_ids"])) == 5
    predict(src, tmp_path / "wide.parquet", k=5, wide=True, progress=False)
    assert pq.read_table(tmp_path / "wide.parquet").num_rows == deploy.N_USERS

    users.write_text("3\nghost\n")
    with pytest.raises(UsageError, match="ghost"):
        predict(src, tmp_path / "x.parquet", users=str(users), progress=False)
    with pytest.raises(UsageError, match=r"\.parquet or \.csv"):
        predict(src, tmp_path / "x.json", progress=False)
    assert not list(tmp_path.glob(".*partial*"))


def test_predict_reads_a_bundle_made_before_the_encoder_graphs(base: Path, tmp_path: Path) -> None:
    """A bundle without the encoder and candidate graphs (an earlier export, including one with the float
    item_scores.onnx of the release before) predicts with its whole graph, and agrees with the new path."""
    new = deploy.bundle(base, "SASRec")
    old = tmp_path / "old"
    shutil.copytree(new, old)
    card = json.loads((old / "card.json").read_text())
    del card["card_sha256"]  # that release's cards had no digest of their own either
    for name in ("encoder.onnx", "item_candidates.onnx", "item_table.npy"):
        (old / name).unlink()
        del card["files"][name]
    (old / "card.json").write_text(json.dumps(card))
    src_old, src_new = Source.from_bundle(old, threads=1), Source.from_bundle(new, threads=1)
    assert (src_old.device, src_new.device) == ("onnxruntime cpu", "onnxruntime+numpy cpu x1")
    for src, out in ((src_old, "old.parquet"), (src_new, "new.parquet")):
        predict(src, tmp_path / out, k=20, exclude_seen=True, progress=False)
    a, b = (pq.read_table(tmp_path / f) for f in ("old.parquet", "new.parquet"))
    assert a.column("user_id").equals(b.column("user_id")) and a.column("item_id").equals(b.column("item_id"))
    assert np.allclose(a.column("score").to_numpy(), b.column("score").to_numpy(), atol=1e-4)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_predict_killed_mid_write_leaves_the_old_file(base: Path, tmp_path: Path, signum: int) -> None:
    out = tmp_path / "recs.parquet"
    out.write_bytes(b"yesterday's table")
    bundle = deploy.bundle(base, "SASRec")
    proc = subprocess.Popen([sys.executable, "-m", "mlconnect", "predict", "--bundle", str(bundle), "--out", str(out),
                             "--k", "200", "--chunk-users", "1", "--threads", "1"],  # 400 chunks of work
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    partial: list[Path] = []
    while time.monotonic() < deadline and not partial and proc.poll() is None:
        partial = [p for p in tmp_path.glob(".recs.parquet.partial-*") if p.stat().st_size > 0]
        time.sleep(0.01)
    assert partial, f"predict finished before it could be killed: {proc.stderr.read() if proc.stderr else ''}"
    proc.send_signal(signum)
    proc.wait(30)
    assert out.read_bytes() == b"yesterday's table"
    if signum == signal.SIGTERM:  # kill, timeout, `mlconnect stop`: unwinds as Ctrl-C does, temp file removed
        assert proc.returncode == 130 and not list(tmp_path.glob(".recs.parquet.partial-*"))
    # And run to the end, the table replaces it whole.
    r = _cli("predict", "--bundle", str(deploy.bundle(base, "SASRec")), "--out", str(out), "--k", "3", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows"] == pq.read_table(out).num_rows == deploy.N_USERS * 3


# -- review fixes: --out checks, card integrity, Docker settings, long ids, server options ----------

def _one_error_line(r: subprocess.CompletedProcess, *words: str) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:"), r.stderr[-2000:]
    assert " — " in lines[0] and all(w in lines[0] for w in words), lines[0]
    return lines[0]


def test_export_out_that_cannot_be_a_new_folder_is_one_line_before_any_work(base: Path, tmp_path: Path) -> None:
    exp = deploy.trained(base, "GRU4Rec")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    start = time.monotonic()
    _one_error_line(_cli("export", str(exp), "--out", str(a_file / "bundle")), "notes.txt is a file")
    _one_error_line(_cli("export", str(exp), "--out", str(a_file)), "existing file")
    assert time.monotonic() - start < 60  # no export ran (each call is a process start only)
    with pytest.raises(UsageError, match="File name too long"):  # an OSError from the file system itself
        export_bundle(exp, tmp_path / ("n" * 300))
    if Path("/sys/kernel").is_dir():  # sysfs: no new folders there, even for root
        with pytest.raises(UsageError, match=r"cannot create /sys/mlconnect-bundle: .* — choose an --out"):
            export_bundle(exp, "/sys/mlconnect-bundle")
    # A failure after the temp folder exists removes it and the parents this export made for it.
    no_ckpt = tmp_path / "no-ckpt"
    shutil.copytree(exp, no_ckpt, ignore=shutil.ignore_patterns("*.pt"))
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(Exception, match="checkpoint"):
        export_bundle(no_ckpt, tmp_path / "new" / "deeper" / "b")
    assert sorted(tmp_path.rglob("*")) == before and a_file.read_text() == "keep me"


def _reseal(folder: Path, card: dict) -> None:
    from mlconnect.deploy.bundle import seal_card

    (folder / "card.json").write_text(json.dumps(seal_card(card), indent=1))


def test_edited_card_is_refused_with_one_line_naming_card_json(base: Path, tmp_path: Path) -> None:
    from mlconnect.deploy.bundle import card_digest

    good = deploy.bundle(base, "SASRec")
    card = json.loads((good / "card.json").read_text())
    assert card["card_sha256"] == card_digest(card)

    edited = tmp_path / "edited"
    shutil.copytree(good, edited)
    (edited / "card.json").write_text(json.dumps({**card, "max_len": 3}))  # changes every answer
    r = _cli("predict", "--bundle", str(edited), "--out", str(tmp_path / "r.csv"), "--k", "3")
    _one_error_line(r, "card.json", "card_sha256")
    assert not (tmp_path / "r.csv").exists()

    # Another layout of the same values is the same card; a bundle exported before the digest still loads.
    shutil.copy(good / "card.json", edited / "card.json")
    (edited / "card.json").write_text(json.dumps(card, indent=4, sort_keys=True))
    assert Bundle.load(edited).max_len == card["max_len"]
    legacy = {k: v for k, v in card.items() if k != "card_sha256"}
    (edited / "card.json").write_text(json.dumps(legacy))
    assert Bundle.load(edited).card == legacy
    (edited / "card.json").write_text(json.dumps({**legacy, "max_len": 0}))  # was an ONNX Runtime traceback
    with pytest.raises(BundleError, match=r"card.json: max_len 0"):
        Bundle.load(edited)

    # A digest dropped from card["files"] does not switch that file's check off, even in a card whose own
    # digest was made again (or an old card without one): the modified model is refused by name.
    dropped = tmp_path / "dropped"
    shutil.copytree(good, dropped)
    data = bytearray((dropped / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (dropped / "model.onnx").write_bytes(bytes(data))
    files = {k: v for k, v in card["files"].items() if k != "model.onnx"}
    (dropped / "card.json").write_text(json.dumps({**card, "files": files}))
    with pytest.raises(BundleError, match="card_sha256"):
        Bundle.load(dropped)
    _reseal(dropped, {**card, "files": files})
    r = subprocess.run([sys.executable, "-m", "mlconnect.deploy.server", "--bundle", str(dropped),
                        "--port", str(free_port())], capture_output=True, text=True, timeout=60, env=ENV)
    _one_error_line(r, "card.json", "model.onnx", "'files'")
    for name in ("encoder.onnx", "histories.npz", "items.json"):  # predict's path, the histories, the metadata
        _reseal(dropped, {**card, "files": {k: v for k, v in card["files"].items() if k != name}})
        with pytest.raises(BundleError, match=f"no sha256 for {name}"):
            Bundle.load(dropped)


def test_docker_settings_may_be_edited_but_the_wheel_and_model_stay_checked(base: Path, tmp_path: Path) -> None:
    src = deploy.bundle(base, "GRU4Rec", docker=True)
    files = json.loads((src / "card.json").read_text())["files"]
    wheel = next(src.glob("mlconnect-*.whl")).name
    assert "Dockerfile" not in files and "requirements.txt" not in files
    assert {wheel, "model.onnx", "vocab.json", "histories.npz"} <= set(files)

    b = tmp_path / "b"
    shutil.copytree(src, b)
    dockerfile = (b / "Dockerfile").read_text()
    assert "PORT=8000" in dockerfile
    (b / "Dockerfile").write_text(dockerfile.replace("PORT=8000", "PORT=9000") + "LABEL team=recs\n")
    with open(b / "requirements.txt", "a") as f:
        f.write("# --index-url https://pypi.internal.example/simple\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlconnect.deploy.server", "--bundle", str(b), "--port", str(port)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert _healthy(f"http://127.0.0.1:{port}", proc), proc.stderr.read() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    with open(b / wheel, "ab") as f:  # the server's own code is still part of the bundle's digests
        f.write(b"\0")
    with pytest.raises(BundleError, match=f"{wheel} does not match its sha256"):
        Bundle.load(b)


def _healthy(url: str, proc: subprocess.Popen, headers: dict | None = None) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/health", headers=headers, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            time.sleep(0.2)
    return False


def test_serve_bundle_answers_ids_longer_than_256_characters(base: Path, tmp_path: Path) -> None:
    """A user and an item whose raw ids are 400 and 300 characters (training accepts them): the same
    bundle with only those ids renamed answers them exactly as it answers the original ids."""
    good = deploy.bundle(base, "SASRec")
    b = tmp_path / "long-ids"
    shutil.copytree(good, b)
    vocab = json.loads((b / "vocab.json").read_text())
    user, item = "L" * 400, "x" * 300
    vocab["user_ids"][vocab["user_ids"].index("1")] = user
    vocab["item_ids"][vocab["item_ids"].index("5")] = item
    (b / "vocab.json").write_text(json.dumps(vocab))
    card = json.loads((b / "card.json").read_text())
    _reseal(b, {**card, "files": {**card["files"], "vocab.json": sha256_file(b / "vocab.json")}})

    ref = BundleRecommender(Bundle.load(good), threads=1)
    want = ref.recommend([ref.user_history("1")], 10)[0]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlconnect", "serve", "--bundle", str(b), "--port", str(port)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        assert _healthy(url, proc), proc.stderr.read() if proc.stderr else ""
        got = httpx.post(url + "/recommend", json={"user_id": user, "k": 10})
        assert got.status_code == 200, got.text
        assert [(i["item_id"], round(i["score"], 4)) for i in got.json()["items"]] == \
            [(item if i == "5" else i, round(s, 4)) for i, s in want]
        seq = [item if i == "5" else i for i in ref.user_history("1")]
        assert httpx.post(url + "/recommend", json={"items": seq, "k": 10}).json() == got.json()
        huge = httpx.post(url + "/recommend", json={"user_id": "u" * 5000})
        assert huge.status_code == 422 and "string_too_long" in huge.text
        assert httpx.post(url + "/recommend", json={"items": [item] * 4000}).status_code == 413  # 1.2 MB body
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def test_server_options_out_of_range_are_one_line_before_listening(base: Path) -> None:
    from mlconnect.errors import MlconnectError
    from mlconnect.serving.listen import bind_socket

    b = str(deploy.bundle(base, "SASRec"))
    image = [sys.executable, "-m", "mlconnect.deploy.server", "--bundle", b]
    for extra, words in ((["--port", "99999"], ("--port", "65535")), (["--port", ""], ("--port", "whole number")),
                         (["--max-batch", "0"], ("--max-batch", "below 1")), (["--threads", "-1"], ("--threads",))):
        r = subprocess.run([*image, *extra], capture_output=True, text=True, timeout=60, env=ENV)
        assert r.returncode == 2 and "export it again" not in r.stderr
        _one_error_line(r, *words)
    with pytest.raises(MlconnectError, match="port 99999 is out of range"):
        bind_socket("127.0.0.1", 99999)
    for device, words in (("tpu", ("unknown device 'tpu'",)), ("mps", ("--device mps",))):
        r = _cli("serve", "--bundle", b, "--port", "0", "--device", device, timeout=60)
        assert r.returncode == 2 and "serving bundle" not in r.stderr
        _one_error_line(r, *words)


def test_compare_topk_of_a_user_who_has_seen_every_item_warns_nothing() -> None:
    inf = float("-inf")
    eng = (np.array([[2.0, 1.0, inf, inf], [inf, inf, inf, inf]]), np.array([[3, 4, 1, 2], [1, 2, 3, 4]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = compare_topk(eng, (np.array([[2.0, 1.0, inf], [inf, inf, inf]]), np.array([[3, 4, 1], [1, 2, 3]])))
        assert same["ok"] and same["max_abs_score_diff"] == 0.0
        lost = compare_topk(eng, (np.array([[2.0, inf, inf], [inf, inf, inf]]), np.array([[3, 4, 1], [1, 2, 3]])))
        assert not lost["ok"]  # an exported -inf where the engine has a score is still a difference


def test_export_torch_of_a_gru_warns_nothing(base: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        card = export_bundle(deploy.trained(base, "GRU4Rec"), tmp_path / "gru-torch", fmt="torch")
    assert card["verification"]["ok"]
    assert not [str(w.message) for w in caught if "register_buffer" in str(w.message)]
