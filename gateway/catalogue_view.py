"""The resolved catalogue for people: `municipal-gateway catalogue CONFIG [--indicator ID]`."""

from __future__ import annotations

import unicodedata

from gateway.model.catalogue import Catalogue, Indicator, Source


def _width(text: str) -> int:
    """Columns the text takes in a terminal: Chinese characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def _source(source: Source | None, where: str) -> str:
    if source is None:
        return where or "(made in code)"
    return f"{source.name} {source.version} ({where})" if where else f"{source.name} {source.version}"


def _range(indicator: Indicator) -> str:
    if indicator.range is None:
        return "-"
    low, high = indicator.range
    return f"[{low:g}, {high:g}]"


def list_catalogue(catalogue: Catalogue) -> list[str]:
    """One line per catalogue file, domain, asset type and indicator, each saying which file defined it."""
    lines = [f"catalogue {s.name} version {s.version}: {s.file}" for s in catalogue.sources]
    lines.append("")
    lines.extend(f"domain {d.id}: {d.name.en} / {d.name.zh}  [{_source(d.source, d.defined_at)}]"
                 for d in catalogue.domains)
    lines.append("")
    lines.extend(f"asset type {t.id} ({t.domain}): {t.name.en} / {t.name.zh}, {len(t.indicators)} indicators  "
                 f"[{_source(t.source, t.defined_at)}]" for t in catalogue.asset_types)
    lines.append("")
    rows = [("id", "name", "unit", "kind", "quantified", "range", "defined by")]
    rows.extend((i.id, f"{i.name.en} / {i.name.zh}", f"{i.unit} ({i.unit_code})", i.kind.value, i.quantified.value,
                 _range(i), _source(i.source, i.defined_at)) for i in catalogue.indicators)
    widths = [max(_width(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    lines.extend("  ".join([*(_pad(cell, width) for cell, width in zip(row, widths, strict=False)), row[-1]])
                 for row in rows)
    return lines


def describe_indicator(catalogue: Catalogue, indicator_id: str) -> list[str] | None:
    """Everything the catalogue says of one indicator, or None when it has no such indicator."""
    indicator = catalogue.indicator(indicator_id)
    if indicator is None:
        return None
    lines = [
        f"indicator {indicator.id}",
        f"  name        {indicator.name.en} / {indicator.name.zh}",
        f"  kind        {indicator.kind.value}, quantified {indicator.quantified.value}",
        f"  unit        {indicator.unit} (UN/CEFACT {indicator.unit_code})",
        f"  range       {_range(indicator)}",
        f"  defined by  {_source(indicator.source, indicator.defined_at)}",
    ]
    for state in indicator.states or ():
        lines.append(f"  state {state.code:>4}  {state.id}: {state.name.en} / {state.name.zh}")
    used_by = [t.id for t in catalogue.asset_types if indicator.id in t.indicators]
    lines.append(f"  asset types {', '.join(used_by) or '(none)'}")
    rules = indicator.processing
    if not rules.is_empty:
        lines.append(f"  processing  {rules.model_dump(exclude_none=True)}")
    if indicator.description:
        lines.append(f"  {indicator.description.strip()}")
    return lines
