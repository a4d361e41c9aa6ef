"""Synthetic sequential datasets a model can learn, written as RecBole atomic files.

The generative story, all of it seeded (``numpy.random.SeedSequence(seed)``), so the same
arguments give byte-identical files:

* **Items** have a Zipf popularity (weight ``1 / rank**zipf_a``, ranks shuffled over ids) and belong to
  one of ``~sqrt(n_items)/2`` latent clusters. Each item has ``SUCCESSORS`` fixed successor items,
  drawn from its own cluster in proportion to popularity, so popular items also receive most of the
  transitions and the popularity of the generated data stays heavy-tailed.
* **Users** have a home cluster (drawn by cluster popularity) and a sequence length from a log-normal
  (skewed, long tail) plus ``MIN_LEN`` = 5; the lengths sum exactly to ``n_interactions``.
* **Sequences.** The first item comes from the home cluster. Then, with probability ``1 - noise``, the
  next item is a successor of the previous one; *which* successor depends on a skewed draw shifted by
  the item two steps back (a second-order dependency a model with context can exploit beyond a
  first-order Markov chain). With probability ``noise`` the user jumps: half the time within their
  home cluster (a long-range signal), half the time to a globally popular item.
* **Timestamps** increase strictly per user (exponential gaps, at least 1 s); ratings are 1-5.

Generation is vectorised across users (one step of every active user at a time) and done in chunks
of users, each chunk written before the next is generated, so memory is bounded by the chunk size
(not by ``n_interactions``). Files go to a temporary folder beside the target and are renamed into
place at the end: an interrupted run leaves no half-written dataset.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mlconnect.errors import MlconnectError, UsageError
from mlconnect.fileio import fsync_dir

MIN_LEN = 5
SUCCESSORS = 4
SUCCESSOR_P = np.array([0.55, 0.25, 0.12, 0.08])
_SUCCESSOR_CDF = np.cumsum(SUCCESSOR_P)
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEM_HEADER = "item_id:token\ttitle:token_seq\tcluster:token\n"
RATING_P = np.array([0.06, 0.11, 0.27, 0.34, 0.22])  # close to ml-100k's rating histogram
T0 = 1_000_000_000  # 2001-09-09, so timestamps look like MovieLens' Unix seconds
CHUNK_INTERACTIONS = 1 << 21  # users are generated in chunks of about this many interactions
WRITE_ROWS = 1 << 18  # rows formatted per write call


@contextmanager
def staging_dir(out_dir: Path, name: str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out_dir/name``; on success rename it into place.

    On an exception the temporary folder is removed and nothing at ``out_dir/name`` changes. An
    existing ``out_dir/name`` is an error unless ``overwrite`` (then it is swapped out and removed
    only after the new one is in place).
    """
    if not name or name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise UsageError(f"bad dataset name {name!r}", "use a plain folder name such as ml-100k or synthetic")
    out_dir = Path(out_dir)
    final = out_dir / name
    if final.exists() and not overwrite:
        raise MlconnectError(f"{final} already exists",
                             "choose another --name or --out, or pass --force to replace it")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=out_dir))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a dataset folder is an ordinary folder
    except OSError as exc:
        raise MlconnectError(f"cannot write to {out_dir}: {exc.strerror or exc}",
                             "choose a writable output folder") from exc
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=out_dir))
            os.replace(final, old / name)
        os.replace(tmp, final)
        fsync_dir(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def format_int_rows(columns: list[np.ndarray]) -> bytes:
    """Tab-separated decimal rows of non-negative integer columns, vectorised (no per-row Python).

    Each column becomes a fixed-width matrix of ASCII digits plus a mask of the significant ones;
    the masked bytes of the concatenated matrix, read row-major, are the text.
    """
    blocks: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    n = len(columns[0])
    for i, col in enumerate(columns):
        col = np.asarray(col, dtype=np.int64)
        width = len(str(int(col.max()))) if n else 1
        pow10 = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
        digits = (col[:, None] // pow10) % 10
        mask = col[:, None] >= pow10
        mask[:, -1] = True  # zero is written as "0"
        blocks.append((digits + 48).astype(np.uint8))
        masks.append(mask)
        sep = np.full((n, 1), 10 if i == len(columns) - 1 else 9, dtype=np.uint8)
        blocks.append(sep)
        masks.append(np.ones((n, 1), dtype=bool))
    return np.concatenate(blocks, axis=1)[np.concatenate(masks, axis=1)].tobytes()


def _lengths(rng: np.random.Generator, n_users: int, n_interactions: int) -> np.ndarray:
    """Skewed per-user lengths >= MIN_LEN summing exactly to ``n_interactions``."""
    extra = n_interactions - MIN_LEN * n_users
    w = rng.lognormal(0.0, 1.2, n_users)
    w = np.minimum(w, 40.0 * w.mean())  # bound the longest history (and the step loop)
    alloc = np.floor(extra * w / w.sum()).astype(np.int64)
    rest = int(extra - alloc.sum())
    if rest:
        alloc[rng.choice(n_users, rest, replace=False)] += 1
    return alloc + MIN_LEN


class _World:
    """Item popularity, clusters and successor table, shared by every chunk of users."""

    def __init__(self, rng: np.random.Generator, n_items: int, n_clusters: int, zipf_a: float) -> None:
        ids = rng.permutation(n_items) + 1  # ids[r] is the item of popularity rank r
        weight = np.empty(n_items + 1)
        weight[0] = 0.0
        weight[ids] = 1.0 / np.arange(1, n_items + 1) ** zipf_a
        cluster = np.zeros(n_items + 1, dtype=np.int64)
        cluster[1:] = rng.integers(0, n_clusters, n_items)
        # Items grouped by cluster; cdf spans (c, c + 1] over cluster c, so a draw for cluster c is
        # searchsorted(cdf, c + u) and a whole vector of users with different clusters is one call.
        by_cluster = np.argsort(cluster[1:], kind="stable") + 1
        cl_of = cluster[by_cluster]
        w = weight[by_cluster]
        totals = np.bincount(cl_of, weights=w, minlength=n_clusters)
        present = totals > 0
        cum = np.cumsum(w)
        starts = np.searchsorted(cl_of, np.arange(n_clusters))
        before = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
        within = (cum - before[cl_of]) / np.where(present, totals, 1.0)[cl_of]
        within[np.r_[starts[1:], len(cl_of)][present] - 1] = 1.0  # exact 1 at each cluster's end
        self.cdf = cl_of + within
        self.by_cluster = by_cluster
        self.cluster = cluster
        self.global_cdf = np.cumsum(weight[1:]) / weight[1:].sum()
        # Home clusters are drawn by their share of popularity; empty clusters never.
        self.cluster_cdf = np.cumsum(totals) / totals.sum()
        # Successors: SUCCESSORS draws from the item's own cluster, never the item itself.
        succ = self.in_cluster(rng, np.repeat(cluster[1:], SUCCESSORS)).reshape(n_items, SUCCESSORS)
        own = np.arange(1, n_items + 1)[:, None]
        if n_items > 1:
            alt = self.draw_global(rng, succ.size).reshape(succ.shape)
            alt = np.where(alt == own, own % n_items + 1, alt)
            succ = np.where(succ == own, alt, succ)
        self.succ = np.vstack([np.zeros((1, SUCCESSORS), dtype=np.int64), succ])

    def in_cluster(self, rng: np.random.Generator, clusters: np.ndarray) -> np.ndarray:
        u = rng.random(len(clusters))
        idx = np.searchsorted(self.cdf, clusters + np.maximum(u, 1e-12), side="left")
        return self.by_cluster[np.minimum(idx, len(self.by_cluster) - 1)]

    def draw_global(self, rng: np.random.Generator, n: int) -> np.ndarray:
        idx = np.searchsorted(self.global_cdf, rng.random(n), side="right")
        return np.minimum(idx, len(self.global_cdf) - 1) + 1

    def draw_home(self, rng: np.random.Generator, n: int) -> np.ndarray:
        idx = np.searchsorted(self.cluster_cdf, rng.random(n), side="right")
        return np.minimum(idx, len(self.cluster_cdf) - 1)


def _sequences(rng: np.random.Generator, world: _World, lengths: np.ndarray, noise: float) -> np.ndarray:
    """Items of a chunk of users, flat, user after user (each user's items in time order)."""
    n = len(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    out = np.empty(int(lengths.sum()), dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")  # the active users at step t are a prefix
    sorted_len = lengths[order]
    pos = offsets[order]
    home = world.draw_home(rng, n)[order]
    prev2 = np.zeros(n, dtype=np.int64)
    prev = world.in_cluster(rng, home)
    out[pos] = prev
    # active[t] = how many users have more than t items (lengths are sorted descending)
    active = np.searchsorted(-sorted_len, -np.arange(int(sorted_len[0])), side="left")
    for t in range(1, int(sorted_len[0])):
        k = int(active[t])
        p1, p2, h = prev[:k], prev2[:k], home[:k]
        slot = (np.searchsorted(_SUCCESSOR_CDF, rng.random(k), side="right") + p2) % SUCCESSORS
        follow = world.succ[p1, slot]
        jump_home = world.in_cluster(rng, h)
        jump_far = world.draw_global(rng, k)
        r = rng.random(k)
        nxt = np.where(r >= noise, follow, np.where(r < noise / 2, jump_home, jump_far))
        out[pos[:k] + t] = nxt
        prev2 = p1
        prev = nxt
    return out


def _check(n_users: int, n_items: int, n_interactions: int, noise: float) -> None:
    problems = []
    if n_users < 1:
        problems.append(f"users must be >= 1 (got {n_users})")
    if n_items < 2:
        problems.append(f"items must be >= 2 (got {n_items})")
    if n_interactions < MIN_LEN * max(n_users, 1):
        problems.append(f"interactions must be at least {MIN_LEN} per user "
                        f"({MIN_LEN * max(n_users, 1)} for {n_users} users, got {n_interactions})")
    if not 0.0 <= noise <= 1.0:
        problems.append(f"noise must be between 0 and 1 (got {noise})")
    if problems:
        raise UsageError("synthetic dataset: " + "; ".join(problems),
                         "fix the numbers (e.g. --users 1000 --items 1700 --interactions 100000)")


def generate(out_dir: str | os.PathLike[str], name: str = "synthetic", n_users: int = 1000,
             n_items: int = 1700, n_interactions: int = 100_000, seed: int = 0, noise: float = 0.3,
             *, zipf_a: float = 0.8, n_clusters: int | None = None, overwrite: bool = False) -> Path:
    """Write ``out_dir/name/name.inter`` and ``name.item`` and return the dataset folder.

    Same arguments, same bytes. ``noise`` in [0, 1] is the share of steps that ignore the
    sequential structure (0: fully structured, 1: popularity and home cluster only).
    Raises ``UsageError`` for impossible sizes and ``MlconnectError`` when the folder already
    exists (unless ``overwrite``) or cannot be written.
    """
    _check(n_users, n_items, n_interactions, noise)
    if n_clusters is None:
        n_clusters = max(1, round(np.sqrt(n_items) / 2))
    ss = np.random.SeedSequence(seed)
    world_ss, len_ss, chunk_ss = ss.spawn(3)
    world = _World(np.random.default_rng(world_ss), n_items, n_clusters, zipf_a)
    lengths = _lengths(np.random.default_rng(len_ss), n_users, n_interactions)
    # Chunk boundaries depend only on the lengths, so the output does not depend on memory.
    bounds = np.searchsorted(np.cumsum(lengths), np.arange(CHUNK_INTERACTIONS, n_interactions,
                                                           CHUNK_INTERACTIONS), side="left") + 1
    edges = [0, *sorted(set(int(b) for b in bounds if 0 < b < n_users)), n_users]
    chunk_seeds = chunk_ss.spawn(len(edges) - 1)
    with staging_dir(Path(out_dir), name, overwrite=overwrite) as tmp:
        with open(tmp / f"{name}.inter", "wb") as f:
            f.write(INTER_HEADER.encode())
            for lo, hi, cs in zip(edges[:-1], edges[1:], chunk_seeds, strict=True):
                rng = np.random.default_rng(cs)
                lens = lengths[lo:hi]
                items = _sequences(rng, world, lens, noise)
                users = np.repeat(np.arange(lo + 1, hi + 1, dtype=np.int64), lens)
                gaps = 1 + rng.exponential(6 * 3600.0, len(items)).astype(np.int64)
                starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
                csum = np.cumsum(gaps)
                # per-user cumulative sum: subtract the running total before each user's first row
                base = np.repeat(csum[starts] - gaps[starts], lens)
                t0 = np.repeat(T0 + rng.integers(0, 200 * 86400, len(lens)), lens)
                ts = t0 + csum - base
                ratings = np.searchsorted(np.cumsum(RATING_P), rng.random(len(items)), side="right") + 1
                ratings = np.minimum(ratings, 5)
                for a in range(0, len(items), WRITE_ROWS):
                    b = a + WRITE_ROWS
                    f.write(format_int_rows([users[a:b], items[a:b], ratings[a:b], ts[a:b]]))
        ids = np.arange(1, n_items + 1)
        with open(tmp / f"{name}.item", "w", encoding="utf-8") as f:
            f.write(ITEM_HEADER)
            f.writelines(f"{i}\titem {i}\tc{c}\n" for i, c in zip(ids, world.cluster[1:], strict=True))
    return Path(out_dir) / name
