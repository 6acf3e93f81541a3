"""A room of thirty: the real dashboard server under concurrent sessions, driven over Streamlit's own protocol.

    .venv/bin/python benchmarks/bench_room.py                      # 30 digits sessions, then 5 EfficientNet-Lite0
    .venv/bin/python benchmarks/bench_room.py --sessions 10 --changes 10 --efficientnet 0   # a quicker look

The script starts ``streamlit run dashboard/app.py`` itself on a free port on 127.0.0.1 (fresh disk
cache and upload folder) and drives it with **websocket clients**, not browsers: each client speaks
what the browser speaks over ``/_stcore/stream`` (``BackMsg.rerun_script`` with the widget states
of the controls it changes, the URL's query string; ``ForwardMsg`` deltas back), using the
``websockets`` package Streamlit itself depends on. Thirty headless Chromiums would need more CPU
than the server on this 2-core machine; the server does the same work either way (it renders
every element; only drawing them is skipped).

Each digits session opens the app on the defaults, then changes at least ``--changes`` controls
(bits, granularity, clipping, calibration size and selection, BatchNorm folding, keep-in-float: a
per-session random sequence, seeded), thinking ``--think`` seconds between changes, sessions
starting ``--stagger`` seconds apart. Measured from sending a change:

* **new numbers**: the "Quantized top-1" card drawn for the new config (the run's config is read
  from the URL's ``cfg`` parameter the app writes on every run, so a stale run cannot count);
* **complete**: the session's history shows the new config (the whole evaluation is on screen).

Checked all along: **errors** (exceptions, ``st.error``, timeouts, dropped connections: must be 0)
and **isolation**: every history list a session is shown (the Overview's "Restore a configuration"
options, one label per evaluated config) and every ``cfg`` it is sent must be its own, computed
by the client from its own changes; a session seeing another's history or controls is counted.
Also counted: how often a session was told it waits behind others ("N other evaluations running").
Server memory is the peak RSS of the server's process tree (``/proc``, sampled every 0.2 s).

With ``../shared/data/imagenet-samples`` present, ``--efficientnet N`` sessions then load
EfficientNet-Lite0 on those images through the sidebar and change ``--changes-efficientnet``
controls each (skipped with a message otherwise). Prints markdown tables (machine, date, load).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLES = ROOT.parent / "shared" / "data" / "imagenet-samples"
GOAL_P95_S = 3.0  # digits, 30 sessions, 2 cores (issue 14)
TIMEOUT_S = 240.0  # no new numbers this long after a change is an error

import websockets  # noqa: E402
from streamlit.logger import set_log_level  # noqa: E402
from streamlit.proto.BackMsg_pb2 import BackMsg  # noqa: E402
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg  # noqa: E402
from streamlit.proto.WidgetStates_pb2 import WidgetState  # noqa: E402

set_log_level("error")  # importing the dashboard's cached functions outside a server warns once per function
from dashboard import labels, sharing  # noqa: E402
from dashboard.state import default_config  # noqa: E402
from ptq_core.config import QuantConfig  # noqa: E402
from ptq_core.machine import machine_line  # noqa: E402

# -- what a session changes: widget key, its kind, the config field, the values it may take ----------------
GRAN = labels.GRANULARITY
CLIP = labels.CLIPPING
CHANGES: list[tuple[str, str, str, list[Any], Callable[[Any], Any]]] = [
    ("sb_w_bits", "selectbox", "weights.bits", [8, 7, 6, 5, 4, 3], lambda n: f"INT{n} ({2**n} levels)"),
    ("sb_w_granularity", "selectbox", "weights.granularity", ["per_tensor", "per_channel", "per_group"], GRAN.get),
    ("sb_w_clipping", "selectbox", "weights.clipping", ["minmax", "percentile", "mse"], CLIP.get),
    ("sb_w_scheme", "radio", "weights.scheme", ["symmetric", "asymmetric"], str),
    ("sb_a_bits", "selectbox", "activations.bits", [8, 7, 6, 5, 4], lambda n: f"INT{n} ({2**n} levels)"),
    ("sb_a_clipping", "selectbox", "activations.clipping", ["minmax", "percentile", "mse", "kl"], CLIP.get),
    ("sb_a_scheme", "radio", "activations.scheme", ["symmetric", "asymmetric"], str),
    ("sb_cal_num_samples", "number_input", "calibration.num_samples", [64, 128, 256], int),
    ("sb_cal_selection", "selectbox", "calibration.selection", ["random", "first", "balanced"], labels.SELECTION.get),
    ("sb_fold_bn", "checkbox", "fold_batchnorm", [True, False], bool),
    ("sb_keep_float", "multiselect", "keep_float", [[], ["fc2"], ["conv1"]], list),
]
EFFICIENTNET_CHANGES = ["sb_w_bits", "sb_a_clipping", "sb_w_granularity", "sb_a_bits", "sb_a_scheme", "sb_w_clipping"]
DEFAULT_GROUP_SIZE = 32  # the sidebar's group size while per_group is chosen (dashboard.state.DEFAULT_GROUP_SIZE)


def with_change(data: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    """The config dict with one sidebar field changed, as ``dashboard.state.config_from_state`` would build it."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    section, _, name = field.partition(".")
    if name:
        out[section][name] = value
        if field == "weights.granularity":
            out["weights"]["group_size"] = DEFAULT_GROUP_SIZE if value == "per_group" else None
    else:
        out[section] = value
    return QuantConfig.from_dict(out).to_dict()


# -- one client: a browser tab, minus the drawing ----------------------------------------------------------
@dataclasses.dataclass
class Run:
    """What one script run sent: the config it ran for (URL cfg), numbers, history, problems."""

    cfg: str
    metric_t: float | None = None
    options: list[str] | None = None
    options_t: float | None = None
    models: list[str] = dataclasses.field(default_factory=list)  # the Overview's "**model** (...) on **data**" lines
    status: int | None = None


class Client:
    def __init__(self, name: str, url: str) -> None:
        self.name, self.url = name, url
        self.runs: list[Run] = []
        self.cfg = ""  # the URL's cfg as the server last set it
        self.query = ""
        self.page = ""  # the page script hash the server last ran (a browser sends it back, or the server resets widgets)
        self.widgets: dict[str, Any] = {}  # key -> (element type, the widget's latest proto)
        self.values: dict[str, WidgetState] = {}  # widget id -> its value as the browser holds it (sent on every rerun)
        self.owned: set[str] = set()  # widget ids this user set: their last choice wins over a late echo
        self.late_echoes = 0  # echoes of an older value from a run that started before the user's change arrived
        self.errors: list[str] = []
        self.warnings: set[str] = set()
        self.busy_notices = 0
        self.changed = asyncio.Event()
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.ws = await websockets.connect(self.url, subprotocols=["streamlit"], max_size=None, open_timeout=60,  # type: ignore[list-item]
                                           ping_interval=None)
        self.reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.ws is not None:
            await self.ws.close()

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                self._handle(data)
                self.changed.set()
        except websockets.ConnectionClosed as exc:
            self.errors.append(f"connection closed by the server: {exc}")
            self.changed.set()

    def _handle(self, data: bytes) -> None:
        msg = ForwardMsg()
        msg.ParseFromString(data)
        kind = msg.WhichOneof("type")
        now = time.perf_counter()
        if kind == "new_session":
            self.runs.append(Run(self.cfg))
        elif kind == "navigation":  # st.navigation's page: what a browser sends back (else the server resets widgets)
            self.page = msg.navigation.page_script_hash
        elif kind == "page_info_changed":
            self.query = msg.page_info_changed.query_string
            self.cfg = parse_qs(self.query).get(sharing.PARAM, [""])[-1]
            if self.runs:
                self.runs[-1].cfg = self.cfg
        elif kind == "script_finished" and self.runs:
            self.runs[-1].status = msg.script_finished
        elif kind == "ref_hash":
            self.errors.append("the server sent a cached-message reference this client never asked for")
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element" and self.runs:
            self._element(msg.delta.new_element, self.runs[-1], now)

    def _element(self, element: Any, run: Run, now: float) -> None:
        etype = element.WhichOneof("type")
        proto = getattr(element, etype)
        if etype == "exception":
            self.errors.append(f"exception: {proto.type}: {proto.message[:200]}")
        elif etype == "alert":
            body = proto.body
            if proto.format == proto.ERROR:
                self.errors.append(f"st.error: {body[:200]}")
            elif proto.format == proto.WARNING:
                self.warnings.add(body[:160])
            elif "other evaluation" in body and "running on this server" in body:
                self.busy_notices += 1
        elif etype == "metric" and proto.label.startswith("Quantized top-1") and run.metric_t is None:
            run.metric_t = now
        elif etype == "markdown" and proto.body.startswith("**") and "parameters) on **" in proto.body:
            run.models.append(proto.body.split("**")[1])
        if getattr(proto, "id", ""):
            key = proto.id.rsplit("-", 1)[-1]
            self.widgets[key] = (etype, proto)
            if getattr(proto, "set_value", False) or proto.id not in self.values:  # the server set it, or it is new
                held = browser_value(etype, proto)
                if held is not None and proto.id in self.owned:
                    # A run that started before this user's change reached the server (the page's own st.rerun
                    # after the runtime check) echoes the value it had; the change in flight is the user's choice.
                    self.late_echoes += held != self.values.get(proto.id)
                elif held is not None:
                    self.values[proto.id] = held
            if key == "ov_restore":
                run.options, run.options_t = list(proto.options), now

    async def send(self, states: list[WidgetState]) -> float:
        """A rerun with ``states`` changed, sending every widget's value as a browser does (the server may have
        forgotten a widget whose run a newer rerun interrupted; the browser's copy restores it)."""
        for ws in states:
            if ws.WhichOneof("value") != "trigger_value":
                self.values[ws.id] = ws
                self.owned.add(ws.id)
        msg = BackMsg()
        msg.rerun_script.query_string = self.query
        msg.rerun_script.page_script_hash = self.page
        sent = {ws.id: ws for ws in states}
        msg.rerun_script.widget_states.widgets.extend([*sent.values(), *(v for k, v in self.values.items() if k not in sent)])
        await self.ws.send(msg.SerializeToString())
        return time.perf_counter()

    def state(self, key: str, value: Any) -> WidgetState:
        """The widget state a browser sends when ``key`` is set to ``value`` (its displayed text for pickers)."""
        etype, proto = self.widgets[key]
        ws = WidgetState(id=proto.id)
        if etype in ("selectbox", "radio"):
            if value not in proto.options:
                raise SystemExit(f"{key}: {value!r} is not among its options {list(proto.options)} (plan out of date?)")
            ws.string_value = value
        elif etype == "multiselect":
            ws.string_array_value.data.extend(value)
        elif etype == "number_input":
            if proto.data_type == proto.INT:
                ws.int_value = int(value)
            else:
                ws.double_value = float(value)
        elif etype == "checkbox":
            ws.bool_value = bool(value)
        elif etype == "text_input":
            ws.string_value = value
        elif etype == "button":
            ws.trigger_value = True
        else:
            raise SystemExit(f"{key}: a {etype} is not driven by this script")
        return ws

    async def wait(self, done: Callable[[], Any], timeout: float) -> Any:
        deadline = time.perf_counter() + timeout
        while True:
            found = done()
            if found is not None or self.errors:
                return found
            left = deadline - time.perf_counter()
            if left <= 0:
                return None
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                pass


def browser_value(etype: str, proto: Any) -> WidgetState | None:
    """The value a browser holds for a widget it was just sent: what the server set, else the widget's default."""
    ws = WidgetState(id=proto.id)
    server = getattr(proto, "set_value", False)
    if etype in ("selectbox", "radio"):
        if server:
            ws.string_value = proto.raw_value
        elif proto.HasField("default") and 0 <= proto.default < len(proto.options):
            ws.string_value = proto.options[proto.default]
        else:
            return None
    elif etype == "multiselect":
        ws.string_array_value.data.extend(list(proto.raw_values) if server else [proto.options[i] for i in proto.default])
    elif etype == "number_input":
        value = proto.value if server else (proto.default if proto.HasField("default") else None)
        if value is None:
            return None
        if proto.data_type == proto.INT:
            ws.int_value = int(value)
        else:
            ws.double_value = float(value)
    elif etype == "checkbox":
        ws.bool_value = proto.value if server else proto.default
    elif etype in ("text_input", "text_area"):
        ws.string_value = proto.value if server else proto.default
    else:  # buttons, uploaders, charts' selections: nothing to hold
        return None
    return ws


# -- one session's plan --------------------------------------------------------------------------------
@dataclasses.dataclass
class Timings:
    first: list[float] = dataclasses.field(default_factory=list)
    complete: list[float] = dataclasses.field(default_factory=list)
    load: list[float] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    isolation: list[str] = dataclasses.field(default_factory=list)
    warnings: set[str] = dataclasses.field(default_factory=set)
    busy_notices: int = 0
    late_echoes: int = 0
    changes: int = 0


class Session:
    """One user: opens the app, makes changes, checks every history and config it is shown is its own."""

    def __init__(self, client: Client, timings: Timings) -> None:
        self.client, self.t = client, timings
        self.base = default_config()
        self.config = self.base.to_dict()
        self.history: list[str] = []  # config JSONs, as dashboard.state.remember orders them
        self.checked_runs = 0

    def _label_history(self) -> list[str]:
        return [labels.config_label(QuantConfig.from_json(c).to_dict()) for c in reversed(self.history)]

    def _remember(self, config: dict[str, Any]) -> None:
        key = QuantConfig.from_dict(config).to_json()
        if key in self.history:
            self.history.remove(key)
        self.history.append(key)

    def _check(self, allowed_cfgs: set[str], allowed_histories: list[list[str]]) -> None:
        """Every run since the last check showed this session's own config and history (one of the allowed)."""
        for run in self.client.runs[self.checked_runs:]:
            if run.cfg not in allowed_cfgs:
                self.t.isolation.append(f"{self.client.name}: shown cfg {run.cfg!r}, not its own")
            if run.options is not None and run.options not in allowed_histories:
                self.t.isolation.append(f"{self.client.name}: shown a history of {len(run.options)} configs that is "
                                        f"not its own ({run.options[:2]}...)")
        self.checked_runs = len(self.client.runs)

    async def change(self, states: list[WidgetState], config: dict[str, Any], *, remember: bool = True) -> bool:
        """Send one change; wait for its numbers and its place in the history. False on error or timeout."""
        c = self.client
        before_cfg = sharing.encode(QuantConfig.from_dict(self.config), self.base)
        before_hist = self._label_history()
        self.config = config
        want = sharing.encode(QuantConfig.from_dict(config), self.base)
        if remember:
            self._remember(config)
        runs_before = len(c.runs)
        t0 = await c.send(states)

        def numbers() -> float | None:
            return next((r.metric_t for r in c.runs[runs_before:] if r.cfg == want and r.metric_t), None)

        first = await c.wait(numbers, TIMEOUT_S)
        target = self._label_history()

        def complete() -> float | None:
            return next((r.options_t for r in c.runs[runs_before:] if r.cfg == want and r.options == target), None)

        done = await c.wait(complete, TIMEOUT_S) if first is not None else None
        self._check({before_cfg, want}, [before_hist, target])
        if first is None or done is None:
            if not c.errors:
                c.errors.append(f"no {'new numbers' if first is None else 'complete numbers'} within {TIMEOUT_S:.0f} s")
            return False
        self.t.first.append(first - t0)
        self.t.complete.append(done - t0)
        self.t.changes += 1
        return True

    async def open_app(self) -> bool:
        c = self.client
        await c.open()
        t0 = await c.send([])
        self._remember(self.config)
        target = self._label_history()

        def loaded() -> float | None:
            return next((r.options_t for r in c.runs if r.cfg == "" and r.options == target), None)

        done = await c.wait(loaded, TIMEOUT_S)
        self._check({""}, [target])
        if done is None:
            if not c.errors:
                c.errors.append(f"the app did not load within {TIMEOUT_S:.0f} s")
            return False
        self.t.load.append(done - t0)
        return True

    async def digits(self, seed: int, changes: int, think: tuple[float, float]) -> None:
        rng = random.Random(seed)
        last = ""
        for _ in range(changes):
            await asyncio.sleep(rng.uniform(*think))
            key, _kind, field, values, shown = rng.choice([c for c in CHANGES if c[0] != last])
            section, _, name = field.partition(".")
            current = self.config[section][name] if name else self.config[section]
            value = rng.choice([v for v in values if v != current])
            last = key
            if not await self.change([self.client.state(key, shown(value))], with_change(self.config, field, value)):
                return

    async def efficientnet(self, seed: int, changes: int, think: tuple[float, float]) -> None:
        """Load EfficientNet-Lite0 on the shared images through the sidebar, then change controls (first answers timed)."""
        c = self.client
        name = next(o for o in c.widgets["src_m_name"][1].options if o.startswith("efficientnet_lite0")
                    and "random" not in o)
        states = [c.state("src_m_name", name), c.state("src_d_from", "image folder on the server"),
                  c.state("src_d_path", str(SAMPLES)), c.state("src_load", True)]
        runs_before = len(c.runs)
        t0 = await c.send(states)

        def loaded() -> float | None:
            return next((r.metric_t for r in c.runs[runs_before:] if "efficientnet_lite0" in r.models and r.metric_t),
                        None)

        done = await c.wait(loaded, TIMEOUT_S * 2)
        if done is None:
            if not c.errors:
                c.errors.append("EfficientNet-Lite0 did not load")
            return
        self.t.load.append(done - t0)
        rng = random.Random(seed)
        for key in EFFICIENTNET_CHANGES[:changes]:
            await asyncio.sleep(rng.uniform(*think))
            first_at = len(c.runs)
            spec = next(ch for ch in CHANGES if ch[0] == key)
            _, _, field, values, shown = spec
            section, _, fname = field.partition(".")
            value = rng.choice([v for v in values if v != self._current(section, fname)])
            t0 = await c.send([c.state(key, shown(value))])
            self.config = self._eff_config(section, fname, value)

            def numbers(first_at: int = first_at) -> float | None:
                return next((r.metric_t for r in c.runs[first_at:] if r.metric_t and "efficientnet_lite0" in r.models),
                            None)

            first = await c.wait(numbers, TIMEOUT_S)
            if first is None:
                if not c.errors:
                    c.errors.append(f"no new numbers within {TIMEOUT_S:.0f} s")
                return
            self.t.first.append(first - t0)
            self.t.changes += 1
        await asyncio.sleep(2)
        for run in c.runs:
            if run.models and any(m != "efficientnet_lite0" and m != "digits_cnn" for m in run.models):
                self.t.isolation.append(f"{c.name}: shown model {run.models}")

    def _current(self, section: str, name: str) -> Any:
        return self.config[section][name] if name else self.config[section]

    def _eff_config(self, section: str, name: str, value: Any) -> dict[str, Any]:
        out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.config.items()}
        if name:
            out[section][name] = value
        else:
            out[section] = value
        return out


async def run_sessions(url: str, n: int, kind: str, args: argparse.Namespace) -> Timings:
    timings = Timings()
    think = tuple(float(x) for x in args.think.split(","))

    async def one(i: int) -> None:
        await asyncio.sleep(i * args.stagger)
        client = Client(f"{kind}-{i}", url)
        session = Session(client, timings)
        try:
            if await session.open_app():
                if kind == "digits":
                    await session.digits(args.seed + i, args.changes, think)  # type: ignore[arg-type]
                else:
                    await session.efficientnet(args.seed + i, args.changes_efficientnet, think)  # type: ignore[arg-type]
        finally:
            timings.errors += [f"{client.name}: {e}" for e in client.errors]
            timings.warnings |= client.warnings
            timings.busy_notices += client.busy_notices
            timings.late_echoes += client.late_echoes
            await client.close()

    await asyncio.gather(*(one(i) for i in range(n)))
    return timings


# -- the server ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[int]:
    """``pid`` and every descendant (Ray or worker processes included), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid``'s process tree."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status", encoding="ascii") as fh:
                total += next((int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:")), 0)
        except OSError:
            continue
    return total


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) ``pid``'s process tree has used so far (exited children not counted)."""
    ticks = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        except (OSError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


class Server:
    """``streamlit run dashboard/app.py`` on 127.0.0.1, its peak tree RSS sampled in a thread."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.peak = 0
        self._stop = threading.Event()
        self.log = (workdir / "server.log").open("w")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PTQ_CACHE_DIR": str(workdir / "cache"),
               "PTQ_UPLOAD_DIR": str(workdir / "uploads"),
               "PTQ_DATA_ROOTS": os.pathsep.join([str(ROOT / "assets"), str(SAMPLES.parent)])}
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("streamlit")), "run", str(ROOT / "dashboard" / "app.py"),
             "--server.address", "127.0.0.1", "--server.port", str(self.port), "--server.headless", "true",
             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, tree_rss_bytes(self.proc.pid))

    def __enter__(self) -> Server:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stcore/health", timeout=2)
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.__exit__()
                    raise SystemExit(f"the server did not start:\n{(self.workdir / 'server.log').read_text()[-3000:]}") from None
                time.sleep(0.3)
        self.idle = tree_rss_bytes(self.proc.pid)
        self._sampler.start()
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/_stcore/stream"

    def log_tail(self, lines: int = 80) -> str:
        """The end of the server's output (tracebacks of errors the clients saw)."""
        self.log.flush()
        return "\n".join((self.workdir / "server.log").read_text(errors="replace").splitlines()[-lines:])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group (start_new_session): the server and its children
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


# -- the report ------------------------------------------------------------------------------------------
def _pcts(xs: list[float]) -> str:
    if not xs:
        return "– | – | –"
    q = statistics.quantiles(xs, n=20, method="inclusive") if len(xs) > 1 else [xs[0]] * 19
    return f"{statistics.median(xs):.2f} | {q[18]:.2f} | {max(xs):.2f}"


def _p95(xs: list[float]) -> float | None:
    return statistics.quantiles(xs, n=20, method="inclusive")[18] if len(xs) > 1 else (xs[0] if xs else None)


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime




def report(name: str, t: Timings, n: int, seconds: float, peak: int, idle: int, goal: bool, cpu: tuple[float, float],
           load: tuple[float, float]) -> None:
    print(f"### {name}: {n} sessions, {t.changes} control changes in {seconds:.0f} s\n")
    print("| measure | p50 (s) | p95 (s) | max (s) |")
    print("|---|---:|---:|---:|")
    print(f"| open the app (first page with numbers) | {_pcts(t.load)} |")
    print(f"| control change -> new numbers | {_pcts(t.first)} |")
    if t.complete:
        print(f"| control change -> complete (in the history) | {_pcts(t.complete)} |")
    p95 = _p95(t.first)
    verdict = "" if not goal or p95 is None else (" (goal <= 3 s: met)" if p95 <= GOAL_P95_S else " (goal <= 3 s: missed)")
    print(f"\nServer peak memory (RSS, process tree): {peak / 2**30:.2f} GiB (idle after start {idle / 2**30:.2f} GiB). "
          f"Errors: {len(t.errors)}. Isolation violations: {len(t.isolation)}. 'N other evaluations running' "
          f"notices shown: {t.busy_notices}. Late echoes of a control's previous value (ignored, as the change in "
          f"flight wins): {t.late_echoes}. p95 new numbers {p95 or 0:.2f} s{verdict}.\n")
    server_cpu, client_cpu = cpu
    per_change = f"{server_cpu / t.changes:.2f} CPU-s per change, " if t.changes else ""
    print(f"CPU: server {server_cpu:.0f} s ({per_change}{server_cpu / seconds:.2f} of {os.cpu_count()} cores on "
          f"average), these clients {client_cpu:.0f} s. Machine load average {load[0]:.1f} at the start, {load[1]:.1f} "
          "at the end (other work on the machine counts too).\n")
    for line in (t.errors + t.isolation)[:10]:
        print(f"- {line}")
    if t.warnings:
        print(f"\nWarnings the app showed (distinct, first 3): {sorted(t.warnings)[:3]}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=30, help="concurrent digits sessions")
    parser.add_argument("--changes", type=int, default=12, help="control changes per digits session (at least 10)")
    parser.add_argument("--think", default="8,20",
                        help="seconds between a session's changes: min,max (uniform); 12 changes take about 3 minutes")
    parser.add_argument("--stagger", type=float, default=0.5, help="seconds between two sessions' first requests")
    parser.add_argument("--efficientnet", type=int, default=5, help="EfficientNet-Lite0 sessions afterwards (0: none)")
    parser.add_argument("--changes-efficientnet", type=int, default=6, help="control changes per EfficientNet session")
    parser.add_argument("--seed", type=int, default=0, help="seeds every session's sequence of changes")
    args = parser.parse_args()
    if args.efficientnet and not SAMPLES.is_dir():
        print(f"skipping EfficientNet-Lite0: {SAMPLES} is absent", file=sys.stderr)
        args.efficientnet = 0
    print(f"Machine: {machine_line()}; load average at start {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M')}\n")
    with tempfile.TemporaryDirectory(prefix="ptq_bench_room_") as tmp, Server(Path(tmp)) as server:
        def phase(kind: str, n: int) -> tuple[Timings, dict[str, Any]]:
            server.peak = 0
            cpu0, own0, load0, start = tree_cpu_s(server.proc.pid), _own_cpu_s(), os.getloadavg()[0], time.perf_counter()
            timings = asyncio.run(run_sessions(server.url, n, kind, args))
            cpu = (tree_cpu_s(server.proc.pid) - cpu0, _own_cpu_s() - own0)
            return timings, {"n": n, "seconds": time.perf_counter() - start, "peak": server.peak, "idle": server.idle,
                             "cpu": cpu, "load": (load0, os.getloadavg()[0])}

        digits, info = phase("digits", args.sessions)
        report("digits CNN (defaults: onnxruntime simulation, integer runtime check on)", digits,
               goal=args.sessions >= 30, **info)
        if args.efficientnet:
            eff, info = phase("efficientnet", args.efficientnet)
            report("EfficientNet-Lite0 (128 calibration / 372 evaluation images; first answers timed)", eff,
                   goal=False, **info)
        failed = digits.errors or digits.isolation or (args.efficientnet and (eff.errors or eff.isolation))
        if failed:
            print(f"\nThe server's last output:\n```\n{server.log_tail()}\n```", file=sys.stderr)
    print(f"Load average at end {os.getloadavg()[0]:.2f}.")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
