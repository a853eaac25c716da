"""Interactive explorers over precomputed sweeps (ipywidgets 8).

    frame = pd.read_csv("results/tables/sparsity_sweep.csv")        # notebook 02's sweep
    explorer = SparsityExplorer(frame, n_weights=106_168_320,
                                compute_point=..., sample=...)      # both optional
    explorer                                                         # the last line of a cell

Moving a control only reads the frame: no sweep is ever recomputed by a slider. A point the
sweep lacks is computed by an explicit button through `compute_point`, and a sample generation
through `sample`; notebook 06 wires both to sweep.prune_point and sweep.generation_sample, which
go through the result cache. The callbacks are methods, so tests drive the explorer by setting
widget values (`explorer.sparsity.value = 0.7`) and pressing `explorer.button.click()`.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Callable

import ipywidgets as W
import matplotlib.pyplot as plt
import pandas as pd

from workbench import plots
from workbench.roofline import bytes_per_weight, model_bytes

# column -> (label, format); shown when the frame has the column
METRICS = {"ppl": ("perplexity", "{:.2f}"), "arith": ("arith accuracy", "{:.1%}"),
           "tokens_per_s": ("tokens/s", "{:.1f}")}
QUANTS = (("FP32", "fp32"), ("INT8", "int8"))


def _normalized(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with the columns the explorer reads: quant (default fp32), structure (default
    unstructured) and target (the grid sparsity; default the reached sparsity, rounded)."""
    frame = frame.copy()
    if "method" not in frame or "sparsity" not in frame:
        raise ValueError("a sweep frame needs at least the columns method and sparsity")
    if "quant" not in frame:
        frame["quant"] = "fp32"
    if "structure" not in frame:
        frame["structure"] = "unstructured"
    if "target" not in frame:
        frame["target"] = frame["sparsity"].round(2)
    frame.loc[frame["method"] == "dense", ["target", "structure"]] = [0.0, "-"]
    return frame.reset_index(drop=True)


class SparsityExplorer:
    """Sparsity slider (snapping to the sweep grid), method and quantization selectors; shows
    the scores, decoder weight bytes and a sample generation of the selected point and rings it
    on the sweep's curves. frame: sweep.prune_sweep's DataFrame (or records of it). n_weights:
    how many pruned weights the model has (the size readout needs it).
    compute_point(method, sparsity, quant) -> row dict, for a point the frame lacks.
    sample(method, sparsity, quant, compute) -> text or None; compute=False must only look up."""

    def __init__(self, frame, n_weights: int | None = None,
                 compute_point: Callable[[str, float, str], dict] | None = None,
                 sample: Callable[[str, float, str, bool], str | None] | None = None,
                 log_ppl: bool = True):
        self.frame = _normalized(pd.DataFrame(frame))
        self.n_weights = n_weights
        self.compute_point, self.sample = compute_point, sample
        self.log_ppl = log_ppl
        methods = [m for m in dict.fromkeys(self.frame["method"]) if m != "dense"]
        if not methods:
            raise ValueError("the sweep frame holds no pruned point (only dense rows)")
        self.sparsity = W.SelectionSlider(options=self._grid(), description="sparsity",
                                          continuous_update=False)
        self.method = W.Dropdown(options=methods, description="method")
        self.quant = W.ToggleButtons(options=QUANTS, description="weights")
        self.numbers = W.HTML()
        self.sample_text = W.HTML()
        self.button = W.Button(icon="play")
        self.status = W.HTML()
        self.note = W.HTML()
        self.curves = W.Image(format="png")
        for control in (self.sparsity, self.method, self.quant):
            control.observe(self._on_change, names="value")
        self.button.on_click(self._on_button)
        self.widget = W.VBox([
            W.HBox([self.method, self.quant]), self.sparsity, self.numbers,
            W.HBox([self.button, self.status]), self.sample_text, self.note, self.curves])
        self.refresh()

    @classmethod
    def for_sweep(cls, frame, model_name: str, config, calib, base, prompt: str,
                  max_new_tokens: int = 48, store=None) -> SparsityExplorer:
        """An explorer whose button computes through the sweep's own cached functions:
        sweep.prune_point with config's tasks (INT8: W8A8 fake-quant) and
        sweep.generation_sample of prompt. base: the loaded (model, tokenizer)."""
        from workbench.arch import layer_linears
        from workbench.pruning import PruneConfig
        from workbench.quant import QuantConfig
        from workbench.sweep import generation_sample, prune_point

        def prune_config(method, sparsity):
            return None if method == "dense" else PruneConfig(method=method, sparsity=sparsity)

        def quant_config(quant):
            return QuantConfig() if quant == "int8" else None

        def compute(method, sparsity, quant):
            return prune_point(model_name, prune_config(method, sparsity), calib, config.tasks,
                               store=store, base=base, quant=quant_config(quant))

        def sample(method, sparsity, quant, compute_it):
            return generation_sample(model_name, prune_config(method, sparsity), calib, prompt,
                                     max_new_tokens, quant=quant_config(quant), store=store,
                                     base=base, compute=compute_it)

        n_weights = sum(lin.weight.numel() for lin in layer_linears(base[0]).values())
        return cls(frame, n_weights=n_weights, compute_point=compute, sample=sample)

    # ---------------------------------------------------------------- reading the frame

    def _grid(self) -> list[tuple[str, float]]:
        """The slider's stops: 0 and every unstructured sparsity of the sweep."""
        rows = self.frame[self.frame["structure"].isin(["unstructured", "-"])]
        stops = sorted({0.0, *(round(float(s), 4) for s in rows["target"])})
        return [(f"{s:.0%}", s) for s in stops]

    def point(self) -> dict | None:
        """The frame's row for the selected method, sparsity and quantization, or None."""
        f = self.frame
        if self.sparsity.value == 0:
            hit = f[(f["method"] == "dense") & (f["quant"] == self.quant.value)]
        else:
            hit = f[(f["method"] == self.method.value) & (f["quant"] == self.quant.value)
                    & (f["structure"] == "unstructured")
                    & ((f["target"] - self.sparsity.value).abs() < 1e-6)]
        return hit.iloc[0].to_dict() if len(hit) else None

    def values(self) -> dict:
        """What the explorer shows now: {label: text}, for tests and for the HTML readout."""
        row = self.point()
        shown = {}
        for column, (label, fmt) in METRICS.items():
            if column in self.frame:
                value = row.get(column) if row else None
                ok = value is not None and not (isinstance(value, float) and math.isnan(value))
                shown[label] = fmt.format(value) if ok else "not computed"
        s = self.sparsity.value
        bpw = bytes_per_weight("fp32" if self.quant.value == "fp32" else "auto", s)
        shown["bytes/weight"] = f"{bpw:.3f}"
        if self.n_weights:
            shown["decoder weights"] = f"{model_bytes(self.n_weights, s, self.quant.value) / 1e6:.1f} MB"
        return shown

    # ---------------------------------------------------------------- callbacks

    def _on_change(self, change=None) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Redraw every readout from the frame (and the sample cache): never computes."""
        row = self.point()
        self.numbers.value = "<table class='wb-numbers'>" + "".join(
            f"<tr><td>{html.escape(k)}</td><td class='wb-value'>{html.escape(v)}</td></tr>"
            for k, v in self.values().items()) + "</table>"
        text = None
        if row is not None and self.sample is not None:
            text = self.sample(self._method(), self.sparsity.value, self.quant.value, False)
        if row is None:
            self.button.description = "compute this point"
            self.button.disabled = self.compute_point is None
            self.sample_text.value = ""
        elif text is None:
            self.button.description = "generate a sample"
            self.button.disabled = self.sample is None
            self.sample_text.value = "<i>no sample generated for this point yet</i>"
        else:
            self.button.description = "sample cached"
            self.button.disabled = True
            self.sample_text.value = f"<pre class='wb-sample'>{html.escape(text)}</pre>"
        self._draw()

    def _method(self) -> str:
        return "dense" if self.sparsity.value == 0 else self.method.value

    def _on_button(self, _button=None) -> None:
        """Compute what the selected point lacks: its scores, else its sample generation."""
        method, s, quant = self._method(), self.sparsity.value, self.quant.value
        self.button.disabled = True
        self.status.value = "<i>computing…</i>"
        try:
            if self.point() is None:
                row = self.compute_point(method, s, quant)
                self.frame = _normalized(pd.concat([self.frame, pd.DataFrame([row])],
                                                   ignore_index=True))
            elif self.sample is not None:
                self.sample(method, s, quant, True)
            self.status.value = ""
        except Exception as err:   # shown in the widget: a callback's traceback would be lost
            self.status.value = f"<b>failed:</b> {html.escape(str(err))}"
        self.refresh()

    def _draw(self) -> None:
        """The sweep's curves with the selected point ringed, as a PNG in an Image widget
        (an Output widget only captures inside a running kernel)."""
        quant = self.frame[self.frame["quant"] == self.quant.value]
        metrics = [m for m in ("ppl", "arith") if m in quant and quant[m].notna().any()]
        if not metrics:
            self.note.value = f"<i>no {self.quant.value.upper()} scores in this sweep</i>"
            self.curves.layout.display = "none"
            return
        self.note.value = ""
        self.curves.layout.display = None
        fig, axes = plots.figure(columns=2, ncols=len(metrics), squeeze=False)
        highlight = (self._method(), self.sparsity.value)
        for ax, m in zip(axes[0], metrics, strict=True):
            plots.sparsity_curves(ax, quant, m, METRICS[m][0], highlight=highlight,
                                  logy=m == "ppl" and self.log_ppl)
        axes[0][0].legend(fontsize=6)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        self.curves.value = buffer.getvalue()

    # ---------------------------------------------------------------- display

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
