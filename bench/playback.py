"""
What a viewer sees: the PoP's page in headless Chromium (Debian's, driven by
Playwright through ``tests/integration/browser.py``, one child process per
watch) playing the demo stream of a real ``twistd fbstream --role=all --demo``
with each of its two players, and, as the reference, the same page and the
same dash.js playing nginx-rtmp's 1-second DASH of the same source:

- ``dash.js/fbstream``: ``/?v=demo``, low-latency chunked CMAF;
- ``hls.js/fbstream``: ``/?v=demo&engine=hls``, LL-HLS;
- ``rtmpdump/fbstream``: RTMP playback of the source stream at the PoP
  (pulled through the dc-proxy from the encoder), the seeds' low-latency
  path; its latency is each frame's arrival less its timestamp's time on the
  MPD's clock, and a stall a gap of more than 0.5 s between two frames;
- ``dash.js/nginx-rtmp``: ``/?v=nginx&src=<nginx's MPD>&delay=<2 + early>``:
  Debian's nginx + libnginx-mod-rtmp (``dash_fragment 1s``), fed in real
  time by the demo publisher with a 1 s GOP (nginx-rtmp cuts fragments at
  keyframes). The page comes from an fbstream started without ``--demo``
  (it serves the page and nothing else); the MPD from nginx, cross-origin.
  Two things are added to the reference. Its MPD names no time source, and
  dash.js's default (time.akamai.com) is out of reach offline, so nginx
  adds a UTCTiming naming its own clock. Its availabilityStartTime is the
  second of the publish command, rounded down, so every frame looks
  ``early`` seconds older than it is: the bench measures ``early`` (when
  each fragment appears on disk against its start time), adds it to
  dash.js's liveDelay (2 s of real latency) and takes it off every latency
  sample.

Per run (a fresh page): the seconds of media played while sampled (0: the
player never started); stalls and seconds stalled once playing; live latency
p50/p95 and its drift (median of the last 10 samples minus the first 10) as
the player measures it (dash.js: getCurrentLiveLatency; hls.js: wall clock
minus the PROGRAM-DATE-TIME on screen); time to first frame; the renditions
played (seconds after the first) and when the top one was reached; media
requests the server failed (4xx/5xx, cut off) and requests the player
aborted. Then per player the same over all its runs. Only one server runs at
a time, so none competes with another for the cores.

    python bench/playback.py [--runs 3] [--seconds 60] [--no-reference] [--no-push] [--json PATH] [--keep]
    python bench/playback.py --smoke    (CI: one 15 s run of each fbstream player)

The exit status is non-zero only if the bench itself broke (a server did not
come up, a player never started or gave no samples), never on a figure.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.integration.browser import summarize  # noqa: E402
from tests.integration.test_twistd import all_role_process  # noqa: E402

FBSTREAM_PLAYERS = (
    ("dash.js/fbstream", "/?v=demo"),
    ("hls.js/fbstream", "/?v=demo&engine=hls"),
)
REFERENCE = "dash.js/nginx-rtmp"
#: RTMP playback at the PoP: rtmpdump (librtmp) reading the source stream.
RTMP_PLAYER = "rtmpdump/fbstream"
#: A gap this long between two video frames arriving is a stall of the RTMP player.
RTMP_STALL_GAP = 0.5
#: dash.js's target latency for nginx-rtmp's 1 s fragments (whole segments).
REFERENCE_DELAY = 2
NGINX_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"
#: The harness keeps the last this many failed and aborted requests of a run.
KEPT = 50
#: How long a step (a server coming up, a manifest appearing) may take.
STEP_SECONDS = 60

NGINX_CONF = """\
load_module {module};
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
rtmp {{
    server {{
        listen 127.0.0.1:{rtmp};
        application live {{
            live on;
            dash on;
            dash_path {dir}/dash;
            dash_fragment 1s;
            dash_playlist_length 30s;
        }}
    }}
}}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    types {{ application/dash+xml mpd; video/mp4 m4v; audio/mp4 m4a; }}
    # The time with milliseconds, ISO 8601, for the MPD's UTCTiming.
    map $time_iso8601 $time_s {{ "~^(?<s>.{{19}})" $s; }}
    map $time_iso8601 $time_zone {{ "~^.{{19}}(?<z>.*)$" $z; }}
    map $msec $time_ms {{ "~\\.(?<ms>\\d+)$" $ms; }}
    server {{
        listen 127.0.0.1:{http};
        root {dir};
        location /dash/ {{
            add_header Access-Control-Allow-Origin * always;
        }}
        location ~ ^/dash/.*\\.mpd$ {{
            add_header Access-Control-Allow-Origin * always;
            add_header Cache-Control no-cache always;
            # nginx-rtmp's MPD names no time source: dash.js would ask
            # time.akamai.com, unreachable offline (and that failure makes
            # the page give up on DASH). Name nginx's own clock instead.
            sub_filter_types application/dash+xml;
            sub_filter "</MPD>"
                '<UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" value="http://127.0.0.1:{http}/time"/></MPD>';
        }}
        location = /time {{
            default_type text/plain;
            add_header Access-Control-Allow-Origin * always;
            add_header Cache-Control no-store always;
            return 200 "$time_s.$time_ms$time_zone";
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """Children run the working tree's code."""
    return dict(os.environ, PYTHONPATH=ROOT, **extra)


def answers(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return None


def wait_ok(url: str, seconds: float = STEP_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if answers(url) == 200:
            return
        time.sleep(0.25)
    raise RuntimeError("%s did not answer 200 within %d s" % (url, seconds))


def stop(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    """SIGTERM, then SIGKILL; ``group``: the whole session it leads (nginx's workers)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def tail(path: Path | str, chars: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-chars:]
    except OSError:
        return ""


# The servers -------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """The processes under ``pid`` now (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % (entry,)) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@contextlib.contextmanager
def fbstream(directory: Path, demo: bool, push: bool = True) -> Iterator[dict[str, int]]:
    """
    ``twistd fbstream --role=all`` (the tests' ``all_role_process``: free
    ports, ``--set`` overrides), with the demo stream playable if ``demo``;
    yields its ports (``pop``: the PoP's HTTP, ``rtmp``: its RTMP); with the
    push channel between its tiers unless not ``push`` (TTL pulls). Whatever
    twistd started (the demo publisher) and outlives it is killed by its pid.
    """
    directory.mkdir()
    mine = set(descendants(os.getpid()))
    left: list[int] = []
    try:
        with all_role_process(directory, extra=("--demo",) if demo else (), env=child_env(),
                              push=push) as (ports, log):
            try:
                pop = "http://127.0.0.1:%d" % (ports["pop"],)
                if answers(pop + "/metrics") != 200:
                    raise RuntimeError("twistd fbstream did not come up:\n" + tail(log))
                if demo:
                    try:
                        wait_ok(pop + "/live/demo/manifest.mpd")
                        wait_ok(pop + "/live/demo/master.m3u8")
                    except RuntimeError as e:
                        raise RuntimeError("%s\n%s" % (e, tail(log))) from None
                    # A few segments of history, as a viewer arriving at a
                    # running stream finds.
                    time.sleep(5)
                yield ports
            finally:
                left = [pid for pid in descendants(os.getpid()) if pid not in mine]
    except subprocess.TimeoutExpired:
        print("  (twistd ignored SIGTERM for 15 s; killed)", file=sys.stderr)
    finally:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def fragments(dash: Path) -> dict[int, float]:
    """Completed fragments of nginx-rtmp's stream ``nginx``: start (ms) -> ``time.time()`` now."""
    now = time.time()
    found = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(dash):
            m = re.fullmatch(r"nginx-(\d+)\.m4v", name)
            if m:
                found[int(m.group(1))] = now
    return found


@contextlib.contextmanager
def nginx_rtmp(directory: Path) -> Iterator[dict[str, Any]]:
    """
    nginx-rtmp with DASH on, and the demo publisher (1 s GOP) sending to it in
    real time; yields the MPD's URL once it lists a few fragments, and how far
    its availabilityStartTime is from the time its first frame arrived.
    """
    if shutil.which("nginx") is None or not os.path.exists(NGINX_MODULE):
        raise RuntimeError("nginx-rtmp is not installed (apt-get install nginx libnginx-mod-rtmp)")
    directory.mkdir()
    # Run as root, nginx's workers are "nobody": they must reach the files.
    os.chmod(directory, 0o755)
    rtmp, http = free_port(), free_port()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(module=NGINX_MODULE, dir=directory, rtmp=rtmp, http=http))
    procs: list[tuple[subprocess.Popen[bytes], bool]] = []
    try:
        with open(directory / "nginx.out", "wb") as out:
            nginx = subprocess.Popen(
                ["nginx", "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(conf)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append((nginx, True))
        deadline = time.monotonic() + 10
        while answers("http://127.0.0.1:%d/time" % (http,)) is None:
            if nginx.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nginx did not start:\n" + tail(directory / "nginx.out")
                                   + tail(directory / "error.log"))
            time.sleep(0.1)
        with open(directory / "publisher.out", "wb") as out:
            publisher = subprocess.Popen(
                [sys.executable, "-m", "fbstream.demo", "--url", "rtmp://127.0.0.1:%d/live/nginx" % (rtmp,),
                 "--preset", "ultrafast", "--gop", "30"],
                cwd=ROOT, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
        procs.append((publisher, False))
        # nginx-rtmp writes fragment k's file (from nginx-raw.m4v) when the
        # keyframe starting k+1 arrives: the moment it appears is when media
        # time t(k+1) reached nginx.
        dash = directory / "dash"
        seen: dict[int, float] = {}
        deadline = time.monotonic() + STEP_SECONDS
        while len(seen) < 6:
            if publisher.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nginx-rtmp's DASH did not appear:\n" + tail(directory / "publisher.out")
                                   + tail(directory / "error.log"))
            for start, when in fragments(dash).items():
                seen.setdefault(start, when)
            time.sleep(0.02)
        url = "http://127.0.0.1:%d/dash/nginx.mpd" % (http,)
        with urllib.request.urlopen(url, timeout=5) as response:
            cors = response.headers.get("Access-Control-Allow-Origin")
            text = response.read().decode()
        ast = re.search(r'availabilityStartTime="([^"]+)"', text)
        if cors != "*" or "<S " not in text or "<UTCTiming" not in text or ast is None:
            raise RuntimeError("nginx's MPD is not what the page can play (CORS %r):\n%s" % (cors, text[:800]))
        declared = datetime.fromisoformat(ast.group(1)).timestamp()
        starts = sorted(seen)
        arrived = [seen[a] - b / 1000 for a, b in itertools.pairwise(starts)]
        yield {"mpd": url, "mpd_text": text, "declared_start": declared,
               "early": round(statistics.median(arrived) - declared, 3)}
    finally:
        for proc, group in reversed(procs):
            stop(proc, group)


# Watching ----------------------------------------------------------------------


def watch(url: str, seconds: float, console: Path) -> dict[str, Any]:
    """``python -m tests.integration.browser URL SECONDS`` in its own session; its JSON."""
    command = [sys.executable, "-m", "tests.integration.browser", url, str(seconds)]
    proc = subprocess.Popen(command, cwd=ROOT, env=child_env(FBSTREAM_BROWSER_CONSOLE=str(console)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        # The harness waits up to 30 s for a first frame before it samples.
        out, err = proc.communicate(timeout=seconds + 90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"url": url, "error": "the browser did not finish within %d s" % (seconds + 90,)}
    finally:
        # Chromium and Playwright's driver must not outlive the watch.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in out.decode("utf-8", "replace").splitlines() if line.strip()]
    try:
        seen = json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"url": url, "error": "the browser exited %s without a result:\n%s"
                % (proc.returncode, err.decode("utf-8", "replace")[-2000:])}
    seen["url"] = url
    # The machine's load while it ran: a bench shares the cores.
    seen["load"] = os.getloadavg()[0]
    return seen


def rtmp_watch(ports: dict[str, int], seconds: float) -> dict[str, Any]:
    """
    rtmpdump plays the demo over RTMP at the PoP for ``seconds``; the FLV it
    writes is read as it arrives. A frame's live latency is its arrival less
    the wall-clock time of its timestamp on the MPD's clock
    (availabilityStartTime plus the timestamp: the encoder starts both at the
    stream's first message), the measure dash.js uses for its own latency.
    """
    mpd = urllib.request.urlopen("http://127.0.0.1:%d/live/demo/manifest.mpd" % (ports["pop"],), timeout=10).read()
    found = re.search(rb'availabilityStartTime="([^"]+)"', mpd)
    if found is None:
        return {"url": "rtmp", "error": "the MPD has no availabilityStartTime"}
    stamp = found.group(1).decode().rstrip("Z")
    start = calendar.timegm(time.strptime(stamp.split(".")[0], "%Y-%m-%dT%H:%M:%S")) + float(
        "0." + stamp.split(".")[1] if "." in stamp else 0)
    url = "rtmp://127.0.0.1:%d/live/demo" % (ports["rtmp"],)
    proc = subprocess.Popen([shutil.which("rtmpdump") or "rtmpdump", "-r", url, "-v", "-q", "-o", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    began = time.time()
    frames: list[tuple[float, int]] = []  # (arrival, timestamp ms) of each video tag
    buf = b""
    header_done = False
    try:
        os.set_blocking(proc.stdout.fileno(), False)  # type: ignore[union-attr]
        while time.time() - began < seconds + (frames[0][0] - began if frames else 30):
            if frames and time.time() - frames[0][0] >= seconds:
                break
            try:
                data = os.read(proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
            except BlockingIOError:
                time.sleep(0.005)
                continue
            if not data:
                break
            now = time.time()
            buf += data
            if not header_done:
                if len(buf) < 13:
                    continue
                buf, header_done = buf[13:], True
            while len(buf) >= 15:
                size = int.from_bytes(buf[1:4], "big")
                if len(buf) < 15 + size:
                    break
                # Video frames only: not the AVC sequence header (a player's
                # start messages carry it with the stream's first timestamp).
                if buf[0] == 9 and size >= 2 and not (buf[11] & 0x0F == 7 and buf[12] == 0):
                    frames.append((now, int.from_bytes(buf[4:7], "big") | (buf[7] << 24)))
                buf = buf[15 + size:]
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    if not frames:
        return {"url": url, "error": "rtmpdump received no video"}
    gaps = [b[0] - a[0] for a, b in zip(frames, frames[1:]) if b[0] - a[0] > RTMP_STALL_GAP]
    samples = []
    for second in range(int(seconds)):  # the newest frame by each second after the first
        edge = frames[0][0] + second
        last = max((f for f in frames if f[0] <= edge), key=lambda f: f[0])
        samples.append({"currentTime": last[1] / 1000, "latency": last[0] - (start + last[1] / 1000)})
    values = [v["latency"] for v in samples]
    summary = {
        "seconds": len(samples), "stalls": len(gaps), "stalled_seconds": round(sum(gaps), 2),
        "latency_p50": pct(values, 0.5), "latency_p95": pct(values, 0.95),
        "first_frame_seconds": round(frames[0][0] - began, 2),
        "renditions": [["source", frames[0][1] / 1000]], "top_reached_at": frames[0][1] / 1000,
        "failed": [], "aborted": [], "errors": [],
    }
    return {"url": url, "samples": samples, "summary": summary, "load": os.getloadavg()[0]}


def played(seen: dict[str, Any]) -> float:
    """Seconds of media the player went through while sampled."""
    times = [s.get("currentTime") or 0.0 for s in seen.get("samples", [])]
    return max(times) - times[0] if times else 0.0


def broken(seen: dict[str, Any]) -> str | None:
    """Why a run says nothing about the player (the bench broke), else None."""
    if "error" in seen:
        return seen["error"]
    if not seen["samples"]:
        return "no samples"
    # A live player's currentTime is set by its first seek, before any frame:
    # started means it moved.
    if played(seen) < 0.5:
        return "the player never started (errors: %s)" % ("; ".join(seen["summary"].get("errors", [])[:3]) or "none",)
    return None


def shift_latency(seen: dict[str, Any], offset: float) -> None:
    """
    Take ``offset`` seconds off every latency sample of a run and summarize it
    again (the one as played stays in ``summary_as_played``).
    """
    if "samples" not in seen:
        return
    for sample in seen["samples"]:
        if sample.get("latency") is not None:
            sample["latency_as_played"] = sample["latency"]
            sample["latency"] = sample["latency"] - offset
    seen["summary_as_played"] = seen["summary"]
    seen["summary"] = summarize(seen)


# Figures -----------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latencies(seen: dict[str, Any]) -> list[float]:
    return [s["latency"] for s in seen.get("samples", []) if s.get("latency") is not None]


def drift(values: list[float]) -> float | None:
    if len(values) < 20:
        return None
    return statistics.median(values[-10:]) - statistics.median(values[:10])


def renditions(summary: dict[str, Any]) -> str:
    played = summary["renditions"]
    if not played:
        return "-"
    origin = played[0][1]
    parts = ["%s@%+.0f" % (r, t - origin) if i else r for i, (r, t) in enumerate(played)]
    if len(parts) > 5:
        parts = parts[:4] + ["(+%d more)" % (len(parts) - 4,)]
    return " ".join(parts)


def top_at(summary: dict[str, Any]) -> str:
    if summary["top_reached_at"] is None or not summary["renditions"]:
        return "never"
    return "%.0f" % (summary["top_reached_at"] - summary["renditions"][0][1],)


def short(entry: str) -> str:
    """``"<time> <status or error> <url>"`` -> ``"<status> <path>"``."""
    parts = entry.split(" ", 2)
    if len(parts) < 3:
        return entry
    url = parts[2]
    path = re.sub(r"^https?://[^/]+", "", url)
    return "%s %s" % (parts[1], path)


def count(entries: list[Any]) -> str:
    """How many; the harness keeps the last 50 of each list, so 50 means 50 or more."""
    return "%d%s" % (len(entries), "+" if len(entries) >= KEPT else "")


def number(value: float | None, form: str = "%.2f") -> str:
    return "-" if value is None else form % (value,)


ROW = "%-19s %4s %6s %6s %7s %6s %6s %6s %6s  %-30s %5s %6s %7s %5s"
HEADER = ROW % ("player", "run", "played", "stalls", "stalled", "p50", "p95", "drift", "first",
                "renditions (s after first)", "top@", "failed", "aborted", "load")


def row(name: str, run: int, seen: dict[str, Any]) -> str:
    why = broken(seen)
    if why and "samples" not in seen:
        return "%-19s %4d  BROKEN: %s" % (name, run, why.splitlines()[0])
    s = seen["summary"]
    values = latencies(seen)
    return ROW % (name, run, "%.0f" % (played(seen),), s["stalls"], number(s["stalled_seconds"]),
                  number(s["latency_p50"]), number(s["latency_p95"]), number(drift(values), "%+.2f"),
                  number(s["first_frame_seconds"], "%.1f"), renditions(s), top_at(s), count(s["failed"]),
                  count(s["aborted"]), number(seen.get("load"), "%.1f"))


def details(seen: dict[str, Any]) -> list[str]:
    """The first failed and aborted requests and player errors of a run, indented."""
    if "summary" not in seen:
        return []
    s = seen["summary"]
    lines = []
    if s["failed"]:
        lines.append("      failed:  " + ", ".join(short(f) for f in s["failed"][:4]))
    if s["aborted"]:
        lines.append("      aborted: " + ", ".join(short(f) for f in s["aborted"][:4]))
    if s.get("errors"):
        lines.append("      errors:  " + "; ".join(str(e) for e in s["errors"][:3]))
    why = broken(seen)
    if why:
        lines.append("      BROKEN:  " + why.splitlines()[0])
    return lines


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A player's runs together: sums, latency percentiles over every sample of every run."""
    good = [r for r in runs if "summary" in r]
    pooled = [v for r in good for v in latencies(r)]
    drifts = [d for d in (drift(latencies(r)) for r in good) if d is not None]
    firsts = [r["summary"]["first_frame_seconds"] for r in good if r["summary"]["first_frame_seconds"] is not None]
    tops = [r for r in good if r["summary"]["top_reached_at"] is not None]
    return {
        "runs": len(runs),
        "seconds": sum(r["summary"]["seconds"] for r in good),
        "played": round(sum(played(r) for r in good), 1),
        "stalls": sum(r["summary"]["stalls"] for r in good),
        "stalled_seconds": round(sum(r["summary"]["stalled_seconds"] for r in good), 2),
        "latency_p50": pct(pooled, 0.5),
        "latency_p95": pct(pooled, 0.95),
        "drift_median": statistics.median(drifts) if drifts else None,
        "first_frame_median": statistics.median(firsts) if firsts else None,
        "reached_top": "%d/%d" % (len(tops), len(runs)),
        "failed": sum(len(r["summary"]["failed"]) for r in good),
        "aborted": sum(len(r["summary"]["aborted"]) for r in good),
        # Lists the harness cut short: their sums are lower bounds.
        "capped": [k for k in ("failed", "aborted") if any(len(r["summary"][k]) >= KEPT for r in good)],
    }


def aggregate_row(name: str, a: dict[str, Any]) -> str:
    return ROW % (name, "all", "%.0f" % (a["played"],), a["stalls"], number(a["stalled_seconds"]),
                  number(a["latency_p50"]), number(a["latency_p95"]), number(a["drift_median"], "%+.2f"),
                  number(a["first_frame_median"], "%.1f"), "top reached in %s runs" % (a["reached_top"],),
                  "", "%d%s" % (a["failed"], "+" if "failed" in a["capped"] else ""),
                  "%d%s" % (a["aborted"], "+" if "aborted" in a["capped"] else ""), "")


# The bench ---------------------------------------------------------------------


def measure(name: str, url: str, runs: int, seconds: float, work: Path, results: dict[str, Any],
            latency_offset: float = 0.0) -> None:
    """``runs`` watches of ``url``, a fresh page each; prints a row per run."""
    entry = results.setdefault(name, {"url": url, "runs": []})
    for run in range(1, runs + 1):
        seen = watch(url, seconds, work / ("%s-%d.console.log" % (name.replace("/", "-"), run)))
        if latency_offset:
            shift_latency(seen, latency_offset)
        entry["runs"].append(seen)
        print(row(name, run, seen))
        for line in details(seen):
            print(line)
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="watches per player (default 3)")
    parser.add_argument("--seconds", type=float, default=60, help="seconds of each watch (default 60)")
    parser.add_argument("--no-reference", action="store_true", help="leave nginx-rtmp out")
    parser.add_argument("--no-push", action="store_true",
                        help="the tiers pull with TTLs, no push channel (the `all` role pushes by default)")
    parser.add_argument("--smoke", action="store_true",
                        help="one 15 s run of each fbstream player, no reference (for CI)")
    parser.add_argument("--json", metavar="PATH", help="write every run's raw JSON here")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (twistd's and nginx's logs, the browsers' consoles)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.seconds, args.no_reference = 1, 15, True

    results: dict[str, Any] = {}
    notes: list[str] = []
    failures: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="fbstream-playback-"))
    os.chmod(work, 0o755)  # nginx's workers (nobody, when run as root) read under it
    print("%d run(s) of %g s per player; one server at a time; push channel %s\n"
          % (args.runs, args.seconds, "off (TTL pulls)" if args.no_push else "on"))
    print(HEADER)
    try:
        try:
            with fbstream(work / "fbstream", demo=True, push=not args.no_push) as ports:
                for name, query in FBSTREAM_PLAYERS:
                    measure(name, "http://127.0.0.1:%d%s" % (ports["pop"], query), args.runs, args.seconds,
                            work, results)
                entry = results.setdefault(RTMP_PLAYER, {"url": "rtmp://127.0.0.1:%d/live/demo" % (ports["rtmp"],),
                                                         "runs": []})
                for run in range(1, args.runs + 1):
                    seen = rtmp_watch(ports, args.seconds)
                    entry["runs"].append(seen)
                    print(row(RTMP_PLAYER, run, seen))
                    sys.stdout.flush()
        except RuntimeError as e:
            failures.append("fbstream: %s" % (e,))
            print("BROKEN fbstream: %s" % (e,))
        if not args.no_reference:
            try:
                with nginx_rtmp(work / "nginx") as reference, fbstream(work / "page", demo=False) as ports:
                    pop = ports["pop"]
                    # nginx-rtmp's availabilityStartTime is the publish
                    # command's second, rounded down: dash.js takes every
                    # frame for that much older than it is. Ask it for 2 s of
                    # real latency, and report real latency.
                    late = reference["early"]
                    url = "http://127.0.0.1:%d/?v=nginx&src=%s&delay=%.2f" % (
                        pop, urllib.parse.quote(reference["mpd"], safe=""), REFERENCE_DELAY + late)
                    # It must play before it is measured.
                    probe = watch(url, 8, work / "nginx-probe.console.log")
                    why = broken(probe)
                    if why:
                        raise RuntimeError("dash.js does not play nginx-rtmp's DASH: %s\n%s"
                                           % (why, "\n".join(probe.get("console", [])[-10:])))
                    results[REFERENCE] = {"url": url, "runs": [], "mpd": reference["mpd_text"],
                                          "availability_start_early": late}
                    measure(REFERENCE, url, args.runs, args.seconds, work, results, latency_offset=late)
                    notes.append(
                        "nginx-rtmp's availabilityStartTime (whole seconds) was %.2f s before its first frame "
                        "arrived: its rows\nask dash.js for liveDelay %.2f (2 s real) and have %.2f s taken off "
                        "every latency sample" % (late, REFERENCE_DELAY + late, late))
            except RuntimeError as e:
                failures.append("nginx-rtmp: %s" % (e,))
                print("BROKEN nginx-rtmp: %s" % (e,))
    finally:
        print()
        print(HEADER)
        for name, entry in results.items():
            entry["aggregate"] = aggregate(entry["runs"])
            print(aggregate_row(name, entry["aggregate"]))
        for note in notes:
            print("\n" + note)
        print("\nplayed: seconds of media played while sampled; stalled, p50, p95 (live latency), first (frame):"
              "\nseconds; drift: latency of the last 10 s minus the first 10 s; failed: media requests the server"
              "\nfailed (>= 400, cut off); aborted: cancelled by the player (n+: the harness keeps the last 50);"
              "\nload: 1-min load average after the run")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"runs": args.runs, "seconds": args.seconds, "players": results,
                           "failures": failures}, f, indent=1)
        if args.keep:
            print("\nlogs and consoles kept in %s" % (work,))
        else:
            shutil.rmtree(work, ignore_errors=True)
    for entry in results.values():
        for seen in entry["runs"]:
            why = broken(seen)
            if why:
                failures.append(why)
    if failures:
        print("\nthe bench broke:\n  " + "\n  ".join(f.splitlines()[0] for f in failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
