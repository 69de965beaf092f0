"""Fault tour: run audit, augment and fine-tune through the command line under faults, count the damage.

For each fault the job is run as a user would (``debias3d ...`` in a subprocess), then checked:

* completed: the job ended with its outputs (or, for a refused input, one error line and exit 1);
* rows lost: rows of the reference (uninterrupted, fault-free) run missing after the fault and the
  resume;
* tracebacks: ``Traceback`` in the job's stderr.

Usage (a few minutes on 2 CPU cores)::

    python benchmarks/faults.py --work /tmp/faults [--kills 2]

It prints a markdown table (one row per fault) and the totals, as recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}
CLI = [sys.executable, "-c", "from debias3d.cli import main; main()"]
PROMPTS = ["a red vase with a long neck", "two small blue cups", "a tall green tower"]
AUDIT = [
    "samples=1",
    "report=false",
    "heatmaps=false",
    "attribution.methods=[grad]",
    "attribution.deletion_k=0",
]
# keep_losers: every generated x_nc becomes a row, so "rows lost" has rows to lose
AUG = ["contexts=2", "progress=false", "report=false", "num_threads=1", "visual.keep_losers=true"]
FT = ["train.max_train_steps=4", "train.checkpointing_steps=2", "train.train_batch_size=2",
      "train.lr_warmup_steps=0", "train.num_threads=1", "data.replay_share=0.0", "data.winners_only=false"]  # fmt: skip


def run(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def pair_rows(out: Path) -> set[tuple]:
    from datasets import load_from_disk

    if not (out / "pairs").is_dir():
        return set()
    ds = load_from_disk(str(out / "pairs")).select_columns(["prompt", "pair_type", "mesh"])
    return {(r["prompt"], r["pair_type"], r["mesh"]) for r in ds}


def audit_rows(out: Path) -> set[str]:
    import pandas as pd

    p = out / "prompts.parquet"
    return set(pd.read_parquet(p)["prompt_id"]) if p.is_file() else set()


class Results:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, job: str, fault: str, proc_err: str, completed: bool, lost: int, note: str = "") -> None:
        tb = proc_err.count("Traceback")
        self.rows.append({"job": job, "fault": fault, "completed": completed, "rows_lost": lost, "tracebacks": tb, "note": note})  # fmt: skip
        print(f"{job:9} {fault:48} completed={completed} lost={lost} tracebacks={tb} {note}", flush=True)  # noqa: T201


def kill_loop(args: list[str], kills: int, first_s: float, spread_s: float, seed: int) -> tuple[int, str]:
    """Start ``args`` and SIGKILL it at random moments ``kills`` times; returns (kills done, stderr)."""
    import random

    rnd = random.Random(seed)
    done, errs = 0, ""
    for _ in range(kills):
        p = start(args)
        time.sleep(first_s + rnd.random() * spread_s)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            done += 1
        _, err = p.communicate()
        errs += err if p.returncode not in (-signal.SIGKILL,) else ""
    return done, errs


# --------------------------------------------------------------------------------------- fake LLM
class BadLLM:
    """OpenAI-compatible endpoint on 127.0.0.1: unusable answers for three sources, a good one for the rest."""

    def __init__(self, max_requests: int = 100) -> None:
        self.n = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                return None

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                outer.n += 1
                user = body["messages"][-1]["content"]
                if outer.n > max_requests:
                    data, ctype, code = b'{"error": {"message": "budget"}}', "application/json", 503
                elif "red vase" in user:
                    data, ctype, code = b"<html><body>502 Bad Gateway</body></html>", "text/html", 200
                elif "blue cups" in user:
                    data, ctype, code = b"not json {", "application/json", 200
                else:
                    c = {"id": "x", "object": "chat.completion", "created": 0, "model": "f",
                         "choices": [{"index": 0, "message": None, "finish_reason": "stop"}]}  # fmt: skip
                    data, ctype, code = json.dumps(c).encode(), "application/json", 200
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/debias3d-faults"))
    ap.add_argument("--kills", type=int, default=2, help="SIGKILLs per kill-loop fault")
    a = ap.parse_args(argv)
    w = a.work
    if w.exists():
        shutil.rmtree(w)
    w.mkdir(parents=True)
    res = Results()
    t0 = time.perf_counter()
    (w / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")

    # ------------------------------------------------------------------ audit
    ref_a = w / "audit"
    p = run(["audit", "-p", str(w / "prompts.txt"), "--out", str(ref_a), *AUDIT])
    assert p.returncode == 0, p.stderr[-2000:]
    want = audit_rows(ref_a)
    torn = w / "audit_torn"
    shutil.copytree(ref_a, torn)
    shard = next((torn / "shards").glob("shard-*.jsonl"))
    data = shard.read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 1
    shard.write_bytes(data[: cut + (len(data) - cut) // 2])
    p = run(["audit", "-p", str(w / "prompts.txt"), "--out", str(torn), "--resume", *AUDIT])
    res.add(
        "audit", "shard torn mid-line, --resume", p.stderr, p.returncode == 0, len(want - audit_rows(torn))
    )
    p = run(
        ["audit", "-p", str(w / "prompts.txt"), "--out", str(torn), "--resume", *AUDIT, "samples=2", "seed=7"]
    )
    ok = p.returncode == 1 and "other settings" in p.stderr and len(want - audit_rows(torn)) == 0
    res.add(
        "audit",
        "--resume with other samples/seed",
        p.stderr,
        ok,
        len(want - audit_rows(torn)),
        "refused, one line",
    )
    p = run(["audit", "-p", str(w / "prompts.txt"), "--out", str(w / "big"), "samples=100000000"])
    res.add("audit", "samples=100000000", p.stderr, p.returncode == 1 and "<= 1024" in p.stderr, 0, "refused")

    # ------------------------------------------------------------------ augment
    ref_g = w / "aug"
    p = run(["augment", "--audit", str(ref_a), "--out", str(ref_g), *AUG])
    assert p.returncode in (0, 3), p.stderr[-2000:]
    want_g = pair_rows(ref_g)
    killed = w / "aug_killed"
    n, err = kill_loop(["augment", "--audit", str(ref_a), "--out", str(killed), *AUG], a.kills, 8.0, 14.0, 0)
    p = run(["augment", "--audit", str(ref_a), "--out", str(killed), *AUG])
    res.add("augment", f"SIGKILL x{n} at random moments, rerun", err + p.stderr, p.returncode in (0, 3),
            len(want_g - pair_rows(killed)))  # fmt: skip
    torn_g = w / "aug_torn"
    shutil.copytree(ref_g, torn_g)
    rec = next((torn_g / "job").glob("records-*.jsonl"))
    data = rec.read_bytes()
    rec.write_bytes(data[: len(data) - 40])
    p = run(["augment", "--audit", str(ref_a), "--out", str(torn_g), *AUG])
    res.add("augment", "record file torn mid-line, rerun", p.stderr, p.returncode in (0, 3), len(want_g - pair_rows(torn_g)))  # fmt: skip
    llm = BadLLM()
    try:
        out = w / "aug_llm"
        args = ["augment", "--audit", str(ref_a), "--out", str(out), *AUG, "llm.backend=openai",
                f"llm.base_url={llm.url}", "llm.require_api_key=false", "llm.max_retries=1"]  # fmt: skip
        p = run(args)
        s = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
        ok = p.returncode == 3 and s.get("llm", {}).get("items_failed") == 3
        res.add("augment", "LLM answers: HTML, not JSON, message null", p.stderr, ok, 0, f"requests {llm.n}")
        before = llm.n
        p = run(args)
        res.add(
            "augment",
            "same, rerun (no request sent again)",
            p.stderr,
            p.returncode == 3 and llm.n == before,
            0,
        )
    finally:
        llm.close()
    bad = w / "audit_bad"
    shutil.copytree(ref_a, bad)
    import pandas as pd

    s = pd.read_parquet(bad / "samples.parquet")
    paths = ["/etc/passwd", "meshes/empty.glb", "meshes/garbage.glb"]
    (bad / "meshes" / "empty.glb").write_bytes(b"")
    (bad / "meshes" / "garbage.glb").write_bytes(b"glTF\x02\x00\x00\x00" + b"\x00" * 40)
    s["mesh"] = [paths[i % 3] for i in range(len(s))]
    s.to_parquet(bad / "samples.parquet")
    out = w / "aug_bad"
    p = run(["augment", "--audit", str(bad), "--out", str(out), *AUG])
    summ = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    ok = p.returncode == 3 and summ.get("outcome", {}).get("skipped") == {"original_unusable": 3}
    res.add(
        "augment", "originals: /etc/passwd, 0-byte GLB, garbage GLB", p.stderr, ok, 0, "skipped with reasons"
    )
    for override, bound in (("contexts=100000000", "<= 100"), ("visual.ranking.level=99", "[0, 4]")):
        p = run(["augment", "--audit", str(ref_a), "--out", str(w / "aug_big"), override])
        res.add("augment", override, p.stderr, p.returncode == 1 and bound in p.stderr, 0, "refused")
    busy = w / "aug_busy"
    first = start(["augment", "--audit", str(ref_a), "--out", str(busy), *AUG])
    time.sleep(10.0)
    p = run(["augment", "--audit", str(ref_a), "--out", str(busy), *AUG])
    first.communicate()
    res.add("augment", "second run on the same --out", p.stderr, p.returncode == 1 and "in use" in p.stderr, 0,
            "refused while the first runs")  # fmt: skip

    # ------------------------------------------------------------------ fine-tune
    if not want_g:
        res.add("finetune", "not run: the reference augmentation wrote no rows", "", False, 0)
    else:
        pairs = str(ref_g / "pairs")
        ft = w / "ft"
        p = run(["finetune", "--out", str(ft), f"data.pairs={pairs}", *FT])
        res.add("finetune", "reference run", p.stderr, p.returncode == 0, 0)
        ft2 = w / "ft_trunc"
        shutil.copytree(ft, ft2)
        f = ft2 / "checkpoint-4" / "optimizer.bin"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        p = run(["finetune", "--out", str(ft2), f"data.pairs={pairs}", "--resume-from", "latest", *FT])
        ok = p.returncode == 0 and "skipping" in p.stderr
        res.add("finetune", "truncated optimizer.bin in the newest checkpoint", p.stderr, ok, 0, "fell back to checkpoint-2")  # fmt: skip
        p = run(
            [
                "finetune",
                "--out",
                str(ft),
                f"data.pairs={pairs}",
                "--resume-from",
                "latest",
                *FT,
                "lora.rank=2",
            ]
        )
        ok = p.returncode == 1 and "other settings" in p.stderr
        res.add("finetune", "--resume-from latest with other lora.rank", p.stderr, ok, 0, "refused, one line")
        p = run(["finetune", "--out", str(w / "ft_big"), f"data.pairs={pairs}", "lora.rank=100000000"])
        res.add(
            "finetune",
            "lora.rank=100000000",
            p.stderr,
            p.returncode == 1 and "4096" in p.stderr,
            0,
            "refused",
        )

    rows = res.rows
    print("\n| job | fault | completed | rows lost | tracebacks | note |\n|---|---|---|---|---|---|")  # noqa: T201
    for r in rows:
        print(
            f"| {r['job']} | {r['fault']} | {'yes' if r['completed'] else 'NO'} | {r['rows_lost']} | {r['tracebacks']} | {r['note']} |"
        )  # noqa: T201
    print(  # noqa: T201
        f"\nfaults tried {len(rows)}, jobs completed {sum(r['completed'] for r in rows)}, "
        f"rows lost {sum(r['rows_lost'] for r in rows)}, tracebacks {sum(r['tracebacks'] for r in rows)} "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    return 0 if all(r["completed"] and not r["tracebacks"] and not r["rows_lost"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
