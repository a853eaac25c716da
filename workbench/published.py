"""Perplexities the pruning papers publish, to print beside ours where the setting matches
(method, layer sparsity, refinement, sparsity). Their models and corpus differ from ours
(LLaMA on WikiText2 against SmolLM2-135M on pydoc), so compare ratios to each one's dense
model, not the raw values.

- OWL (Yin et al. 2023, arXiv 2310.05175), its README: LLaMA-1-7B, WikiText2, 70% unstructured:
  SparseGPT 26.30 -> 19.49 with OWL, Wanda 85.77 -> 24.55; dense 5.68.
- RIA (Zhang et al., ICLR 2024), its repository's README: LLaMA-3-8B, WikiText2, 50%
  unstructured: RIA 9.34, SparseGPT 9.40, Wanda 10.82; dense 6.14.
DSnoT's paper (arXiv 2310.08915) reports its own tables; none is quoted here.
"""

from __future__ import annotations

# (source, model, dense ppl, method, layer_sparsity, refine, sparsity, ppl)
PUBLISHED_PPL = (
    ("OWL README", "LLaMA-1-7B", 5.68, "sparsegpt", "uniform", "none", 0.7, 26.30),
    ("OWL README", "LLaMA-1-7B", 5.68, "sparsegpt", "owl", "none", 0.7, 19.49),
    ("OWL README", "LLaMA-1-7B", 5.68, "wanda", "uniform", "none", 0.7, 85.77),
    ("OWL README", "LLaMA-1-7B", 5.68, "wanda", "owl", "none", 0.7, 24.55),
    ("RIA README", "LLaMA-3-8B", 6.14, "ria", "uniform", "none", 0.5, 9.34),
    ("RIA README", "LLaMA-3-8B", 6.14, "sparsegpt", "uniform", "none", 0.5, 9.40),
    ("RIA README", "LLaMA-3-8B", 6.14, "wanda", "uniform", "none", 0.5, 10.82),
)


def beside_published(frame):
    """frame (a sweep with method, layer_sparsity, refine, target, ppl and a dense row) with
    ppl_vs_dense and, where a paper reports the same setting, its source, model, ppl and
    ppl_vs_dense (one row per matching paper number; rows without one keep NaN)."""
    import pandas as pd

    dense = float(frame.loc[frame["method"] == "dense", "ppl"].iloc[0])
    ours = frame[frame["method"] != "dense"].copy()
    ours["ppl_vs_dense"] = ours["ppl"] / dense
    papers = pd.DataFrame(PUBLISHED_PPL, columns=["paper", "paper_model", "paper_dense", "method",
                                                  "layer_sparsity", "refine", "target",
                                                  "paper_ppl"])
    papers["paper_vs_dense"] = papers["paper_ppl"] / papers["paper_dense"]
    merged = ours.merge(papers.drop(columns="paper_dense"), how="left",
                        on=["method", "layer_sparsity", "refine", "target"])
    return merged.reset_index(drop=True)
