"""Early stopping on a dev score: train until the score stops improving, keep the best.

`Plateau` records every evaluation (step, score and whatever else the evaluator returned),
remembers the best one (strictly higher score; a tie keeps the earlier step, so the shorter
run wins), and says to stop once `patience` evaluations in a row have not improved on it
(patience 0: never stop early). Its state is plain data, saved in training checkpoints, so a
resumed run stops where the uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class Plateau:
    patience: int = 0
    curve: list[dict] = field(default_factory=list)    # one row per evaluation: step, score, ...
    best_step: int | None = None
    best_score: float = -math.inf
    since_best: int = 0                                 # evaluations since the best one

    def update(self, step: int, score: float, **extra) -> bool:
        """Record an evaluation at `step`; True when it is a new best."""
        if not math.isfinite(score):
            raise ValueError(f"dev score at step {step} is {score}")
        self.curve.append({"step": step, "score": score, **extra})
        if score > self.best_score:
            self.best_step, self.best_score, self.since_best = step, score, 0
            return True
        self.since_best += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def evaluated_at(self, step: int) -> bool:
        return bool(self.curve) and self.curve[-1]["step"] == step

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)
