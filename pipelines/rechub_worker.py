"""torch-rechub's YoutubeDNN, run in torch-rechub's own environment (pipelines/rechub.py).

    /tmp/rechub-venv/bin/python pipelines/rechub_worker.py --data EXAMPLES.npz --batch-size 1024
        --negatives 2048 --temperature 0.02 --lr 0.001 --seed 0 --threads 2

torch-rechub is never a dependency of vidrec: this script imports only numpy, torch and
torch_rechub (no vidrec package; vidrec's standard-library-only `peak_rss.py` is loaded from
its file), and is started by `pipelines.rechub.RechubWorker` with the
interpreter of a separate virtual environment. It builds torch-rechub's YoutubeDNN over the
examples that vidrec's example builder exported (user attribute codes, watch-history and
search-token bags, continuous features with example age, label item codes), draws its
per-example negatives with torch-rechub's `negative_sample` (word2vec popularity, count^0.75,
as its `generate_seq_feature_match` does), and trains with its `MatchTrainer` (list-wise
softmax, mode 2) through its `MatchDataGenerator` data loader.

Protocol (one JSON object per line on stdout, commands on stdin), so that the driver can
interleave its work with these epochs under the same machine load:
- on start: {"ready": true, "prep_seconds": ..., "examples": ..., "parameters": ...};
- "epoch": one training epoch -> {"seconds", "examples", "examples_per_second", "loss",
  "rss_mb", "peak_rss_mb", "epoch_peak_mb"};
- "eval": Recall@50 on the validation examples (exact search over every item code) ->
  {"recall": ...};
- {"rank": {"queries": Q.npz, "out": OUT.npz, "k": K}}: the exact top-K item codes of the
  users in Q.npz (their feature arrays; per user the codes to exclude, CSR `exclude_ptr`,
  `exclude_codes`), code 0 never returned, written to OUT.npz as `codes` (N, K) int64 with 0
  where fewer than K codes remain -> {"ranked": N, "seconds": ...};
- "quit": exit.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections import Counter, OrderedDict
from pathlib import Path

# run as a script, this file's folder would lead sys.path: vidrec's own module names (config,
# run, report, ...) must not shadow anything torch-rechub or its dependencies import
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

# vidrec's peak-memory module (standard library only), loaded from its file: vidrec is not
# installed in this interpreter and this folder is off sys.path
_spec = importlib.util.spec_from_file_location("_vidrec_peak_rss", _HERE / "peak_rss.py")
assert _spec is not None and _spec.loader is not None
peak_rss = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peak_rss)

import numpy as np  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("TQDM_DISABLE", "1")  # torch-rechub's trainer draws progress bars

from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature  # noqa: E402
from torch_rechub.models.matching import YoutubeDNN  # noqa: E402
from torch_rechub.trainers import MatchTrainer  # noqa: E402
from torch_rechub.utils.data import MatchDataGenerator  # noqa: E402
from torch_rechub.utils.match import negative_sample  # noqa: E402

_STATUS = Path("/proc/self/status")


def _status_mb(key: str) -> float:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _peak_mb() -> float:
    """Return this process's peak resident set since exec (VmHWM; ru_maxrss would not do:
    Linux carries it across fork + exec, so it starts at the driver's size); without /proc the
    getrusage peak, NaN where the platform reports none."""
    hwm = _status_mb("VmHWM")
    if hwm == hwm:  # not NaN: /proc is there
        return hwm
    peak = peak_rss.peak_rss_mb()
    return float("nan") if peak is None else peak


def _say(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def build(args: argparse.Namespace) -> tuple[YoutubeDNN, MatchTrainer, object, dict, dict]:
    """Return (model, trainer, train loader, validation inputs, info) over the exported data."""
    z = np.load(args.data, allow_pickle=False)
    n = int(z["label"].shape[0])
    e = int(z["embedding_dim"])
    n_items = int(z["n_item_codes"])
    cat_cards = [int(c) for c in z["categorical_cardinalities"]]
    t0 = time.perf_counter()
    # torch-rechub draws negatives once, per example, from the labels' popularity (count^0.75)
    counts = Counter(z["label"].tolist())
    order = OrderedDict(sorted(counts.items(), key=lambda kv: kv[1], reverse=True))
    neg = np.asarray(negative_sample(order, ratio=n * args.negatives, method_id=1), dtype=np.int64)
    x = {f"cat{j}": z["categorical"][:, j].astype(np.int64) for j in range(len(cat_cards))}
    x["hist"] = z["history"].astype(np.int64)
    x["search"] = z["search_tokens"].astype(np.int64)
    x["dense"] = z["dense"].astype(np.float32)
    x["item_id"] = z["label"].astype(np.int64)
    x["neg_items"] = neg.reshape(n, args.negatives)
    y = np.zeros(n, dtype=np.int64)  # list-wise: the positive is column 0
    item_all = {"item_id": np.arange(n_items, dtype=np.int64)}
    loader, _, _ = MatchDataGenerator(x=x, y=y).generate_dataloader(
        {k: v[:1] for k, v in x.items()}, item_all, batch_size=args.batch_size, num_workers=0
    )
    prep = time.perf_counter() - t0
    # every sparse embedding has the same width: torch-rechub concatenates them along one axis
    user_features = [SparseFeature(f"cat{j}", c, embed_dim=e) for j, c in enumerate(cat_cards)]
    user_features += [
        SequenceFeature("hist", n_items, embed_dim=e, pooling="mean", shared_with="item_id",
                        padding_idx=0),
        SequenceFeature("search", int(z["n_token_codes"]), embed_dim=e, pooling="mean",
                        padding_idx=0),
        DenseFeature("dense", embed_dim=int(z["dense"].shape[1])),
    ]  # fmt: skip
    item_features = [SparseFeature("item_id", n_items, embed_dim=e, padding_idx=0)]
    neg_features = [
        SequenceFeature("neg_items", n_items, embed_dim=e, pooling="concat", shared_with="item_id")
    ]
    model = YoutubeDNN(
        user_features,
        item_features,
        neg_features,
        user_params={"dims": [int(d) for d in z["user_layers"]]},
        temperature=args.temperature,
    )
    trainer = MatchTrainer(
        model,
        mode=2,
        optimizer_params={"lr": args.lr, "weight_decay": 0.0},
        n_epoch=1,
        device="cpu",
        model_path=tempfile.mkdtemp(prefix="rechub_model_"),
    )
    valid = {k[len("valid_") :]: z[k] for k in z.files if k.startswith("valid_")}
    info = {
        "examples": n,
        "prep_seconds": prep,
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    return model, trainer, loader, valid, info


def _user_vectors(model: YoutubeDNN, arrays: dict) -> torch.Tensor:
    """Return the user tower's (N, E) vectors of exported feature arrays."""
    cats = arrays["categorical"]
    x = {f"cat{j}": torch.from_numpy(cats[:, j].astype(np.int64)) for j in range(cats.shape[1])}
    x["hist"] = torch.from_numpy(arrays["history"].astype(np.int64))
    x["search"] = torch.from_numpy(arrays["search_tokens"].astype(np.int64))
    x["dense"] = torch.from_numpy(arrays["dense"].astype(np.float32))
    model.mode = "user"
    try:
        return model(x)
    finally:
        model.mode = None


def _item_vectors(model: YoutubeDNN, n_items: int) -> torch.Tensor:
    """Return the item tower's (I, E) vectors of every item code (row = code)."""
    model.mode = "item"
    try:
        return model({"item_id": torch.arange(n_items)})
    finally:
        model.mode = None


@torch.no_grad()
def recall_at(model: YoutubeDNN, valid: dict, n_items: int, k: int = 50) -> float:
    """Return Recall@k of the validation labels: exact top-k over every item code but 0."""
    if not valid or len(valid["label"]) == 0:
        return float("nan")
    model.eval()
    scores = _user_vectors(model, valid) @ _item_vectors(model, n_items).T  # (V, I)
    scores[:, 0] = -torch.inf  # code 0 is padding / out of vocabulary
    top = torch.topk(scores, k, dim=1).indices
    hit = (top == torch.from_numpy(valid["label"].astype(np.int64))[:, None]).any(dim=1)
    model.train()
    return float(hit.float().mean())


@torch.no_grad()
def rank(model: YoutubeDNN, queries: Path, out: Path, n_items: int, k: int) -> int:
    """Write the exact top-k codes of the users in `queries` to `out` (protocol above)."""
    with np.load(queries, allow_pickle=False) as z:
        q = {name: z[name] for name in z.files}
    model.eval()
    items = _item_vectors(model, n_items)  # (I, E)
    n = int(q["history"].shape[0])
    kk = min(int(k), n_items)
    codes = np.zeros((n, int(k)), dtype=np.int64)
    ptr, excluded = q["exclude_ptr"], q["exclude_codes"]
    step = max(1, (1 << 22) // max(n_items, 1))  # (rows, items) score blocks of bounded size
    for a in range(0, n, step):
        b = min(a + step, n)
        block = {name: v[a:b] for name, v in q.items() if not name.startswith("exclude_")}
        scores = _user_vectors(model, block) @ items.T  # (B, I)
        scores[:, 0] = -torch.inf
        rows = np.repeat(np.arange(b - a), np.diff(ptr[a : b + 1]))
        cols = excluded[ptr[a] : ptr[b]]
        ok = (cols >= 0) & (cols < n_items)
        scores[torch.from_numpy(rows[ok]), torch.from_numpy(cols[ok])] = -torch.inf
        val, idx = torch.topk(scores, kk, dim=1)
        top = np.where(np.isfinite(val.numpy()), idx.numpy(), 0)
        codes[a:b, :kk] = top
    model.train()
    with open(out, "wb") as fh:
        np.savez(fh, codes=codes)
    return n


def main(argv: list[str] | None = None) -> int:
    """Serve the driver's commands until "quit" or end of input; return the exit code."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--negatives", type=int, required=True)
    p.add_argument("--temperature", type=float, default=0.02)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # negative_sample and nothing else draws from numpy's global RNG
    model, trainer, loader, valid, info = build(args)
    n_items = int(np.load(args.data)["n_item_codes"])
    _say({"ready": True, "threads": torch.get_num_threads(), **info})
    lifetime_peak = _peak_mb()  # each epoch resets VmHWM: keep the maximum here
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "epoch":
            lifetime_peak = max(lifetime_peak, _peak_mb())
            before = _status_mb("VmRSS")
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: this epoch's peak
            except OSError:
                pass
            t0 = time.perf_counter()
            loss = trainer.train_one_epoch(loader)
            seconds = time.perf_counter() - t0
            epoch_peak = _peak_mb()
            lifetime_peak = max(lifetime_peak, epoch_peak)
            _say(
                {
                    "seconds": seconds,
                    "examples": info["examples"],
                    "examples_per_second": info["examples"] / seconds,
                    "loss": float(loss),
                    "rss_mb": _status_mb("VmRSS"),
                    "peak_rss_mb": lifetime_peak,
                    "epoch_peak_mb": epoch_peak - before,
                }
            )
        elif cmd == "eval":
            _say({"recall": recall_at(model, valid, n_items)})
        elif cmd.startswith("{"):
            request = json.loads(cmd)
            if "rank" not in request:
                _say({"error": f"unknown command {cmd!r}; use epoch, eval, rank or quit"})
                continue
            r = request["rank"]
            t0 = time.perf_counter()
            n = rank(model, Path(r["queries"]), Path(r["out"]), n_items, int(r["k"]))
            _say({"ranked": n, "seconds": time.perf_counter() - t0})
        elif cmd == "quit":
            break
        elif cmd:
            _say({"error": f"unknown command {cmd!r}; use epoch, eval, rank or quit"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
