"""A model bundle on disk: what ``mlconnect export`` writes and the bundle server, ``predict`` and the
Docker image read.

A bundle is a folder: ``model.onnx`` (the scoring graph), ``vocab.json`` (raw ids in internal-id
order), ``histories.npz`` (every user's items, for ``user_id`` requests and ``--exclude-seen``),
``items.json`` (item metadata) and ``card.json``, which records where the model came from and a
sha256 of every other file. Reading a bundle checks those digests first, so a changed byte or a
missing file is one error line naming the file rather than a wrong answer later. The card is sealed
too (``card_sha256``, over its own canonical JSON): its fields (``max_len``, the ``files`` list...)
decide every answer, so an edited card is refused like an edited model. ``export --docker``'s
Dockerfile and requirements.txt are deployment settings the user may edit: not checksummed.

Imports numpy and onnxruntime only (never torch or the engine): this module runs in the slim
serving image.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mlconnect.errors import MlconnectError

FORMAT_VERSION = 1
CARD = "card.json"
ONNX_MODEL = "model.onnx"
TORCH_MODEL = "model.pt2"
ENCODER_MODEL = "encoder.onnx"          # items -> user vectors [B, H (+1)]: predict's path (deploy/topk.py)
ITEM_CANDIDATES_MODEL = "item_candidates.onnx"  # user vectors (8-bit) -> candidate scores (topk.candidates_graph)
ITEM_TABLE = "item_table.npy"           # [whole groups of items, H (+1)] float32: exact scores (topk.item_rows)
VOCAB = "vocab.json"
HISTORIES = "histories.npz"
ITEMS = "items.json"
# The graph's interface (export.py writes it, Scorer reads it).
INPUTS = ("items", "seen", "k")  # [B, max_len] right-padded ids, [B, S] ids to rank last, [k] (only its length counts)
OUTPUTS = ("scores", "ids")      # [B, k] best first
CARD_DIGEST = "card_sha256"      # sha256 of the card's canonical JSON without this key (card_digest)
DOCKERFILE, REQUIREMENTS = "Dockerfile", "requirements.txt"  # export --docker's build settings (docker.py)
DOCKER_RECIPE = (DOCKERFILE, REQUIREMENTS)  # the user's to edit (port, index, a bumped pin): not checksummed
# What a reader runs or reads: when one of these is in the folder, card["files"] must list it, so that
# dropping its digest from the card cannot switch its check off.
CONTENT_FILES = (ONNX_MODEL, TORCH_MODEL, ENCODER_MODEL, ITEM_CANDIDATES_MODEL, ITEM_TABLE, VOCAB, HISTORIES, ITEMS)
ENCODER_FILES = (ENCODER_MODEL, ITEM_CANDIDATES_MODEL, ITEM_TABLE)  # predict's path: all three or none
MODEL_FILE = {"onnx": ONNX_MODEL, "torch": TORCH_MODEL}


class BundleError(MlconnectError):
    """A bundle folder that is missing, incomplete or changed since export."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except the card itself and the Docker build settings, by
    relative POSIX path (the wheel stays in: it is the server's code)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != CARD and rel not in DOCKER_RECIPE:
            out[rel] = sha256_file(p)
    return out


def card_digest(card: dict[str, Any]) -> str:
    """sha256 of the card without its ``card_sha256``, as sorted, compact JSON: the same however the file
    is indented, and different after any change to a value."""
    body = {k: v for k, v in card.items() if k != CARD_DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def seal_card(card: dict[str, Any]) -> dict[str, Any]:
    """The card as export writes it: plain JSON values (as a reader reads them back) plus its digest."""
    plain = json.loads(json.dumps(card, default=str))
    plain[CARD_DIGEST] = card_digest(plain)
    return plain


def read_card(root: Path) -> dict[str, Any]:
    path = root / CARD
    if not root.is_dir():
        raise BundleError(f"no bundle at {root}", "export one with `mlconnect export NAME --out DIR`")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path} is missing: {root} is not a complete bundle",
                          "export it again with `mlconnect export NAME --out DIR`") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc})", "export the bundle again") from None
    if not isinstance(card, dict) or not isinstance(card.get("files"), dict):
        raise BundleError(f"{path} has no 'files' digests", "export the bundle again")
    if card.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path} has format_version {card.get('format_version')!r}; this mlconnect reads "
                          f"{FORMAT_VERSION}", "export it again with this mlconnect version")
    # A card without a digest is an export from before it existed: its fields are still checked below.
    if CARD_DIGEST in card and card[CARD_DIGEST] != card_digest(card):
        raise BundleError(f"{path} does not match its {CARD_DIGEST} (edited after export)",
                          "copy the bundle again from its source, or export again")
    check_card(root, card)
    return card


def check_card(root: Path, card: dict[str, Any]) -> None:
    """The card's fields a reader relies on: the model file its format runs, a positive ``max_len``,
    and a digest in ``files`` for every file a reader opens (one error naming what is wrong)."""
    path = root / CARD
    fmt, model_file = card.get("format"), card.get("model_file")
    if fmt not in MODEL_FILE or model_file != MODEL_FILE[fmt]:
        raise BundleError(f"{path}: format {fmt!r} with model_file {model_file!r} is not a bundle this mlconnect "
                          "reads", "export the bundle again")
    for key, least in (("max_len", 1), ("length_slot", 0)):
        value = card.get(key, least)
        if type(value) is not int or value < least:
            raise BundleError(f"{path}: {key} {value!r} is not a whole number >= {least}", "export the bundle again")
    files = card["files"]
    listed_encoder = [f for f in ENCODER_FILES if f in files]
    needed = [model_file, VOCAB, HISTORIES, *(ENCODER_FILES if listed_encoder else ())]
    needed += [f for f in CONTENT_FILES if (root / f).exists()]
    for name in dict.fromkeys(needed):
        if name not in files:
            raise BundleError(f"{path} has no sha256 for {name} in 'files' (edited after export)",
                              "copy the bundle again from its source, or export again")


def verify_files(root: Path, card: dict[str, Any]) -> None:
    """Every file the card lists is there with the same sha256 (the first one that is not is the error)."""
    for rel, digest in card["files"].items():
        path = root / rel
        if not path.is_file():
            raise BundleError(f"{path} is missing from the bundle", "copy the whole bundle folder, or export again")
        if sha256_file(path) != digest:
            raise BundleError(f"{path} does not match its sha256 in {CARD} (changed after export)",
                              "copy the bundle again from its source, or export again")


class Bundle:
    """A verified bundle's id maps, histories and metadata. Build it with :meth:`load`."""

    def __init__(self, root: Path, card: dict[str, Any]) -> None:
        self.root, self.card = root, card
        vocab = json.loads((root / VOCAB).read_text(encoding="utf-8"))
        self.item_ids: list[str] = [str(i) for i in vocab["item_ids"]]
        self.user_ids: list[str] = [str(u) for u in vocab["user_ids"]]
        self.item_index = {raw: i for i, raw in enumerate(self.item_ids) if i > 0}
        self.user_index = {raw: i for i, raw in enumerate(self.user_ids) if i > 0}
        with np.load(root / HISTORIES, allow_pickle=False) as h:
            self.flat, lengths = h["items"].astype(np.int64), h["lengths"].astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        items_path = root / ITEMS
        self.items_meta: dict[str, dict[str, Any]] = (
            json.loads(items_path.read_text(encoding="utf-8")) if items_path.is_file() else {})
        self.max_len = int(card["max_len"])
        self.trim = bool(card.get("dynamic_length"))  # see pad_batch
        self.slot = int(card.get("length_slot", 1))    # positions past the longest history (BERT4Rec's mask)

    @classmethod
    def load(cls, root: str | os.PathLike[str], *, check: bool = True) -> Bundle:
        root = Path(root)
        card = read_card(root)
        if check:
            verify_files(root, card)
        try:
            return cls(root, card)
        except (OSError, ValueError, KeyError) as exc:
            raise BundleError(f"{root}: cannot read the bundle ({exc})", "export it again") from None

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    def history(self, user: int) -> np.ndarray:
        """Internal item ids of internal user ``user``, oldest first."""
        return self.flat[self.offsets[user]: self.offsets[user + 1]]

    def lengths(self, users: np.ndarray) -> np.ndarray:
        return self.offsets[users + 1] - self.offsets[users]

    def batch(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`pad_batch` of these internal users' histories, as the bundle's graphs take them."""
        return pad_ragged(self.flat, self.offsets, users, self.max_len, self.trim, self.slot)


def pad_batch(histories: list[np.ndarray] | list[list[int]], max_len: int,
              trim: bool = False, slot: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The graph's two inputs: the last ``max_len`` ids right-padded (as the engine feeds them), and the
    whole history to rank last (``exclude_seen``), 0-padded; padding id 0 is never ranked anyway.

    ``trim`` (a graph with a dynamic length): pad only to the longest history plus ``slot`` instead of
    ``max_len``. Right padding is never attended to, so the answer is the same and short histories
    cost a fraction of the compute (``slot`` 1 is BERT4Rec's mask position after the last item; the
    bundle's card says which its model needs, ``length_slot``).
    """
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    flat = (np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if lengths.sum()
            else np.zeros(0, dtype=np.int64))
    return pad_ragged(flat, np.concatenate([[0], np.cumsum(lengths)]), np.arange(len(histories)), max_len, trim,
                      slot)


def pad_ragged(flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray, max_len: int,
               trim: bool = False, slot: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pad_batch` of the histories ``flat[offsets[r]:offsets[r + 1]]`` for each ``r`` in ``rows``,
    with array indexing rather than a Python loop per history (predict pads a million of them)."""
    start, end = offsets[rows], offsets[rows + 1]
    lengths = end - start
    longest = int(lengths.max()) if len(rows) else 1
    width = min(max_len, max(1, longest + slot)) if trim else max_len
    tail = np.minimum(lengths, max_len)
    items = _gather(flat, (end - tail)[:, None] + np.arange(width), np.arange(width) < tail[:, None])
    seen_width = max(1, longest)
    seen = _gather(flat, start[:, None] + np.arange(seen_width), np.arange(seen_width) < lengths[:, None])
    return items, seen


def _gather(flat: np.ndarray, index: np.ndarray, keep: np.ndarray) -> np.ndarray:
    if len(flat) == 0:
        return np.zeros(index.shape, dtype=np.int64)
    return np.where(keep, flat[np.minimum(index, len(flat) - 1)], 0).astype(np.int64, copy=False)


class Scorer:
    """The ONNX graph under ONNX Runtime: on CUDA when this onnxruntime has it, else the CPU."""

    def __init__(self, model_path: Path | bytes, threads: int | None = None, spin: bool = True,
                 cpu: bool = False) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        if not spin:  # a server: idle pool threads must not busy-wait on the cores the event loop needs
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        wanted = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                  if p in ort.get_available_providers() and (p == "CPUExecutionProvider" or not cpu)]
        try:
            source = model_path if isinstance(model_path, bytes) else str(model_path)
            self.session = ort.InferenceSession(source, opts, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own types for a corrupt or foreign file
            name = "an ONNX graph in memory" if isinstance(model_path, bytes) else model_path
            raise BundleError(f"{name}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]})",
                              "export the bundle again with this mlconnect version") from None
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def topk(self, items: np.ndarray, seen: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [B, k] float32, internal ids [B, k] int64), best first; seen ids score -inf."""
        scores, ids = self.session.run(list(OUTPUTS), {"items": items, "seen": seen,
                                                        "k": np.zeros(k, dtype=np.int64)})
        return scores, ids

