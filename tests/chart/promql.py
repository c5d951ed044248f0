"""The metric names a PromQL expression selects, and the names the code can export, for checking that every
dashboard panel and alert queries something that exists.

No PromQL parser is needed for names: strings, label matchers, ranges, grouping clauses and offsets are cut
out, and what remains that is an identifier but not a function call, keyword or aggregation is a metric name.
`promtool check rules` judges the rules' syntax separately.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

KEYWORDS = frozenset(
    [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "atan2",
    ]
)
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
"""Series Prometheus makes for every target itself."""

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects (Grafana's $variables inside ranges and matchers are cut out with them)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    text = _OFFSET.sub("", text)
    return {name for name, call in _IDENT.findall(text) if not call and name.lower() not in KEYWORDS}


def exported_names(*registries: CollectorRegistry) -> set[str]:
    """Every sample name the registries can expose: a counter's _total (and _created), a histogram's
    _bucket/_sum/_count, a gauge's own name."""
    names: set[str] = set()
    for registry in registries:
        for metric in registry.collect():
            if metric.type == "counter":
                names |= {f"{metric.name}_total", f"{metric.name}_created"}
            elif metric.type in ("histogram", "summary"):
                suffixes = (
                    ("_bucket", "_sum", "_count", "_created") if metric.type == "histogram" else ("_sum", "_count")
                )
                names |= {metric.name + suffix for suffix in suffixes}
                if metric.type == "summary":
                    names.add(metric.name)
            else:
                names.add(metric.name)
    return names
