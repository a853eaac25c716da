"""Text corpora for perplexity and calibration, and SparseGPT's calibration windows over them.

Corpora (`perplexity_corpus`), each cut into a "calib" head and an "eval" tail that share nothing:
  pydoc         Python's reference topics, shipped with CPython (`pydoc_data.topics`): always there.
  pydocs-prose  reST sources of Debian's python3.11-doc (tutorial, howto, faq, whatsnew).
  wikitext2, c4 through `datasets` from the hub, or from local files with `data_files=`; joined
                as SparseGPT's datautils.py does (github.com/IST-DASLab/sparsegpt).
Calibration windows (`calibration_set`) are SparseGPT's random fixed-length token windows, made
non-overlapping so no token is seen twice. Deterministic by seed; offline by default.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import torch

from workbench.hub import require_hub

PYDOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")
_CALIB_SHARE = Fraction(3, 5)   # least share of characters in a local corpus's calib head
_JOIN = "\n\n"


# ---------------------------------------------------------------- corpora

@dataclass(frozen=True)
class Corpus:
    """A text for perplexity or calibration; `fingerprint` goes into every record that used it."""
    name: str
    split: str
    text: str = field(repr=False)

    @cached_property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.name}|{self.split}|{self.text}".encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.text)


@dataclass(frozen=True)
class HubCorpus:
    """Where a hub corpus lives and how its rows become one text."""
    path: str
    config: str | None
    splits: dict[str, str]                          # our split name or alias -> dataset split
    column: str = "text"
    joiner: str = _JOIN
    data_files: dict[str, str] | None = None        # hub files per dataset split
    max_rows: dict[str, int] = field(default_factory=dict)   # head of a split, per dataset split


HUB_CORPORA: dict[str, HubCorpus] = {
    # The legacy alias "wikitext" may not resolve with recent huggingface_hub; the datasets
    # maintainers point to Salesforce/wikitext (github.com/lance-format/lance/pull/5827).
    "wikitext2": HubCorpus(
        "Salesforce/wikitext", "wikitext-2-raw-v1",
        {"train": "train", "validation": "validation", "test": "test",
         "calib": "train", "eval": "test"},
    ),
    # SparseGPT reads the first train and validation shards, and evaluates on the first 1100
    # validation documents joined by " ". A whole train shard (~356k documents) is more text
    # than any calibration set needs, so only its head is read.
    "c4": HubCorpus(
        "allenai/c4", None,
        {"train": "train", "validation": "validation", "calib": "train", "eval": "validation"},
        joiner=" ",
        data_files={"train": "en/c4-train.00000-of-01024.json.gz",
                    "validation": "en/c4-validation.00000-of-00008.json.gz"},
        max_rows={"train": 5000, "validation": 1100},
    ),
}
CORPORA = ("pydoc", "pydocs-prose", *HUB_CORPORA)
_LOCAL_SPLITS = {"calib": "calib", "train": "calib", "eval": "eval", "test": "eval"}
_BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}


def _head_or_tail(parts: list[str], split: str) -> str:
    """Cut between whole documents after the shortest head holding at least 60% of the
    characters, so calib and eval never share a document and calib never falls below 60%
    (pydoc's closest cut, 57.6%, leaves SmolLM2 127 windows of 512 tokens, one short of 128)."""
    if len(parts) < 2:
        raise ValueError(f"need at least two documents to split a corpus, got {len(parts)}")
    ends = list(itertools.accumulate(len(p) for p in parts))
    cut = next(k for k, end in enumerate(ends, 1) if end >= _CALIB_SHARE * ends[-1])
    cut = min(cut, len(parts) - 1)              # eval keeps at least one document
    return _JOIN.join(parts[:cut] if split == "calib" else parts[cut:])


def _pydoc_topics() -> list[str]:
    from pydoc_data.topics import topics  # dict topic -> text, generated at CPython's build

    return [topics[key] for key in sorted(topics)]


def _pydocs_prose() -> list[str]:
    root = Path(os.environ.get("WORKBENCH_PYDOCS_DIR") or PYDOCS_DIR)
    sections = ("tutorial", "howto", "faq", "whatsnew")
    files = sorted(p for s in sections if (root / s).is_dir() for p in (root / s).rglob("*.rst.txt"))
    if not files:
        raise FileNotFoundError(
            f"no *.rst.txt under {root}/{{{','.join(sections)}}}: the corpus 'pydocs-prose' needs "
            "Debian's Python docs (`apt-get install python3.11-doc`), or WORKBENCH_PYDOCS_DIR "
            "pointing at a copy of html/_sources"
        )
    return [p.read_text(encoding="utf-8") for p in files]


def _builder(path: str) -> str:
    name = path.lower().removesuffix(".gz")
    for ext, builder in _BUILDERS.items():
        if name.endswith(ext):
            return builder
    raise ValueError(f"cannot tell the format of {path!r}: use one of {', '.join(_BUILDERS)}")


def _local_files(data_files, split: str, hf_split: str) -> dict[str, str]:
    """data_files as {dataset split: path}: one path serves the asked split; a dict may be keyed
    by the asked split or the dataset split it maps to."""
    if isinstance(data_files, (str, os.PathLike)):
        return {hf_split: os.fspath(data_files)}
    if isinstance(data_files, dict):
        for key in (split, hf_split):
            if key in data_files:
                return {hf_split: os.fspath(data_files[key])}
        raise ValueError(f"data_files has no entry for split {split!r}: keys {sorted(data_files)}")
    raise TypeError(f"data_files must be a path or a dict split -> path, got {type(data_files).__name__}")


def _hub_corpus(name: str, split: str, data_files) -> Corpus:
    entry = HUB_CORPORA[name]
    if split not in entry.splits:
        raise ValueError(f"corpus {name!r} has splits {sorted(entry.splits)}, not {split!r}")
    hf_split = entry.splits[split]
    if data_files is None:
        require_hub(f"corpus {name!r}", hint="pass data_files=<local .jsonl/.json/.txt/.parquet "
                    "file> to read a local copy, or use the offline corpus 'pydoc'.")
        path, config = entry.path, entry.config
        files = {hf_split: entry.data_files[hf_split]} if entry.data_files else None
    else:
        files = _local_files(data_files, split, hf_split)
        path, config = _builder(files[hf_split]), None
    import datasets

    rows = entry.max_rows.get(hf_split)
    ds = datasets.load_dataset(path, config, data_files=files,
                               split=f"{hf_split}[:{rows}]" if rows else hf_split)
    return Corpus(name, hf_split, entry.joiner.join(ds[entry.column]))


def perplexity_corpus(name: str, split: str = "eval", *, data_files=None) -> Corpus:
    """The text of a corpus split. Local corpora ("pydoc", "pydocs-prose") have splits "calib"
    (alias "train") and "eval" (alias "test"); hub corpora read `data_files` when given."""
    if name in HUB_CORPORA:
        return _hub_corpus(name, split, data_files)
    if name not in ("pydoc", "pydocs-prose"):
        raise ValueError(f"unknown corpus {name!r}: valid names are {', '.join(CORPORA)}")
    if data_files is not None:
        raise ValueError(f"data_files applies to {', '.join(HUB_CORPORA)}, not to {name!r}")
    if split not in _LOCAL_SPLITS:
        raise ValueError(f"corpus {name!r} has splits {', '.join(_LOCAL_SPLITS)}, not {split!r}")
    split = _LOCAL_SPLITS[split]
    parts = _pydoc_topics() if name == "pydoc" else _pydocs_prose()
    return Corpus(name, split, _head_or_tail(parts, split))


# ---------------------------------------------------------------- calibration windows

@dataclass(frozen=True)
class _TokenizeJob:
    """Hashable on (tokenizer, text fingerprint) only; carries the objects it needs."""
    tokenizer_id: str
    fingerprint: str
    tokenizer: Any = field(compare=False, repr=False)
    text: str = field(compare=False, repr=False)


@lru_cache(maxsize=8)
def _token_stream(job: _TokenizeJob) -> torch.Tensor:
    # verbose=False: a whole corpus is longer than model_max_length, which is fine here.
    ids = job.tokenizer(job.text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)  # [ntokens]; shared by the cache, never mutated


def token_stream(tokenizer, corpus: Corpus) -> torch.Tensor:
    """The whole corpus as token ids [ntokens] (no special tokens), cached per tokenizer and text.
    Shared by calibration windows and perplexity; callers must not modify it."""
    tokenizer_id = f"{type(tokenizer).__name__}:{getattr(tokenizer, 'name_or_path', '')}:{len(tokenizer)}"
    return _token_stream(_TokenizeJob(tokenizer_id, corpus.fingerprint, tokenizer, corpus.text))


def _as_corpus(source: str | Corpus) -> Corpus:
    if isinstance(source, Corpus):
        return source
    if isinstance(source, str):
        return perplexity_corpus(source, "calib") if source in CORPORA else Corpus("text", "raw", source)
    raise TypeError(f"source must be a corpus name, a Corpus or a str, got {type(source).__name__}")


def calibration_set(tokenizer, source: str | Corpus = "pydoc", nsamples: int = 128,
                    seqlen: int = 512, seed: int = 0) -> torch.Tensor:
    """`nsamples` non-overlapping windows of `seqlen` tokens at random places in the source,
    in random order: LongTensor [nsamples, seqlen]. source: a corpus name (its "calib" split),
    a Corpus, or raw text."""
    if nsamples < 1 or seqlen < 2:
        raise ValueError(f"need nsamples >= 1 and seqlen >= 2, got {nsamples} and {seqlen}")
    corpus = _as_corpus(source)
    stream = token_stream(tokenizer, corpus)
    ntokens = stream.numel()
    if nsamples * seqlen > ntokens:
        raise ValueError(
            f"{corpus.name!r} ({corpus.split}) holds {ntokens} tokens: at most "
            f"{ntokens // seqlen} samples of {seqlen} tokens, not {nsamples}"
        )
    gen = torch.Generator().manual_seed(seed)
    # A random shift of the slot grid lets any token start a window across seeds; it is capped
    # so that the shifted grid still holds nsamples slots.
    slack = min(seqlen - 1, ntokens - nsamples * seqlen)
    offset = int(torch.randint(slack + 1, (1,), generator=gen))
    slots = torch.randperm((ntokens - offset) // seqlen, generator=gen)[:nsamples]
    starts = offset + slots * seqlen                              # [nsamples]
    return stream[starts[:, None] + torch.arange(seqlen)]         # [nsamples, seqlen]


def check_calib(calib: torch.Tensor) -> torch.Tensor:
    """Validate a calibration batch: a 2-D integer tensor of token ids [n, L] with n >= 1."""
    if not isinstance(calib, torch.Tensor):
        raise TypeError(f"calib must be a LongTensor of token ids [n, L], got {type(calib).__name__}")
    if calib.dtype.is_floating_point or calib.dtype.is_complex or calib.dtype == torch.bool:
        raise TypeError(f"calib must hold integer token ids, got dtype {calib.dtype}")
    if calib.dim() != 2:
        raise ValueError(f"calib must be 2-D [n, L], got shape {tuple(calib.shape)}")
    if calib.shape[0] < 1 or calib.shape[1] < 1:
        raise ValueError(f"calib must hold at least one token in one sequence, got {tuple(calib.shape)}")
    return calib.long()
