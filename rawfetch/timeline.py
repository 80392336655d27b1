"""rawfetch-timeline: one download's --log-json log drawn as bytes held against time.

    rawfetch-timeline EVENTS.jsonl -o timeline.png     (or .svg; python3 -m rawfetch.timeline)

Each attempt is a line coloured by the mirror that served it, from its `request`
(time, offset) to where it ended (`error`, `done`, or the next `request`), through any
`resume` and optional `progress` (offset, attempt) events in between. Errors are marked
and labelled by class at their offset, backoff sleeps are shaded, a restart is a drop
to zero; a Metalink piece found bad is a red triangle at its first byte naming the
mirror that sent it, the piece fixed a green one naming the mirror that fixed it. A thousand JSON lines become one picture an operator reads at a glance.

Parsing (read_events, split_runs, build_timeline) is pure and needs nothing; drawing
needs matplotlib, from the optional extra: pip install 'rawfetch[plot]'.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from .errors import FetchError

DEFAULT_SIZE = (1200, 600)   # px: full README width, still legible when scaled down
DPI = 100                    # so that the pixel size is exactly size / DPI inches * DPI
INSTALL_LINE = "python3 -m pip install 'rawfetch[plot]'"
# Okabe-Ito colours (distinguishable with colour-blindness); red is kept for errors.
MIRROR_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#F0E442",
                  "#7F7F7F")
ERROR_COLOUR = "#C00000"
BACKOFF_COLOUR = "#9E9E9E"
PIECE_FIXED_COLOUR = "#117733"   # a piece repaired: green, apart from the mirror colours
LABEL_LIFTS = (6, 30, 54)    # points above a marker; labels rotate through them
CLUSTER_FRACTION = 0.015     # of the time axis (2x of the bytes): closer marks share a label
RIGHT_MARGIN = 1.08         # x axis past the end: room for the last label
HEADROOM = 1.25              # y axis above the largest offset: room for labels and legend


class TimelineError(FetchError):
    """The log cannot be drawn: unreadable, not JSON lines, or no attempt in it."""
    exit_code = 1


class PlotUnavailable(TimelineError):
    """matplotlib is missing: a usage problem of this machine (exit 2), with the fix."""
    exit_code = 2


class Attempt(NamedTuple):
    number: int
    url: str
    points: List[Tuple[float, int]]   # (seconds since the first event, bytes held)
    ended: str                        # error class, "done", or "" if the log stops


class Mark(NamedTuple):
    time: float
    offset: int
    label: str


class Span(NamedTuple):
    start: float
    end: float


class Timeline(NamedTuple):
    url: str
    outcome: str
    attempts: List[Attempt]
    errors: List[Mark]
    restarts: List[Mark]
    switches: List[Mark]
    backoffs: List[Span]
    mirrors: List[str]                # in the order they first served an attempt
    totals: Dict[str, Any]            # attempts, resumes, restarts, switches,
                                      # refetched, bytes, elapsed
    pieces: List[Mark] = []           # Metalink pieces found bad, and fixed (issue 24)


# ---------------------------------------------------------------- parsing (pure)
def read_events(lines: Iterable[str]) -> List[Dict[str, Any]]:
    """JSON objects, one per non-blank line, each with an `event` and a numeric `time`."""
    events = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            raise TimelineError("line %d is not JSON: %.60r" % (number, line)) from None
        if not (isinstance(event, dict) and isinstance(event.get("event"), str)
                and isinstance(event.get("time"), (int, float))):
            raise TimelineError("line %d is not a rawfetch event (no event/time)" % number)
        events.append(event)
    return events


def split_runs(events: Sequence[Dict[str, Any]]) -> List[List[Dict[str, Any]]]:
    """--log-json appends, so one file may hold several downloads: each starts with
    the `request` of attempt 1."""
    runs: List[List[Dict[str, Any]]] = []
    for event in events:
        starts = event["event"] == "request" and event.get("attempt") == 1
        if not runs or (starts and any(e["event"] == "request" for e in runs[-1])):
            runs.append([])
        runs[-1].append(event)
    return [run for run in runs if any(e["event"] == "request" for e in run)]


def build_timeline(events: Sequence[Dict[str, Any]]) -> Timeline:
    """One download's events as drawable pieces. Fields consumed: request(attempt,
    offset, url), progress(attempt, offset), resume(offset, skipped), restart(why),
    error(error, offset), backoff(seconds), mirror(mirror, offset), piece_bad(index,
    offset, url), piece_fixed(index, offset, url), done(bytes, attempts, refetched,
    elapsed, url); `time` on all."""
    if not any(e["event"] == "request" for e in events):
        raise TimelineError("no request event: not a download's log")
    builder = _Builder(events[0]["time"])
    for event in events:
        handler = getattr(builder, "on_" + event["event"], None)
        if handler is not None:
            handler(event, event["time"] - builder.origin)
    return builder.finish(events)


class _Builder:
    """Walks the events once, holding the attempt in progress."""

    def __init__(self, origin: float) -> None:
        self.origin = origin
        self.attempts: List[Attempt] = []
        self.current: Optional[Attempt] = None
        self.errors: List[Mark] = []
        self.restarts: List[Mark] = []
        self.switches: List[Mark] = []
        self.backoffs: List[Span] = []
        self.pieces: List[Mark] = []
        self.skipped = 0
        self.done: Optional[Dict[str, Any]] = None

    def _close(self, t: float, offset: int, ended: str) -> None:
        if self.current is not None:
            self.current.points.append((t, offset))
            self.attempts.append(self.current._replace(ended=ended))
            self.current = None

    def held(self) -> int:
        return self.current.points[-1][1] if self.current else 0

    def on_request(self, event: Dict[str, Any], t: float) -> None:
        offset = _int(event.get("offset"))
        self._close(t, offset, "")
        self.current = Attempt(_int(event.get("attempt")), str(event.get("url", "")),
                               [(t, offset)], "")

    def on_progress(self, event: Dict[str, Any], t: float) -> None:
        attempt = event.get("attempt")
        if self.current and (attempt is None or attempt == self.current.number):
            self.current.points.append((t, _int(event.get("offset"))))

    def on_resume(self, event: Dict[str, Any], t: float) -> None:
        self.skipped += _int(event.get("skipped"))
        if self.current:
            self.current.points.append((t, _int(event.get("offset"))))

    def on_restart(self, event: Dict[str, Any], t: float) -> None:
        self.restarts.append(Mark(t, self.held(), "restart: %s" % event.get("why", "")))
        if self.current:
            self.current.points.extend([(t, self.held()), (t, 0)])

    def on_error(self, event: Dict[str, Any], t: float) -> None:
        offset = _int(event.get("offset"), self.held())
        name = str(event.get("error", "error"))
        words = str(event.get("message", "")).split(" ")[:2]
        status = " " + words[1] if words[0] == "HTTP" and len(words) > 1 else ""
        self.errors.append(Mark(t, offset, name + status))    # "HTTPStatusError 503"
        self._close(t, offset, name)

    def on_backoff(self, event: Dict[str, Any], t: float) -> None:
        seconds = event.get("seconds")
        if isinstance(seconds, (int, float)) and seconds > 0:
            self.backoffs.append(Span(t, t + seconds))

    def on_mirror(self, event: Dict[str, Any], t: float) -> None:
        self.switches.append(Mark(t, _int(event.get("offset"), self.held()),
                                  "to " + _short(str(event.get("mirror", "")))))

    def on_piece_bad(self, event: Dict[str, Any], t: float) -> None:
        self.pieces.append(Mark(t, _int(event.get("offset")), "piece %s bad from %s" % (
            event.get("index"), _short(str(event.get("url", ""))))))

    def on_piece_fixed(self, event: Dict[str, Any], t: float) -> None:
        self.pieces.append(Mark(t, _int(event.get("offset")), "piece %s fixed by %s" % (
            event.get("index"), _short(str(event.get("url", ""))))))

    def on_done(self, event: Dict[str, Any], t: float) -> None:
        self.done = event
        self._close(t, _int(event.get("bytes"), self.held()), "done")

    def finish(self, events: Sequence[Dict[str, Any]]) -> Timeline:
        if self.current is not None:
            self.attempts.append(self.current)
        mirrors: List[str] = []
        for attempt in self.attempts:
            if attempt.url not in mirrors:
                mirrors.append(attempt.url)
        return Timeline(self._url(), self._outcome(), self.attempts, self.errors,
                        self.restarts, self.switches, self.backoffs, mirrors,
                        self._totals(events), self.pieces)

    def _url(self) -> str:
        if self.done and self.done.get("url"):
            return str(self.done["url"])
        return self.attempts[0].url if self.attempts else ""

    def _outcome(self) -> str:
        if self.done is not None:
            return "done"
        last = self.attempts[-1] if self.attempts else None
        if last is not None and last.ended:
            return "FAILED: %s at %s" % (last.ended, _size(last.points[-1][1]))
        return "log ends mid-attempt (killed?)"

    def _totals(self, events: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        done = self.done or {}
        counts = {name: sum(1 for e in events if e["event"] == name)
                  for name in ("request", "resume", "restart", "mirror")}
        held = max((p[1] for a in self.attempts for p in a.points), default=0)
        return {"attempts": done.get("attempts", counts["request"]),
                "resumes": counts["resume"], "restarts": counts["restart"],
                "switches": counts["mirror"],
                "refetched": _int(done.get("refetched"), self.skipped),
                "bytes": _int(done.get("bytes"), held),
                "elapsed": done.get("elapsed", events[-1]["time"] - self.origin)}


def _int(value: Any, fallback: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else fallback


def _short(url: str) -> str:
    """host:port/path without the scheme, for labels and the legend."""
    return url.split("://", 1)[-1]


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return ("%d %s" if unit == "B" else "%.1f %s") % (count, unit)
        count /= 1024
    return str(count)


def title_lines(timeline: Timeline) -> Tuple[str, str]:
    """The URL, then the outcome and the totals an operator asks first."""
    totals = timeline.totals
    head = "%s: %s in %.1f s" % (timeline.outcome, _size(totals["bytes"]), totals["elapsed"])
    parts = ["%d attempts" % totals["attempts"], "%d resumes" % totals["resumes"],
             "%d restarts" % totals["restarts"], "%d mirror switches" % totals["switches"],
             "%s re-fetched" % _size(totals["refetched"])]
    bad = sum(1 for mark in timeline.pieces if " bad " in mark.label)
    if bad:
        parts.append("%d bad pieces" % bad)
    return timeline.url, head + "  |  " + ", ".join(parts)


# ---------------------------------------------------------------- drawing (matplotlib)
def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable("matplotlib is needed to draw: %s" % INSTALL_LINE) from None


def draw(timeline: Timeline, path: str, size: Tuple[int, int] = DEFAULT_SIZE) -> None:
    """Write the picture to path; the format follows the suffix (.png, .svg, ...)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fmt = path.rpartition(".")[2].lower()
    figure = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    if fmt not in canvas.get_supported_filetypes():
        raise PlotUnavailable("cannot write %r: use .png or .svg" % path)
    axes = figure.add_subplot()
    _plot(axes, timeline)
    url, summary = title_lines(timeline)
    axes.set_title("%s\n%s" % (url, summary), fontsize=10, loc="left")
    try:
        figure.savefig(path, dpi=DPI, format=fmt)
    except OSError as exc:  # not a transfer: the picture file, the tool's exit 1
        raise TimelineError("cannot write %s: %s" % (path, exc.strerror or exc)) from None


def _plot(axes: Any, timeline: Timeline) -> None:
    colour = {url: MIRROR_COLOURS[i % len(MIRROR_COLOURS)]
              for i, url in enumerate(timeline.mirrors)}
    for span in timeline.backoffs:
        axes.axvspan(span.start, span.end, color=BACKOFF_COLOUR, alpha=0.25, lw=0)
    for attempt in timeline.attempts:
        times, offsets = zip(*attempt.points)
        axes.plot(times, offsets, color=colour[attempt.url], lw=2, solid_capstyle="butt")
        axes.plot(times[:1], offsets[:1], "o", color=colour[attempt.url], ms=3)
    for mark in timeline.switches:
        axes.axvline(mark.time, color="#555555", ls=":", lw=1)
    for mark in timeline.restarts:
        axes.axvline(mark.time, color=ERROR_COLOUR, ls="--", lw=1)
    top = max([timeline.totals["bytes"]] + [m.offset for m in timeline.errors] + [1])
    _label_marks(axes, timeline, top)
    _legend(axes, timeline, colour)
    axes.set_ylim(0, top * HEADROOM)
    axes.set_xlim(0, max(timeline.totals["elapsed"], 1e-3) * RIGHT_MARGIN)
    _byte_axis(axes, top)
    axes.set_xlabel("seconds since the first request")
    axes.grid(True, color="#E0E0E0", lw=0.6)


def _label_marks(axes: Any, timeline: Timeline, top: int) -> None:
    """Error crosses; one label per cluster of nearby marks, lifted in turn so that
    neighbouring clusters do not overlap."""
    if timeline.errors:
        axes.plot([m.time for m in timeline.errors], [m.offset for m in timeline.errors],
                  "x", color=ERROR_COLOUR, ms=8, mew=2)
    for mark in timeline.pieces:
        bad = " bad " in mark.label
        axes.plot([mark.time], [mark.offset], "v" if bad else "^", ms=7,
                  color=ERROR_COLOUR if bad else PIECE_FIXED_COLOUR)
    marks = [(m, True) for m in timeline.errors] + [
        (m, " bad " in m.label) for m in timeline.pieces] + [
        (m, False) for m in timeline.restarts + timeline.switches]
    near = (CLUSTER_FRACTION * max(timeline.totals["elapsed"], 1e-3),
            CLUSTER_FRACTION * 2 * top)
    for index, (mark, is_error) in enumerate(cluster_marks(marks, *near)):
        axes.annotate(mark.label, (mark.time, mark.offset), fontsize=7.5,
                      color=ERROR_COLOUR if is_error else "#333333",
                      xytext=(3, LABEL_LIFTS[index % len(LABEL_LIFTS)]),
                      textcoords="offset points", va="bottom")


def cluster_marks(marks: Sequence[Tuple[Mark, bool]], dt: float,
                  doffset: float) -> List[Tuple[Mark, bool]]:
    """Marks within dt seconds and doffset bytes of the previous one share one label,
    repeats counted ("IdleTimeout x4": a download stalling at the same offset)."""
    clusters: List[List[Tuple[Mark, bool]]] = []
    for mark, is_error in sorted(marks, key=lambda item: item[0].time):
        last = clusters[-1][-1][0] if clusters else None
        if last and mark.time - last.time <= dt and abs(mark.offset - last.offset) <= doffset:
            clusters[-1].append((mark, is_error))
        else:
            clusters.append([(mark, is_error)])
    return [_merge(cluster) for cluster in clusters]


def _merge(cluster: List[Tuple[Mark, bool]]) -> Tuple[Mark, bool]:
    counts: Dict[str, int] = {}
    for mark, _ in cluster:
        counts[mark.label] = counts.get(mark.label, 0) + 1
    text = "\n".join(label + (" x%d" % n if n > 1 else "") for label, n in counts.items())
    return cluster[0][0]._replace(label=text), any(is_error for _, is_error in cluster)


def _legend(axes: Any, timeline: Timeline, colour: Dict[str, str]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles = [Line2D([], [], color=colour[url], lw=2, label="served by " + _short(url))
               for url in timeline.mirrors]
    if timeline.errors:
        handles.append(Line2D([], [], color=ERROR_COLOUR, marker="x", ls="", mew=2,
                              label="error (class)"))
    if timeline.backoffs:
        handles.append(Patch(color=BACKOFF_COLOUR, alpha=0.25, label="backoff sleep"))
    axes.legend(handles=handles, loc="upper left", fontsize=8, framealpha=0.9)


def _byte_axis(axes: Any, top: int) -> None:
    """Ticks at round numbers of the unit that suits the size (KiB, MiB, GiB)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator
    unit, scale = next(((u, s) for u, s in (("GiB", 1 << 30), ("MiB", 1 << 20),
                                            ("KiB", 1 << 10)) if top >= 2 * s), ("B", 1))
    ticks = MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(0, top / scale)
    axes.set_yticks([tick * scale for tick in ticks if 0 <= tick * scale <= top * HEADROOM])
    axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: "%g" % (v / scale)))
    axes.set_ylabel("bytes held (%s)" % unit)


# ---------------------------------------------------------------- the command
def _pixels(text: str) -> Tuple[int, int]:
    width, x, height = text.lower().partition("x")
    if not (x and width.isdigit() and height.isdigit() and 100 <= int(width) <= 10000
            and 100 <= int(height) <= 10000):
        raise argparse.ArgumentTypeError("%r is not WIDTHxHEIGHT in pixels (100-10000)" % text)
    return int(width), int(height)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rawfetch-timeline", description="Draw one download from its rawfetch "
        "--log-json file: bytes held against time, attempts coloured by mirror, errors, "
        "backoff sleeps and restarts. Needs matplotlib (%s)." % INSTALL_LINE,
        epilog="exit codes: 0 written, 1 the log cannot be drawn, 2 usage or no matplotlib")
    parser.add_argument("events", metavar="EVENTS.jsonl", help="the --log-json file")
    parser.add_argument("-o", "--output", required=True, metavar="IMAGE",
                        help="picture to write; .png or .svg picks the format")
    parser.add_argument("--size", type=_pixels, default=DEFAULT_SIZE, metavar="WxH",
                        help="pixels [default: %dx%d]" % DEFAULT_SIZE)
    parser.add_argument("--run", type=int, default=0, metavar="N",
                        help="which download of a log holding several: 1 = first, -1 = "
                        "last [default: the last]")
    return parser


def run(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        require_matplotlib()
        timeline = _load(args.events, args.run)
        draw(timeline, args.output, args.size)
    except TimelineError as exc:
        sys.stderr.write("rawfetch-timeline: %s\n" % exc)
        return exc.exit_code
    print(args.output)
    return 0


def _load(path: str, choice: int) -> Timeline:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            runs = split_runs(read_events(handle))
    except OSError as exc:  # not a transfer: the log file, the tool's exit 1
        raise TimelineError("cannot read %s: %s" % (path, exc.strerror)) from None
    if not runs:
        raise TimelineError("%s holds no download (no request event)" % path)
    index = choice - 1 if choice > 0 else len(runs) + choice if choice < 0 else len(runs) - 1
    if not 0 <= index < len(runs):
        raise TimelineError("--run %d: %s holds %d download(s)" % (choice, path, len(runs)))
    if len(runs) > 1:
        sys.stderr.write("rawfetch-timeline: %s holds %d downloads; drawing number %d "
                         "(--run N picks another)\n" % (path, len(runs), index + 1))
    return build_timeline(runs[index])


def main(argv: Optional[Sequence[str]] = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
