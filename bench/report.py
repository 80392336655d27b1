"""The bench report: markdown tables, and every target marked met or missed with its gap
and the reason for a miss. Scenarios only add tables and targets; the harness's
numbers come in as Series (duck-typed: ok/med/ratio/errors, see harness.Series)."""
from __future__ import annotations

import datetime
import subprocess
from typing import Any, Dict, List, Mapping, Optional, Sequence

from common import machine_facts, module_version, rawfetch_tree, tool_version

METHOD = ("Every client runs as a whole process (interpreter start included) against "
          "nginx on loopback (sendfile on; TLS with a trustme CA). Runs of the compared "
          "clients alternate in rotating order; each figure is a median over rounds and "
          "each ratio is the median of per-round ratios from the same run (2 cores, a "
          "noisy shared machine: compare ratios, not absolute times). CPU = user+sys of "
          "the child and the children it waited for; peak RSS = its ru_maxrss (for a "
          "shell pipeline: the largest process in it).")


def _row(cells: Sequence[str]) -> str:
    """A markdown table row; a | inside a cell (a shell pipeline's name) is escaped."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _fmt_value(value: float, unit: str, fmt: str) -> str:
    if unit == "×":
        return fmt % value + "×"
    if unit == "%":
        return "%.1f%%" % (100 * value)
    return (fmt % value) + " " + unit


def _fmt_gap(measured: float, limit: float, unit: str, fmt: str) -> str:
    if unit == "×":
        return "%+.0f%% vs limit" % (100 * (measured / limit - 1)) if limit else ""
    if unit == "%":
        return "%.1f points" % (100 * abs(measured - limit))
    return (fmt % abs(measured - limit)) + " " + unit


class Report:
    """Collects sections, tables, targets and notes; markdown() renders them in order."""

    def __init__(self) -> None:
        self.blocks: List[Dict[str, Any]] = []
        self.targets: List[Dict[str, Any]] = []
        self.notes: List[str] = []

    def section(self, title: str, paragraphs: Sequence[str] = ()) -> None:
        """A heading of its own, so a scenario's tables can sit under it (one level down)."""
        self.blocks.append({"kind": "section", "title": title, "text": list(paragraphs)})

    def table(self, title: str, head: Sequence[str], rows: Sequence[Sequence[str]],
              notes: Sequence[str] = (), level: int = 2) -> None:
        self.blocks.append({"kind": "table", "title": title, "head": list(head),
                            "rows": [list(r) for r in rows], "notes": list(notes),
                            "level": level})

    def series_table(self, title: str, series: Any, ref: str = "rawfetch",
                     note: Sequence[str] = (), with_ratio: bool = True, level: int = 2,
                     missing: Optional[Mapping[str, str]] = None) -> None:
        """One row per client: medians, and `ref` ÷ client as medians of per-round ratios.
        `missing` adds rows for clients that could not run at all (name -> why)."""
        head = ["client", "wall s", "CPU s", "peak RSS MiB"]
        if with_ratio:
            head += ["%s ÷ client (wall)" % ref, "%s ÷ client (CPU)" % ref]
        blank = ["", ""] if with_ratio else []
        rows = []
        for name in [c.name for c in series.clients]:
            if name in series.errors and not series.ok(name):
                rows.append([name, "failed", "", ""] + blank)
                continue
            row = [name, "%.3f" % series.med(name, "wall"), "%.3f" % series.med(name, "cpu"),
                   "%.1f" % (series.med(name, "rss") / 1024)]
            if with_ratio:
                row += ["—", "—"] if name == ref else [
                    "%.2f×" % series.ratio(ref, name, "wall"),
                    "%.2f×" % series.ratio(ref, name, "cpu")]
            rows.append(row)
        for name, why in (missing or {}).items():
            rows.append([name, "n/a: " + why, "", ""] + blank)
        notes = list(note) + ["%s: %s" % (k, v) for k, v in series.errors.items()]
        self.table(title, head, rows, notes, level)

    def target(self, name: str, measured: float, limit: float, unit: str = "×",
               detail: str = "", lower_is_better: bool = True, fmt: str = "%.2f",
               reason: str = "") -> None:
        """Record a target. `reason` says why it is missed (or not measured); it is shown
        only then, so a scenario can always pass what it knows."""
        if measured != measured:   # NaN: not measured
            self.targets.append({"target": name, "measured": "not measured", "met": None,
                                 "limit": _fmt_value(limit, unit, fmt), "gap": detail or "—",
                                 "reason": reason})
            return
        met = measured <= limit if lower_is_better else measured >= limit
        word = "within by " if met else ("over by " if lower_is_better else "short by ")
        gap = word + _fmt_gap(measured, limit, unit, fmt) + ("; " + detail if detail else "")
        self.targets.append({"target": name, "measured": _fmt_value(measured, unit, fmt),
                             "limit": _fmt_value(limit, unit, fmt), "met": met, "gap": gap,
                             "reason": "" if met else reason})

    # ------------------------------------------------------------------ rendering
    def markdown(self, context: Mapping[str, Any], findings: Optional[str] = None) -> str:
        """The whole report. context: command, elapsed (s), versions, sizes (a sentence)."""
        out = self._header(context) + self._targets_table()
        for block in self.blocks:
            out += self._render(block)
        if self.notes:
            out += ["## Notes", ""] + ["* " + n for n in self.notes] + [""]
        if findings:
            out += [findings.rstrip(), ""]
        return "\n".join(out)

    @staticmethod
    def _header(context: Mapping[str, Any]) -> List[str]:
        facts = machine_facts()
        out = ["# rawfetch benchmarks", "",
               "Generated by `bench/run.py` (issues 6 and 15) on %s in %.0f s. Regenerate "
               "with:" % (context["date"], context["elapsed"]),
               "", "```sh", context["command"], "```", "", METHOD, "",
               "## Machine", "", "| | |", "|---|---|"]
        for k in ("nproc", "cpu", "cpu flags", "memory", "kernel"):
            out.append("| %s | %s |" % (k, facts[k]))
        out += ["", "## Versions", "", "| | |", "|---|---|"]
        versions = dict(context["versions"], python=facts["python"])
        for k, v in versions.items():
            out.append("| %s | %s |" % (k, v))
        return out + ["", context["sizes"], ""]

    def _targets_table(self) -> List[str]:
        out = ["## Targets", "", "| target | measured | limit | status | gap | reason if missed |",
               "|---|---|---|---|---|---|"]
        for t in self.targets:
            status = "n/a" if t["met"] is None else ("**met**" if t["met"] else "**missed**")
            out.append(_row([t["target"], t["measured"], t["limit"], status, t["gap"],
                             t["reason"]]))
        return out + [""]

    @staticmethod
    def _render(block: Mapping[str, Any]) -> List[str]:
        if block["kind"] == "section":
            return ["## " + block["title"], ""] + [p for t in block["text"] for p in (t, "")]
        head = block["head"]
        out = ["#" * block["level"] + " " + block["title"], "",
               _row(head), "|" + "---|" * len(head)]
        out += [_row(r) for r in block["rows"]]
        out.append("")
        if block["notes"]:
            out += ["* " + n for n in block["notes"]] + [""]
        return out

    def summary_lines(self) -> List[str]:
        """The targets as one line each, for the terminal."""
        lines = []
        for t in self.targets:
            status = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
            lines.append("%-7s %s: %s (limit %s)" % (status, t["target"], t["measured"],
                                                     t["limit"]))
        return lines


def versions(nginx_version: str) -> Dict[str, str]:
    """Peer and server versions for the report header (missing tools say so)."""
    return {
        "curl": tool_version(["curl", "--version"], r"curl [\d.]+"),
        "wget": tool_version(["wget", "--version"], r"Wget [\d.]+"),
        "gzip": tool_version(["gzip", "--version"], r"gzip [\d.]+"),
        "xz": tool_version(["xz", "--version"], r"xz \(XZ Utils\) [\d.]+"),
        "nginx": nginx_version,
        "requests": module_version("requests") or "not installed",
        "urllib3": module_version("urllib3") or "not installed",
        "rawfetch": "%s at %s" % (rawfetch_tree(), git_rev() or "?"),
    }


def git_rev() -> Optional[str]:
    """The measured tree's branch and commit, and whether its rawfetch/ had uncommitted
    changes (the numbers are of the files, not of the commit)."""
    tree = rawfetch_tree()

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", tree] + list(args), capture_output=True,
                              text=True, timeout=5).stdout.strip()
    try:
        rev = "%s %s" % (git("rev-parse", "--abbrev-ref", "HEAD"),
                         git("rev-parse", "--short", "HEAD"))
        dirty = git("status", "--porcelain", "rawfetch")
    except (OSError, subprocess.TimeoutExpired):
        return None
    return rev.strip() + (" + uncommitted changes in rawfetch/" if dirty else "")


def today() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")

