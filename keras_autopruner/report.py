"""The pruning report: what `strip` removed, layer by layer.

`summary` compares any two models (the gated or original one and the
stripped one) by filters, parameters and MACs; `strip` attaches its result
to the stripped model as `pruning_report`, and `export` writes it out.
"""

import dataclasses
import json

import keras

from keras_autopruner import metrics, registry, tracing
from keras_autopruner.gate import AutoPrunerGate


@dataclasses.dataclass
class PruningReport:
    """What `strip` removed, layer by layer.

    Attributes:
        rows: one dict per layer of the gated model (gates left out) with
            `layer`, `class`, `filters_before`/`filters_after` (for layers
            with filters or units, else None), `params_before`/
            `params_after` and `macs_before`/`macs_after` (None when the
            layer is not in the other model).
        totals: `params_before`, `params_after`, `macs_before`,
            `macs_after` of the whole models (before: without gates) and the
            ratios `params_ratio`, `macs_ratio` (before / after).
        gates: `count`, `params` and `macs` of the gates strip dropped.
        notes: what the reader should know (collapse, round_to, force).

    Example:

        report = summary(gated, compact)
        report.totals["macs_ratio"]    # MACs before / after
        print(report)            # a plain-text table
        report.to_markdown()     # the same as a Markdown document
    """

    rows: list
    totals: dict
    gates: dict
    notes: list = dataclasses.field(default_factory=list)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2)

    def _table(self):
        header = ["layer", "class", "filters", "params", "MACs"]
        lines = []
        for row in self.rows:
            lines.append([
                row["layer"], row["class"],
                _pair(row["filters_before"], row["filters_after"]),
                _pair(row["params_before"], row["params_after"]),
                _pair(row["macs_before"], row["macs_after"]),
            ])
        t = self.totals
        lines.append(["total", "", "",
                      _pair(t["params_before"], t["params_after"]),
                      _pair(t["macs_before"], t["macs_after"])])
        return header, lines

    def _ratios(self):
        t = self.totals
        parts = []
        if t["params_ratio"]:
            parts.append(f"params {t['params_before']:,} -> "
                         f"{t['params_after']:,} (x{t['params_ratio']:.2f} "
                         "smaller)")
        if t["macs_ratio"]:
            parts.append(f"MACs {t['macs_before']:,} -> {t['macs_after']:,} "
                         f"(x{t['macs_ratio']:.2f} fewer)")
        gates = self.gates
        if gates["count"]:
            parts.append(f"{gates['count']} gates dropped ({gates['params']:,}"
                         f" params, {gates['macs']:,} MACs, not in 'before')")
        return parts

    def to_markdown(self):
        header, lines = self._table()
        out = ["# Pruning report", ""]
        out += [f"- {p}" for p in self._ratios() + self.notes]
        out += ["", "Per layer, before -> after (MACs for one example).", ""]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out) + "\n"

    def __str__(self):
        header, lines = self._table()
        widths = [max(len(r[i]) for r in [header] + lines)
                  for i in range(len(header))]
        text = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                for r in [header] + lines]
        return "\n".join(text + self._ratios() + self.notes)


def _pair(before, after):
    def fmt(v):
        return "-" if v is None else f"{v:,}"
    if before is None and after is None:
        return ""
    if before == after:
        return fmt(before)
    return f"{fmt(before)} -> {fmt(after)}"


def summary(gated, compact, notes=None):
    """Compare a model before and after `strip`, layer by layer.

    Args:
        gated: the gated (or the original) model; None when it is not at
            hand, and the report then only has the "after" figures.
        compact: the stripped model.
        notes: optional list of strings to carry in the report.

    Returns:
        A `PruningReport`; `print` it for a table of filters, parameters
        and MACs before and after.

    Example:

        compact = strip(gated)
        print(summary(gated, compact))
    """
    if not isinstance(compact, keras.Model) or not (
            gated is None or isinstance(gated, keras.Model)):
        raise TypeError(
            "summary(gated, compact) takes two keras.Models (gated may be "
            f"None); got {type(gated).__name__} and "
            f"{type(compact).__name__}. Call summary(gated, strip(gated)).")
    after = {layer.name: layer for layer in compact.layers}
    macs_after = _macs(compact)
    rows, gates = [], {"count": 0, "params": 0, "macs": 0}
    if gated is None:
        before, macs_before = {}, {}
        order = list(compact.layers)
    else:
        flat = tracing.flat(gated)
        before = {layer.name: layer for layer in flat.layers}
        macs_before = _macs(flat)
        order = list(flat.layers)
    for layer in order:
        if registry.is_input_layer(layer):
            continue
        if isinstance(layer, AutoPrunerGate):
            gates["count"] += 1
            gates["params"] += metrics.count_params(layer)
            gates["macs"] += macs_before.get(layer.name, 0)
            continue
        old, new = before.get(layer.name), after.get(layer.name)
        row = {
            "layer": layer.name,
            "class": type(layer).__name__,
            "filters_before": _filters(old),
            "filters_after": _filters(new),
            "params_before": _params(old),
            "params_after": _params(new),
            "macs_before": macs_before.get(layer.name),
            "macs_after": macs_after.get(layer.name),
        }
        if any(row[k] for k in ("filters_before", "filters_after",
                                "params_before", "params_after",
                                "macs_before", "macs_after")):
            rows.append(row)
    params_after = metrics.count_params(compact)
    # A model of variable sizes has no MAC count (None), only parameters.
    macs_total_after = sum(macs_after.values()) if macs_after else None
    if gated is None:
        params_before = macs_total_before = None
    else:
        params_before = metrics.count_params(flat) - gates["params"]
        macs_total_before = (sum(macs_before.values()) - gates["macs"]
                             if macs_before else None)
    totals = {
        "params_before": params_before,
        "params_after": params_after,
        "macs_before": macs_total_before,
        "macs_after": macs_total_after,
        "params_ratio": _ratio(params_before, params_after),
        "macs_ratio": _ratio(macs_total_before, macs_total_after),
    }
    return PruningReport(rows, totals, gates, list(notes or []))


def _params(layer):
    return None if layer is None else metrics.count_params(layer)


def _filters(layer):
    if layer is None or not registry.is_prunable(layer):
        return None
    return registry.width_of(layer)


def _macs(model):
    """MACs per layer, or {} where sizes are unknown until the model runs."""
    try:
        return metrics.count_flops(model).per_layer
    except metrics.UnknownSizeError:
        return {}


def _ratio(before, after):
    if not before or not after:
        return None
    return round(before / after, 4)
