"""Paper tables: LaTeX (booktabs), GitHub Markdown and CSV from one DataFrame, with provenance.

    from workbench import tables
    tables.save_table(frame, "w8a8-ppl", caption="Perplexity at 50% sparsity",
                      label="tab:w8a8", float_format=".2f", config={"model": "smollm2-135m"})

The CSV is the data: every float at full precision, read back by pandas unchanged. The .tex and
.md files are views of it: float_format applies to them only. A named index (a pivot table's
or groupby's row labels) is written as leading columns; an unnamed index is not written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from workbench.export import check_name, results_root, write_result_set

FloatFormat = str | Callable[[float], str] | None

# Text-mode escapes for the characters LaTeX treats specially; needs no package beyond booktabs.
_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}
# One pass, so the braces of an inserted \textbackslash{} are never escaped again.
_LATEX_SPECIAL = re.compile("|".join(re.escape(c) for c in _LATEX_ESCAPES))
_LABEL = re.compile(r"[A-Za-z0-9:_.\-]+")


def latex_escape(text: str) -> str:
    """text with %, _, &, #, $, {, }, ~, ^, \\, <, > made literal in LaTeX text mode."""
    return _LATEX_SPECIAL.sub(lambda m: _LATEX_ESCAPES[m.group()], text)


def format_float(value: float, float_format: FloatFormat = None) -> str:
    """None: the shortest text that reads back as the same float; ".3f" or "{:.1%}": a format
    spec or format string; a callable: its result."""
    if float_format is None:
        return repr(float(value))
    if callable(float_format):
        return float_format(value)
    if "{" in float_format:
        return float_format.format(value)
    return format(value, float_format)


# ---------------------------------------------------------------- one frame, three views

def _flat(df: pd.DataFrame) -> pd.DataFrame:
    """The frame as written: a named index folded into columns, column labels as strings."""
    # A named index carries data (a pivot's or groupby's row labels); an unnamed one is row
    # numbering, gapped after filtering, and is dropped.
    if any(n is not None for n in df.index.names):
        df = df.reset_index()
    columns = [" / ".join(str(p) for p in c) if isinstance(c, tuple) else str(c) for c in df.columns]
    if len(set(columns)) != len(columns):
        raise ValueError(f"column labels must be distinct once written as text, got {columns}")
    df = df.copy()
    df.columns = columns
    return df


def _is_missing(value: Any) -> bool:
    return pd.api.types.is_scalar(value) and bool(pd.isna(value))


def _cell(value: Any, float_format: FloatFormat) -> str | None:
    """A cell's text, None when missing. Only floats are formatted: ints and bools stay exact."""
    if _is_missing(value):
        return None
    if isinstance(value, (float, np.floating)):
        return format_float(float(value), float_format)
    return str(value)


def _numeric_columns(df: pd.DataFrame) -> list[bool]:
    return [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
            for c in df.columns]


def to_latex(df: pd.DataFrame, caption: str | None = None, label: str | None = None,
             float_format: FloatFormat = None) -> str:
    """A booktabs tabular; inside a table float with \\caption / \\label if either is given.

    Cells, headers and the caption are escaped (so "50% sparse" stays text); missing cells
    print as "--". Numeric columns are right-aligned, the rest left-aligned.
    """
    df = _flat(df)
    align = "".join("r" if numeric else "l" for numeric in _numeric_columns(df))

    def row(cells: list[str]) -> str:
        return " & ".join(cells) + r" \\"

    body = [
        r"\begin{tabular}{" + align + "}",
        r"\toprule",
        row([latex_escape(c) for c in df.columns]),
        r"\midrule",
        *(row([latex_escape(t) if (t := _cell(v, float_format)) is not None else "--"
               for v in values]) for values in df.itertuples(index=False, name=None)),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    if caption is None and label is None:
        lines = body
    else:
        head = [r"\begin{table}[t]", r"\centering"]
        if caption is not None:
            head.append(r"\caption{" + latex_escape(caption) + "}")
        if label is not None:
            head.append(r"\label{" + label + "}")
        lines = [*head, *body, r"\end{table}"]
    return "% Written by workbench.tables; needs \\usepackage{booktabs}.\n" + "\n".join(lines) + "\n"


def to_markdown(df: pd.DataFrame, float_format: FloatFormat = None) -> str:
    """A GitHub (pipe) table; missing cells are empty, '|' inside a cell is escaped."""
    df = _flat(df)

    def md(text: str) -> str:
        return text.replace("|", r"\|").replace("\n", " ")

    rows = [[md(t) if (t := _cell(v, float_format)) is not None else "" for v in values]
            for values in df.itertuples(index=False, name=None)]
    align = ["right" if numeric else "left" for numeric in _numeric_columns(df)]
    # disable_numparse: the cells are already the text we want; tabulate must not reformat them.
    table = tabulate(rows, headers=[md(c) for c in df.columns], tablefmt="pipe",
                     disable_numparse=True, colalign=align)
    return table + "\n"


def to_csv(df: pd.DataFrame) -> str:
    """CSV at full float precision: pd.read_csv returns the same values."""
    return _flat(df).to_csv(index=False, lineterminator="\n")


def save_table(
    df: pd.DataFrame,
    name: str,
    results_dir: str | Path | None = None,
    caption: str | None = None,
    label: str | None = None,
    float_format: FloatFormat = None,
    config: Any = None,
    provenance: dict | None = None,
) -> dict[str, Path]:
    """Write results/tables/{name}.tex, .md, .csv and the sidecar {name}.json from df.

    caption is text (escaped like the cells); label is a LaTeX label such as "tab:ppl".
    float_format (".2f", "{:.1%}" or a callable) shapes floats in .tex and .md, never in .csv.
    results_dir defaults to $WORKBENCH_RESULTS, else the repository's results/. The sidecar
    holds config, provenance (default cache.provenance()) and each file's sha256.
    Returns {"tex", "md", "csv", "json"} -> path.
    """
    name = check_name(name)
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"save_table needs a pandas DataFrame, got {type(df).__name__}")
    if label is not None and not _LABEL.fullmatch(label):
        raise ValueError(f"label must be letters, digits and ':_.-' (e.g. 'tab:ppl'), got {label!r}")
    files = {
        "tex": to_latex(df, caption, label, float_format).encode("utf-8"),
        "md": to_markdown(df, float_format).encode("utf-8"),
        "csv": to_csv(df).encode("utf-8"),
    }
    meta = {
        "kind": "table",
        "caption": caption,
        "label": label,
        "float_format": float_format if float_format is None or isinstance(float_format, str)
        else getattr(float_format, "__qualname__", repr(float_format)),
        "columns": list(_flat(df).columns),
        "rows": len(df),
        "config": config,
    }
    return write_result_set(results_root(results_dir) / "tables", name, files, meta, provenance)
