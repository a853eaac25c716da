"""Training examples and the order they are drawn in: padding into batches, shuffled passes,
and length-bucketed batches (examples of similar length together, so less compute goes into
padding).

- `collate` right-pads a list of `Example`s into input_ids / attention_mask / labels [B, T].
- `ExampleSampler` draws every batch full from seeded shuffled passes. With `lengths` it
  buckets: each pass's permutation is cut into chunks of BUCKET_BATCHES batches, each chunk is
  sorted by length (ties keep the permutation's order) and cut into batches, and the full
  batches are shuffled across the pass (the short last one stays last). Batches then hold
  examples of near-equal length while their composition and order stay random, as in
  fairseq's and tf.data's bucketing. Its state (generator, current order, position) is
  checkpointed, so a resumed run draws the same batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE = -100       # label of tokens that carry no loss (prompt, padding): torch's ignore_index
BUCKET_BATCHES = 32  # batches per sorting chunk: wide enough to match lengths, small enough to mix


@dataclass(frozen=True)
class Example:
    """One training sequence: token ids [T] and labels [T] (IGNORE where no loss is taken).
    labels[t] is the token at t itself; the loss shifts it (position t-1 predicts it)."""
    input_ids: torch.Tensor
    labels: torch.Tensor


def collate(examples: Sequence[Example], device=None) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask, labels, each [B, T]. The pad
    id is 0; padded positions are masked out of attention and carry label IGNORE."""
    T = max(len(e.input_ids) for e in examples)
    batch = {"input_ids": torch.zeros(len(examples), T, dtype=torch.long),
             "attention_mask": torch.zeros(len(examples), T, dtype=torch.long),
             "labels": torch.full((len(examples), T), IGNORE, dtype=torch.long)}
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        batch["input_ids"][row, :n] = e.input_ids
        batch["attention_mask"][row, :n] = 1
        batch["labels"][row, :n] = e.labels
    return {k: v.to(device) for k, v in batch.items()}


def bucketed_order(perm: torch.Tensor, lengths: torch.Tensor, batch_size: int,
                   generator: torch.Generator) -> torch.Tensor:
    """perm [N] rearranged so that each run of batch_size indices holds examples of similar
    length (see module docstring). lengths [N]: tokens per example."""
    chunk = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(perm), chunk):
        part = perm[start: start + chunk]
        part = part[torch.sort(lengths[part], stable=True).indices]    # by length, ties by perm
        batches += list(part.split(batch_size))
    tail = [batches.pop()] if len(batches[-1]) < batch_size else []
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return torch.cat([batches[i] for i in shuffled] + tail)


class ExampleSampler:
    """Indices of the next batch: shuffled passes over the examples from a seeded generator,
    drawing a new permutation when one runs out, so every batch is full. lengths (one per
    example) turns on length bucketing."""

    def __init__(self, n: int, batch_size: int, seed: int, lengths: Sequence[int] | None = None):
        self.n, self.batch_size = n, batch_size
        self.lengths = None if lengths is None else torch.as_tensor(lengths, dtype=torch.long)
        if self.lengths is not None and len(self.lengths) != n:
            raise ValueError(f"lengths has {len(self.lengths)} entries for {n} examples")
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.empty(0, dtype=torch.long), 0

    def _new_pass(self) -> torch.Tensor:
        perm = torch.randperm(self.n, generator=self.generator)
        if self.lengths is None:
            return perm
        return bucketed_order(perm, self.lengths, self.batch_size, self.generator)

    def next(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            if self.pos == len(self.order):
                self.order, self.pos = self._new_pass(), 0
            take = self.order[self.pos: self.pos + self.batch_size - len(out)]
            out += take.tolist()
            self.pos += len(take)
        return out

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.pos = state["order"].clone(), int(state["pos"])
