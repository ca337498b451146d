"""`municipal-gateway watch CONFIG`: the running gateway's live values in a terminal, read on this box from its
status listener (`/api/status`), never from the city broker.

One screen fits 80x24: two lines of the gateway's own state (uplink, buffer, devices, alarms, clock), a header,
the active alarms and then every current value (asset, indicator, value, unit, quality, source time, age), and a
line of keys. The list scrolls (arrows, PgUp/PgDn, Home/End), `/` filters it by words matched against asset,
indicator, device and point, `q` quits. With `--once`, or when the output is not a terminal, one screen is
printed and the command ends. Plain standard library: HTTP with urllib, the screen with curses.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.model.settings import StatusSettings
from gateway.status.listener import credentials

HEAD_LINES = 3  # the two status lines and the column header
FETCH_TIMEOUT = 5.0


class WatchError(Exception):
    """The listener could not be read; the message says why, for a person."""


def listener_url(settings: StatusSettings) -> str:
    """Where this box reaches its own listener: a wildcard address through the loopback of its family."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(settings.host, settings.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}/"


class StatusReader:
    """Reads /api/status of one listener, with its basic-auth credentials when it has them."""

    def __init__(self, base_url: str, auth: tuple[str, str] | None = None) -> None:
        self.url = base_url + "api/status"
        self._headers = {"Accept": "application/json"}
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"

    @classmethod
    def for_settings(cls, settings: StatusSettings) -> StatusReader:
        try:
            auth = credentials(settings.auth)
        except OSError as exc:
            raise WatchError(f"cannot read the status listener's password file: {exc}") from None
        return cls(listener_url(settings), auth)

    def fetch(self) -> dict[str, Any]:
        request = urllib.request.Request(self.url, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as reply:
                document: dict[str, Any] = json.load(reply)
                return document
        except urllib.error.HTTPError as exc:
            hint = " (the username or password is not the listener's)" if exc.code == 401 else ""
            raise WatchError(f"{self.url} answered {exc.code} {exc.reason}{hint}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise WatchError(f"no answer from {self.url} ({reason}): is the gateway running?") from None
        except ValueError as exc:
            raise WatchError(f"{self.url} answered something that is not the status: {exc}") from None


@dataclass
class View:
    """What the screen shows of the snapshot: filters and the scroll position."""

    assets: Sequence[str] = ()  # --asset: words, each matched against the asset path
    indicators: Sequence[str] = ()  # --indicator
    words: str = ""  # typed after `/`: matched against asset, indicator, device and point
    offset: int = 0  # the first list row shown
    rows_total: int = field(default=0, init=False)  # set by screen(): how many rows the list has


def screen(snapshot: dict[str, Any] | None, width: int, height: int, view: View, problem: str | None = None,
           interactive: bool = True) -> list[str]:
    """The lines of one screen, each at most `width` characters, at most `height` of them."""
    width, height = max(width, 40), max(height, HEAD_LINES + 2)
    if snapshot is None:
        return [_fit(problem or "waiting for the gateway...", width)]
    now = int(snapshot["time_ms"])
    rows = _alarm_lines(snapshot, view, now, width) + _value_lines(snapshot, view, now, width)
    view.rows_total = len(rows)
    room = height - HEAD_LINES - 1 if interactive else len(rows)
    view.offset = max(0, min(view.offset, len(rows) - room))
    shown = rows[view.offset:view.offset + room]
    lines = [_fit(line, width) for line in _head(snapshot, now)]
    lines.append(_fit(_columns("ASSET INDICATOR", "VALUE", "UNIT", "QUAL", "SOURCE", "AGE", width), width))
    lines.extend(shown)
    if interactive:
        lines.extend([""] * (room - len(shown)))
        span = f"{view.offset + 1}-{view.offset + len(shown)} of {len(rows)}" if rows else "no rows"
        filters = " ".join(f"[{w}]" for w in (*view.assets, *view.indicators, view.words) if w)
        keys = problem or "Up/Down PgUp/PgDn scroll  / filter  q quit"
        lines.append(_fit(f"{span}  {filters + '  ' if filters else ''}{keys}", width))
    elif problem:
        lines.append(_fit(problem, width))
    return lines


def _head(s: dict[str, Any], now: int) -> list[str]:
    uplink, buffer = s["uplink"], s["buffer"]
    link = "connected" if uplink["connected"] else "NOT CONNECTED"
    oldest = "-" if buffer["oldest_ms"] is None else _age(buffer["oldest_ms"], now)
    first = (f"{s['gateway']} {s['version']}  uplink {link}  buffer {buffer['messages']} msg "
             f"oldest {oldest}  dropped {buffer['dropped_readings']}")
    states: dict[str, int] = {}
    for device in s["devices"]:
        states[device["state"]] = states.get(device["state"], 0) + 1
    devices = ", ".join(f"{count} {state}" for state, count in sorted(states.items())) or "none"
    clock = time.strftime("%H:%M:%S", time.gmtime(now / 1000))
    second = f"devices {devices}  alarms {len(s['alarms'])}  clock {s.get('clock', 'unknown')}  {clock} UTC"
    return [first, second]


def _matches(view: View, asset: str, indicator: str, *more: str) -> bool:
    if not all(word.lower() in asset.lower() for word in view.assets):
        return False
    if not all(word.lower() in indicator.lower() for word in view.indicators):
        return False
    text = " ".join((asset, indicator, *more)).lower()
    return all(word in text for word in view.words.lower().split())


def _value_lines(s: dict[str, Any], view: View, now: int, width: int) -> list[str]:
    lines = []
    for v in s["values"]:
        if not _matches(view, v["asset"], v["indicator"], v["device"], v["point"]):
            continue
        value = _number(v["value"]) if v["value"] is not None else (v["reason"] or "-")
        quality = {"good": "good", "uncertain": "unc", "bad": "BAD"}.get(v["quality"], v["quality"])
        source = time.strftime("%H:%M:%S", time.gmtime(v["source_ms"] / 1000))
        name = f"{v['asset'].rsplit('/', 1)[-1]} {v['indicator']}"
        lines.append(_columns(name, value, v["unit"], quality, source, _age(v["source_ms"], now), width))
    return lines


def _alarm_lines(s: dict[str, Any], view: View, now: int, width: int) -> list[str]:
    lines = []
    for a in s["alarms"]:
        if not _matches(view, a["asset"], a["indicator"] or "", a["device"], a["alarm"]):
            continue
        value = "" if a["value"] is None else f" {_number(a['value'])} {a['unit'] or ''}".rstrip()
        limit = "" if a["limit"] is None else f" (limit {_number(a['limit'])})"
        lines.append(_fit(f"ALARM {a['severity']} {a['alarm']}{value}{limit}, {_age(a['since_ms'], now)}", width))
    return lines


def _columns(name: str, value: str, unit: str, quality: str, source: str, age: str, width: int) -> str:
    # value 11, unit 7, quality 4, source 8, age 7, with a space between each: 42 columns; the name the rest.
    name_width = width - 43
    return (f"{_fit(name, name_width):<{name_width}} {_fit(value, 11):>11} {_fit(unit, 7):<7} "
            f"{quality:<4} {source:<8} {age:>7}")


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 1)] + "~"


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.1f}"
    return str(value)


def _age(moment_ms: int, now: int) -> str:
    seconds = max(0, round((now - moment_ms) / 1000))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def print_once(reader: StatusReader, view: View, width: int, write: Callable[[str], object] = print) -> None:
    """One screen's worth, every row (for a pipe or a script); raises WatchError when nothing answers."""
    for line in screen(reader.fetch(), width, 0, view, interactive=False):
        write(line)


def run_interactive(reader: StatusReader, view: View, refresh: float) -> None:
    """The live view until `q` (or Ctrl-C): fetched every `refresh` seconds, redrawn on every key."""
    import curses

    curses.wrapper(_Screen(reader, view, refresh).run)


class _Screen:
    def __init__(self, reader: StatusReader, view: View, refresh: float) -> None:
        self._reader = reader
        self._view = view
        self._refresh = refresh
        self._snapshot: dict[str, Any] | None = None
        self._problem: str | None = None

    def run(self, window: Any) -> None:
        import curses

        curses.curs_set(0)
        due = 0.0
        while True:
            if time.monotonic() >= due:
                self._fetch()
                due = time.monotonic() + self._refresh
            self._draw(window)
            window.timeout(max(1, int((due - time.monotonic()) * 1000)))  # a key, or the next fetch
            key = window.getch()
            if key in (ord("q"), ord("Q"), 27):
                return
            if key == ord("/"):
                self._view.words = self._prompt(window)
                self._view.offset = 0
            else:
                self._scroll(key, window.getmaxyx()[0] - HEAD_LINES - 1)

    def _fetch(self) -> None:
        try:
            self._snapshot, self._problem = self._reader.fetch(), None
        except WatchError as exc:
            self._problem = str(exc)  # the last screen stays, with the problem on its last line

    def _draw(self, window: Any) -> None:
        import curses

        height, width = window.getmaxyx()
        window.erase()
        for row, line in enumerate(screen(self._snapshot, width - 1, height, self._view, self._problem)[:height]):
            with contextlib.suppress(curses.error):  # a window smaller than a line: what fits is shown
                window.addstr(row, 0, line, curses.A_BOLD if row < HEAD_LINES - 1 else curses.A_NORMAL)
        window.refresh()

    def _scroll(self, key: int, page: int) -> None:
        import curses

        moves = {curses.KEY_DOWN: 1, ord("j"): 1, curses.KEY_UP: -1, ord("k"): -1, curses.KEY_NPAGE: page,
                 ord(" "): page, curses.KEY_PPAGE: -page, curses.KEY_HOME: -10**9, ord("g"): -10**9,
                 curses.KEY_END: 10**9, ord("G"): 10**9}
        if key in moves:
            self._view.offset = max(0, min(self._view.offset + moves[key], self._view.rows_total - 1))

    def _prompt(self, window: Any) -> str:
        """The filter words, typed on the last line (Enter keeps them, Esc clears them)."""
        import curses

        height, width = window.getmaxyx()
        text = self._view.words
        window.timeout(-1)
        curses.curs_set(1)
        try:
            while True:
                window.move(height - 1, 0)
                window.clrtoeol()
                window.addstr(height - 1, 0, _fit(f"filter: {text}", width - 1))
                key = window.get_wch()
                if key in ("\n", "\r", curses.KEY_ENTER):
                    return text.strip()
                if key == "\x1b":
                    return ""
                if key in (curses.KEY_BACKSPACE, "\x7f", "\b"):
                    text = text[:-1]
                elif isinstance(key, str) and key.isprintable():
                    text += key
        finally:
            curses.curs_set(0)
