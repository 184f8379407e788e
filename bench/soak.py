"""``make soak``: minutes of mixed traffic through one gateway and one worker, then the books.

    python -m bench.soak                                # 50,000 requests, 32 at a time
    python -m bench.soak --requests 5000 --concurrency 16

The stack (``bench/memory_stack.py``): embedded PostgreSQL + Redis in a temp dir, the schema,
``python -m gateway catalog sync`` against the mock, one ``python -m gateway serve`` and one
``python -m gateway worker``. The provider is ``bench/soak_upstream.py``: 20-80 ms to the first
byte, 5-20 ms between chunks, ~3% of attempts failing (429 with Retry-After, 500, a dropped
connection, a reset mid-answer) and a few requests failing on every attempt. Workspaces and keys
come from the admin API.

The load is closed-loop from this process (aiohttp): JSON and SSE half and half; 20% with
``X-Memory: on`` on a few hundred threads (``X-Thread-Id``, end users via ``user``), each thread
one request at a time so its history is known exactly; the rest ``X-Memory: off``. Every
response is classified:

- ok: 200 with the request's own answer (the mock marks it), an SSE stream ending in [DONE];
- upstream-caused: the mock's ledger shows the failure that explains it (a relayed 429/500
  saying "mock-injected", a 502 after a drop or reset, an SSE error event after a reset);
- gateway-caused: anything else (a 5xx the mock did not cause, a malformed body or stream, a
  foreign answer, a dropped connection, a timeout). Must be zero.

Afterwards: every stored item embedded and the outbox empty (bounded wait); each thread's stored
messages equal, position by position, what the client's history says was remembered (a stream
broken off keeps the user turn and what arrived of the answer); a usage event per 200 and an
injection record per memory-on 200; ``/metrics`` agrees with the client's status counts and with
the mock's retries and failures; one access-log line per request and no error logged; no key and
no message text (every text the soak sends, and every answer, carries ``zqx``) in the gateway or
worker logs, error bodies or metrics; gateway and worker RSS (the worker: the RQ process that runs
the jobs, not its scheduler child) after warm-up (10% of the requests) against the end of the
load: flat means < 10% growth. ``--tracemalloc`` also reports what grew,
by source line: a snapshot stalls each process for up to a minute and leaves its RSS higher, so
use it for a separate, shorter run that attributes growth, not for the RSS verdict.

Results: stdout, ``bench-results/soak.md``, logs in ``bench-results/soak-logs/``. Exit 1 when an
invariant fails. Loopback only; every process and temp dir is gone at exit, failure or not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.memory_stack import Stack, memory_stack
from bench.processes import Service, free_port, loadavg, run_step, stop_on_signals, wait_http

ROOT = Path(__file__).resolve().parents[1]
MODEL = "soak/mock-gpt"
MARK = "zqx"  # every message text the soak sends, and every answer, carries it
RSS_FLAT = 0.10
_NAMES = "Ada Bruno Chiara Dmitri Elif Farah Goran Hana Ivo Junko".split()
_THINGS = "kayak piano greenhouse drone bakery telescope sailboat workshop".split()
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday".split()
_FACTS = (
    "my sister {name} just bought a {thing} for the {day} trip",
    "the {thing} budget agreed with {name} is {n} thousand euros",
    "remind me that {name} prefers to meet about the {thing} on {day}",
    "we decided to rent the {thing} from {name} until {day}",
    "{name} repaired the {thing} and wants {n} euros for it by {day}",
)
_ASKS = ("what should I plan next?", "keep that in mind.", "does it change {day}?", "and then?")
# What a failure looks like at the client -> the mock's last attempt outcomes that explain it.
_EXPLAINED_BY = {
    "sse:stream_error": {"reset"},
    "429": {"429", "429l", "429s"},
    "500": {"500", "500s"},
    "502:upstream_broken": {"reset"},
    "502:upstream_unreachable": {"drop", "reset"},
}


@dataclass
class Tenant:
    workspace: str
    keys: list[str]


@dataclass
class Thread:
    id: str
    tenant: int
    user: str
    history: list[dict[str, str]] = field(default_factory=list)
    busy: bool = False
    tainted: str = ""  # why its history is no longer known exactly


@dataclass
class Call:
    soak_id: str
    stream: bool
    memory: bool
    headers: dict[str, str]
    body: bytes
    thread: Thread | None = None
    message: dict[str, str] | None = None  # the new user message of a memory-on turn


@dataclass
class Result:
    soak_id: str
    stream: bool
    memory: bool
    status: int
    latency: float
    ttft: float | None = None
    verdict: str = "gateway"  # ok | pending (needs the mock's ledger) | upstream | gateway
    detail: str = ""
    error_key: str = ""  # for pending: which failure it looks like (_EXPLAINED_BY)
    error_text: str = ""  # every error body / event, scanned for secrets and content
    answer: str = ""  # the answer's text (as much as arrived)
    memory_items: int = 0


@dataclass
class Sample:
    at: float
    done: int
    gateway: int  # RSS, bytes
    worker: int
    cpu: tuple[float, float] = (0.0, 0.0)  # CPU seconds so far: gateway, worker


# --- the run ---


def main(argv: Sequence[str] | None = None) -> None:
    opts = _parser().parse_args(argv)
    stop_on_signals()
    logs = opts.results_dir / "soak-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    master = "cmgmaster_" + secrets.token_urlsafe(24)
    with _services(opts, logs, master) as (stack, mock_url):
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            report = runner.run(Soak(opts, stack, mock_url, master, logs).run())
    text = report.render()
    (opts.results_dir / "soak.md").write_text(text)
    print("\n" + text, flush=True)
    raise SystemExit(0 if report.passed else 1)


@contextlib.contextmanager
def _services(opts: argparse.Namespace, logs: Path, master: str) -> Iterator[tuple[Stack, str]]:
    port = free_port()
    mock_argv: list[str | Path] = [sys.executable, Path(__file__).with_name("soak_upstream.py")]
    mock_argv += ["--port", str(port)]
    mock_argv += ["--error-rate", str(opts.error_rate), "--sticky-rate", str(opts.sticky_rate)]
    mock = Service("upstream", mock_argv, log=logs / "upstream.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", mock, timeout=30)
        mock_url = f"http://127.0.0.1:{port}/v1"
        with memory_stack(logs, upstream=mock_url) as stack:
            if opts.tracemalloc:
                stack.env.update(_tracer(stack.data_dir, logs))
            stack.env.update(
                OPENROUTER_API_KEY="x", CMG_MASTER_KEY=master, CMG_UPSTREAM_RETRIES="2",
                CMG_RETRY_BASE_DELAY="0.05", CMG_RETRY_MAX_DELAY="1", CMG_LOG_FORMAT="json",
                CMG_LOG_LEVEL="info",
            )  # fmt: skip
            sync = [sys.executable, "-m", "gateway", "catalog", "sync"]
            print(run_step(sync, env=stack.env, log=logs / "setup.log").strip(), flush=True)
            stack.start_gateway()
            if not stack.start_worker():
                raise SystemExit("soak: `python -m gateway worker` is not available")
            _wait_worker(stack)
            yield stack, mock_url
    finally:
        mock.stop()


# Loaded at start-up by the gateway and the worker with --tracemalloc (as ``sitecustomize`` on
# PYTHONPATH, from the temp data dir): the first SIGUSR2 keeps per-line totals as the baseline
# (not the snapshot, whose traces would stay alive and swell the RSS being measured), each
# later one writes what grew since, by source line, to SOAK_TRACEMALLOC.<pid>.txt.
_TRACER = """
import os, signal, tracemalloc
_out = os.environ.get("SOAK_TRACEMALLOC")
if _out:
    tracemalloc.start()
    _base = []
    def _lines():
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)])
        return {f"{s.traceback[0].filename}:{s.traceback[0].lineno}": (s.size, s.count)
                for s in snap.statistics("lineno")}
    def _dump(signum, frame):
        now = _lines()
        if not _base:
            _base.append(now)
            return
        base = _base[0]
        diff = {k: now.get(k, (0, 0))[0] - base.get(k, (0, 0))[0] for k in now.keys() | base}
        top = sorted(diff, key=lambda k: -abs(diff[k]))[:25]
        with open(f"{_out}.{os.getpid()}.txt", "w") as f:
            f.write(f"traced memory grew {sum(diff.values()) / 2**20:.1f} MiB\\n")
            for k in top:
                size, count = now.get(k, (0, 0))
                kib, grew = size / 1024, diff[k] / 1024
                f.write(f"{k}: {kib:.0f} KiB ({grew:+.0f} KiB), {count} blocks\\n")
    signal.signal(signal.SIGUSR2, _dump)
"""


def _tracer(data_dir: Path, logs: Path) -> dict[str, str]:
    site = data_dir / "soak-tracer"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_TRACER)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "SOAK_TRACEMALLOC": str(logs / "tracemalloc")}


def _wait_worker(stack: Stack, limit: float = 180) -> None:
    """Until the worker registered with RQ: it loads the embedder first, so RSS is settled."""
    from redis import Redis

    worker = _service(stack, "worker")
    deadline = time.monotonic() + limit
    with Redis.from_url(stack.redis_url) as redis:
        while not redis.scard("rq:workers"):
            if not worker.alive() or time.monotonic() > deadline:
                raise SystemExit(f"soak: the worker did not start:\n{worker.tail()}")
            time.sleep(0.5)


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class Soak:
    def __init__(
        self, opts: argparse.Namespace, stack: Stack, mock_url: str, master: str, logs: Path
    ) -> None:
        self.opts, self.stack, self.mock_url, self.master, self.logs = (
            opts, stack, mock_url, master, logs,
        )  # fmt: skip
        self.rng = random.Random(opts.seed)
        self.url = stack.gateway_url
        self.tenants: list[Tenant] = []
        self.threads: list[Thread] = []
        self.results: list[Result] = []
        self.samples: list[Sample] = []
        self.issued = 0
        self.stopped = ""
        self.marks: list[tuple[int, float]] = []  # (requests done, when), every tenth
        self.gateway = _service(stack, "gateway")
        self.worker = _service(stack, "worker")

    async def run(self) -> Report:
        timeout = aiohttp.ClientTimeout(total=self.opts.timeout)
        connector = aiohttp.TCPConnector(limit=self.opts.concurrency + 4)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            await self._tenants(http)
            self._make_threads()
            sampler = asyncio.create_task(self._sample_rss())
            started = time.monotonic()
            self.marks.append((0, started))
            await asyncio.gather(*(self._client(http) for _ in range(self.opts.concurrency)))
            duration = time.monotonic() - started
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            self._sample(len(self.results))
            if self.opts.tracemalloc:
                self._trace()
            report = Report(self.opts, duration, self.results, list(self.samples), self.stopped)
            report.marks = self.marks
            ledger = await _get_json(http, self.mock_url.removesuffix("/v1") + "/mock/faults")
            report.resolve(ledger)
            await self._books(http, report)
        return report

    async def _tenants(self, http: aiohttp.ClientSession) -> None:
        auth = {"Authorization": f"Bearer {self.master}"}
        for w in range(self.opts.workspaces):
            name = f"soak-w{w}"
            await _post_json(http, f"{self.url}/admin/workspaces", {"name": name}, auth)
            keys = []
            for k in range(self.opts.keys):
                body = {"workspace": name, "name": f"soak-k{k}"}
                keys.append((await _post_json(http, f"{self.url}/admin/keys", body, auth))["key"])
            self.tenants.append(Tenant(name, keys))

    def _make_threads(self) -> None:
        per = max(1, self.opts.threads // len(self.tenants))
        for t in range(len(self.tenants)):
            for n in range(per):
                self.threads.append(Thread(f"soak-w{t}-t{n:03d}", t, f"w{t}-user{n % 16:02d}"))

    # --- the load ---

    async def _client(self, http: aiohttp.ClientSession) -> None:
        while self.issued < self.opts.requests and not self.stopped:
            i = self.issued
            self.issued += 1
            call = self._call(i)
            result = await self._send(http, call)
            if call.thread is not None:
                _advance(call.thread, call, result)
                call.thread.busy = False
            self.results.append(result)
            done = len(self.results)
            if done % max(1, self.opts.requests // 10) == 0:
                self._progress(done)

    def _call(self, i: int) -> Call:
        rng, sid = self.rng, f"s{i:06d}"
        stream = rng.random() < self.opts.stream_share
        thread = self._free_thread() if rng.random() < self.opts.memory_share else None
        tenant = self.tenants[thread.tenant if thread else rng.randrange(len(self.tenants))]
        body: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "metadata": {"soak_id": sid}}
        headers = {
            "Authorization": f"Bearer {rng.choice(tenant.keys)}",
            "Content-Type": "application/json",
            "X-Request-Id": f"soak-{sid}",
            "X-Memory": "on" if thread else "off",
        }
        message = {"role": "user", "content": self._text(sid)}
        if thread is not None:
            thread.busy = True
            headers["X-Thread-Id"] = thread.id
            body["user"] = thread.user
            system = {"role": "system", "content": f"{MARK}s-{thread.id} You are terse."}
            body["messages"] = [system, *thread.history, message]
        else:
            body["messages"] = self._one_off(sid, message)
            if rng.random() < 0.5:
                body["user"] = f"anon-{rng.randrange(1000)}"
        if stream:
            body["stream"] = True
            if rng.random() < 0.5:
                body["stream_options"] = {"include_usage": True}
        payload = json.dumps(body).encode()
        return Call(sid, stream, thread is not None, headers, payload, thread, message)

    def _free_thread(self) -> Thread | None:
        for _ in range(50):
            thread = self.rng.choice(self.threads)
            if not thread.busy:
                return thread
        return None

    def _text(self, sid: str) -> str:
        rng = self.rng
        words = {
            "name": rng.choice(_NAMES), "thing": rng.choice(_THINGS), "day": rng.choice(_DAYS),
            "n": rng.randint(2, 90),
        }  # fmt: skip
        fact = rng.choice(_FACTS).format(**words)
        return f"{MARK}m{sid}k {fact}; " + rng.choice(_ASKS).format(**words)

    def _one_off(self, sid: str, message: dict[str, str]) -> list[dict[str, str]]:
        system = {"role": "system", "content": f"{MARK}s{sid} You are terse."}
        if self.rng.random() < 0.7:
            return [system, message]
        earlier = {"role": "user", "content": self._text(sid + "e")}
        reply = {"role": "assistant", "content": f"{MARK}h{sid} noted."}
        return [system, earlier, reply, message]

    async def _send(self, http: aiohttp.ClientSession, call: Call) -> Result:
        started = time.perf_counter()
        first: float | None = None
        result = Result(call.soak_id, call.stream, call.memory, 0, 0.0)
        try:
            async with http.post(
                f"{self.url}/v1/chat/completions", data=call.body, headers=call.headers
            ) as response:
                chunks = []
                async for chunk in response.content.iter_any():
                    first = first or time.perf_counter()
                    chunks.append(chunk)
                result.status = response.status
                result.latency = time.perf_counter() - started
                result.ttft = first - started if first and call.stream else None
                body = b"".join(chunks)
        except (aiohttp.ClientError, TimeoutError) as exc:
            result.latency = time.perf_counter() - started
            result.detail = f"transport: {type(exc).__name__}: {exc}"[:300]
            return result
        try:
            _judge(result, call, response.headers, body)
        except (ValueError, TypeError, AttributeError) as exc:  # e.g. a non-numeric header
            result.verdict, result.detail = "gateway", f"unreadable answer: {exc!r}"[:300]
        return result

    def _progress(self, done: int) -> None:
        self.marks.append((done, time.monotonic()))
        verdicts = Counter(r.verdict for r in self.results)
        sample = self.samples[-1] if self.samples else None
        rss = f" gateway {_mb(sample.gateway)} worker {_mb(sample.worker)}" if sample else ""
        print(f"  {done:>7} done  {dict(verdicts)}{rss}  load {loadavg()}", flush=True)

    # --- RSS ---

    async def _sample_rss(self) -> None:
        warm_at, traced = int(self.opts.requests * self.opts.warmup_share), False
        while True:
            self._sample(len(self.results))
            if self.opts.tracemalloc and not traced and len(self.results) >= warm_at:
                traced = self._trace()
            if not (self.gateway.alive() and self.worker.alive()):
                self.stopped = "the gateway or the worker exited during the load"
                return
            await asyncio.sleep(self.opts.rss_interval)

    def _trace(self) -> bool:
        """Ask the traced processes for a tracemalloc snapshot (baseline, then growth)."""
        for service in (self.gateway, self.worker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(service.pid, signal.SIGUSR2)
        return True

    def _sample(self, done: int) -> None:
        (g_rss, g_cpu), (w_rss, w_cpu) = _usage(self.gateway), _usage(self.worker)
        self.samples.append(Sample(time.monotonic(), done, g_rss, w_rss, (g_cpu, w_cpu)))

    # --- the books ---

    def _database_books(self, report: Report) -> None:
        import psycopg

        with psycopg.connect(self.stack.database_url, autocommit=True) as db:
            report.drain = _drain(db, self.opts.drain_timeout)
            self._sample(len(self.results))
            report.rss_drained = self.samples[-1]
            report.check_items(_message_rows(db), self.threads)
            report.check_usage(_wait_usage(db, report.statuses.get(200, 0)))
            report.check_injections(_scalar(db, "SELECT count(*) FROM injections"))
            report.recall_ms = _recall_timings(db)

    async def _books(self, http: aiohttp.ClientSession, report: Report) -> None:
        print("load done; waiting for the worker and the outbox", flush=True)
        await asyncio.to_thread(self._database_books, report)
        report.check_rss()
        async with http.get(f"{self.url}/metrics") as response:
            metrics_text = await response.text()
        report.check_metrics(metrics_text)
        secrets_ = [k for t in self.tenants for k in t.keys] + [self.master]
        texts = {
            "gateway log": (self.logs / "gateway.log").read_text(errors="replace"),
            "worker log": (self.logs / "worker.log").read_text(errors="replace"),
            "error bodies": "\n".join(r.error_text for r in self.results if r.error_text),
            "metrics": metrics_text,
        }
        report.scan(texts, secrets_)
        report.check_log(texts["gateway log"])
        for name, service in (("gateway", self.gateway), ("worker", self.worker)):
            traced = self.logs / f"tracemalloc.{service.pid}.txt"
            if traced.exists():
                top = traced.read_text().splitlines()[:9]
                report.notes.append(f"tracemalloc, {name}, warm-up → end: " + " · ".join(top))


def _service(stack: Stack, name: str) -> Service:
    return next(s for s in stack.services if s.name == name)


def _usage(service: Service) -> tuple[int, float]:
    """(RSS bytes, CPU seconds) of the service's process; zeros once it is gone."""
    try:
        process = psutil.Process(service.pid)
        with process.oneshot():
            cpu = process.cpu_times()
            return int(process.memory_info().rss), cpu.user + cpu.system
    except psutil.Error:
        return 0, 0.0


async def _post_json(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
) -> dict[str, Any]:
    async with http.post(url, json=body, headers=headers) as response:
        data: dict[str, Any] = await response.json()
        if response.status != 201:
            raise RuntimeError(f"POST {url} answered {response.status}: {data}")
        return data


async def _get_json(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url) as response:
        data: dict[str, Any] = await response.json()
        return data


# --- judging one response ---


def _judge(result: Result, call: Call, headers: Any, raw: bytes) -> None:
    """Set the verdict: ok, gateway, or pending (an error the mock's ledger may explain)."""
    marker = f"{MARK}a{call.soak_id} "
    if not headers.get("X-Request-Id"):
        result.detail = "no X-Request-Id"
        return
    if call.memory and result.status == 200:
        if headers.get("X-Memory-Thread") != (call.thread.id if call.thread else None):
            result.detail = f"X-Memory-Thread {headers.get('X-Memory-Thread')!r}"
            return
        result.memory_items = int(headers.get("X-Memory-Items") or 0)
    if result.status != 200:
        _judge_error(result, headers, raw)
    elif call.stream:
        _judge_stream(result, marker, raw)
    else:
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            result.detail = f"200 body is not a chat completion: {raw[:200]!r}"
            return
        if not content.startswith(marker):
            result.detail = f"someone else's answer: {content[:40]!r}"
            return
        result.verdict, result.answer = "ok", content


def _judge_error(result: Result, headers: Any, raw: bytes) -> None:
    result.error_text = raw.decode(errors="replace")
    try:
        error = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        error = None
    if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= set(error):
        result.detail = f"{result.status} body is not OpenAI-shaped: {raw[:200]!r}"
        return
    key = str(result.status) if result.status in (429, 500) else f"{result.status}:{error['code']}"
    result.detail = f"{result.status} {error['code']}: {error['message']}"[:200]
    if key not in _EXPLAINED_BY:
        return
    if result.status in (429, 500) and "mock-injected" not in str(error["message"]):
        return
    if result.status == 429 and not headers.get("Retry-After"):
        result.detail += " (no Retry-After)"
        return
    result.verdict, result.error_key = "pending", key


def _judge_stream(result: Result, marker: str, raw: bytes) -> None:
    content, error, done, problem = parse_sse(raw)
    result.answer = content
    if problem:
        result.detail = f"stream: {problem}"
    elif done and error is None:
        if content.startswith(marker):
            result.verdict = "ok"
        else:
            result.detail = f"stream: someone else's answer: {content[:40]!r}"
    elif error is not None and not done:
        result.error_text = json.dumps(error)
        result.detail = f"stream error {error.get('code')}: {error.get('message')}"[:200]
        if error.get("code") == "stream_error":
            result.verdict, result.error_key = "pending", "sse:stream_error"
    else:
        result.detail = "stream ended without [DONE] or an error event"


def parse_sse(raw: bytes) -> tuple[str, dict[str, Any] | None, bool, str]:
    """(content of choice 0, the error event, [DONE] seen, what was wrong with the stream)."""
    text = raw.replace(b"\r\n", b"\n")
    if text and not text.endswith(b"\n\n"):
        return "", None, False, "torn final event"
    content: list[str] = []
    error: dict[str, Any] | None = None
    done = False
    for event in text.split(b"\n\n"):
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if done or error is not None:
                return "", None, False, "an event after the end"
            if data == b"[DONE]":
                done = True
                continue
            try:
                chunk = json.loads(data)
            except ValueError:
                return "", None, False, f"an event is not JSON: {data[:80]!r}"
            if isinstance(chunk.get("error"), dict):
                error = chunk["error"]
                continue
            for choice in chunk.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content")
                if choice.get("index", 0) == 0 and isinstance(piece, str):
                    content.append(piece)
    return "".join(content), error, done, ""


def _advance(thread: Thread, call: Call, result: Result) -> None:
    """What the gateway must now remember of this thread, as the client saw it."""
    assert call.message is not None
    answer = result.answer
    if result.verdict == "ok":
        thread.history += [call.message, {"role": "assistant", "content": answer}]
    elif result.error_key == "sse:stream_error":  # a broken stream keeps what was said
        thread.history.append(call.message)
        if answer:
            thread.history.append({"role": "assistant", "content": answer})
    elif result.verdict != "pending":
        thread.tainted = thread.tainted or f"{call.soak_id}: {result.detail}"


# --- database checks ---


def _scalar(db: Any, sql: str) -> int:
    return int(db.execute(sql).fetchone()[0])


def _drain(db: Any, limit: float) -> dict[str, float]:
    """Wait (bounded) until every item has its vector and the outbox is empty."""
    started = time.monotonic()
    while True:
        unembedded = _scalar(db, "SELECT count(*) FROM memory_items WHERE embedding IS NULL")
        outbox = _scalar(db, "SELECT count(*) FROM outbox WHERE pushed_at IS NULL")
        waited = time.monotonic() - started
        if (unembedded == 0 and outbox == 0) or waited > limit:
            items = _scalar(db, "SELECT count(*) FROM memory_items")
            return {"unembedded": unembedded, "outbox": outbox, "waited": waited, "items": items}
        time.sleep(2)


def _message_rows(db: Any) -> list[tuple[str, str, int, str, str]]:
    rows = db.execute(
        "SELECT w.name, m.thread_id, m.position, m.role, m.content FROM memory_items m "
        "JOIN workspaces w ON w.id = m.workspace_id WHERE m.kind = 'message'"
    ).fetchall()
    return [tuple(r) for r in rows]


def _recall_timings(db: Any) -> dict[str, list[float]]:
    """The gateway's own recall timings (query embedding, whole recall), per memory request."""
    rows = db.execute(
        "SELECT (detail->'timings_ms'->>'embed')::float, (detail->'timings_ms'->>'recall')::float "
        "FROM injections"
    ).fetchall()
    return {
        "embed": sorted(r[0] for r in rows if r[0] is not None),
        "recall": sorted(r[1] for r in rows if r[1] is not None),
    }


def _wait_usage(db: Any, expected: int, limit: float = 30) -> int:
    deadline = time.monotonic() + limit
    while True:
        count = _scalar(db, "SELECT count(*) FROM usage_events")
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(1)


# --- the report ---


class Report:
    def __init__(
        self, opts: argparse.Namespace, duration: float, results: list[Result],
        samples: list[Sample], stopped: str,
    ) -> None:  # fmt: skip
        self.opts, self.duration, self.results, self.samples = opts, duration, results, samples
        self.checks: list[tuple[str, bool, str]] = []
        self.notes: list[str] = []
        self.statuses = Counter(r.status for r in results)
        self.drain: dict[str, float] = {}
        self.rss_drained: Sample | None = None
        self.items: dict[str, int] = {}
        self.secrets_found: int | None = None
        self.marks: list[tuple[int, float]] = []
        self.recall_ms: dict[str, list[float]] = {}
        self.ledger_counts: dict[str, int] = {}
        self.retries_metric = 0.0
        if stopped:
            self.check("the load ran to the end", False, stopped)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.checks)

    def resolve(self, ledger: dict[str, Any]) -> None:
        """Pending errors become upstream-caused when the mock's last attempt explains them."""
        faults: dict[str, list[str]] = ledger["faults"]
        self.ledger_counts = ledger["counts"]
        for r in self.results:
            if r.verdict != "pending":
                continue
            last = (faults.get(r.soak_id) or ["ok"])[-1]
            if last in _EXPLAINED_BY[r.error_key]:
                r.verdict = "upstream"
            else:
                r.verdict, r.detail = "gateway", f"{r.detail} (mock's last attempt: {last})"
        verdicts = Counter(r.verdict for r in self.results)
        bad = [r for r in self.results if r.verdict == "gateway"]
        examples = "; ".join(f"{r.soak_id} {r.status} {r.detail}" for r in bad[:5])
        self.check("zero gateway-caused errors", not bad, f"{len(bad)} {examples}".strip())
        self.check(
            "every request answered", len(self.results) == self.opts.requests,
            f"{len(self.results)} of {self.opts.requests}; {dict(verdicts)}",
        )  # fmt: skip

    def check_items(
        self, rows: list[tuple[str, str, int, str, str]], threads: list[Thread]
    ) -> None:
        stored: dict[str, dict[int, tuple[str, str, str]]] = {}
        duplicates = 0
        for workspace, thread_id, position, role, content in rows:
            slots = stored.setdefault(thread_id, {})
            duplicates += position in slots
            slots[position] = (workspace, role, content)
        known = {t.id for t in threads}
        strays = sorted(set(stored) - known)
        expected = found = 0
        wrong: list[str] = []
        for t in threads:
            if t.tainted:
                continue
            slots = stored.get(t.id, {})
            expected += len(t.history)
            found += len(slots)
            want = {
                p: (f"soak-w{t.tenant}", m["role"], m["content"]) for p, m in enumerate(t.history)
            }
            if slots != want:
                missing = sorted(set(want) - set(slots))
                extra = sorted(set(slots) - set(want))
                differ = [p for p in want if p in slots and slots[p] != want[p]]
                wrong.append(f"{t.id}: missing {missing[:5]} extra {extra[:5]} differ {differ[:5]}")
        tainted = [t for t in threads if t.tainted]
        self.items = {"expected": expected, "found": found, "rows": len(rows)}
        self.check("no duplicate (thread, position)", duplicates == 0, f"{duplicates} duplicates")
        self.check("no messages outside the soak's threads", not strays, f"{strays[:5]}")
        self.check(
            "stored messages = the client's histories", not wrong and expected == found,
            f"{found} of {expected} in {len(threads) - len(tainted)} threads; "
            + ("; ".join(wrong[:3]) or "position by position equal"),
        )  # fmt: skip
        if tainted:
            self.notes.append(f"{len(tainted)} threads left out: {tainted[0].tainted}")
        self.check(
            "every item embedded, outbox empty",
            self.drain.get("unembedded") == 0 and self.drain.get("outbox") == 0,
            f"{self.drain.get('unembedded')} unembedded, {self.drain.get('outbox')} pending "
            f"after {self.drain.get('waited', 0):.0f} s",
        )  # fmt: skip

    def check_injections(self, rows: int) -> None:
        answered = sum(1 for r in self.results if r.memory and r.status == 200)
        self.check(
            "an injection record per memory-on 200", rows == answered,
            f"{rows} records, {answered} memory-on 200s",
        )  # fmt: skip

    def check_rss(self) -> None:
        warm, end = self.rss()
        for name in ("gateway", "worker"):
            before, after = getattr(warm, name), getattr(end, name)
            growth = (after - before) / max(1, before)
            self.check(f"{name} RSS flat (< {RSS_FLAT:.0%})", growth < RSS_FLAT, f"{growth:+.1%}")

    def check_usage(self, events: int) -> None:
        answered = self.statuses.get(200, 0)
        self.check("a usage event per 200", events == answered, f"{events} events, {answered} 200s")

    def check_metrics(self, text: str) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        by_status: Counter[str] = Counter()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "cmg_requests_total" and s.labels.get("route") == "chat":
                    by_status[s.labels["status"]] += int(s.value)
                elif s.name.endswith("_total") or s.name in ("cmg_outbox_backlog",):
                    values[s.name] = values.get(s.name, 0.0) + s.value
        client = Counter({str(k): v for k, v in self.statuses.items() if k})
        self.check(
            "/metrics chat requests = client's", by_status == client,
            f"metrics {dict(by_status)}, client {dict(client)}",
        )  # fmt: skip
        retries = values.get("cmg_upstream_retries_total", 0.0)
        attempts = self.ledger_counts.get("attempts", 0)
        failed = attempts - self.ledger_counts.get("ok", 0)
        errors = values.get("cmg_upstream_errors_total", 0.0)
        self.check(
            "/metrics upstream retries = the mock's", retries == attempts - len(self.results),
            f"cmg_upstream_retries_total {retries:.0f}; the mock saw {attempts} attempts for "
            f"{len(self.results)} requests",
        )  # fmt: skip
        self.check(
            "/metrics counts upstream failures", errors == failed,
            f"cmg_upstream_errors_total {errors:.0f}; the mock failed {failed} attempts",
        )  # fmt: skip

    def scan(self, texts: dict[str, str], keys: list[str]) -> None:
        found = []
        for where, text in texts.items():
            found += [f"a key in the {where}" for key in keys if key in text]
            if MARK in text:
                at = text.index(MARK)
                found.append(f"message text in the {where}: …{text[max(0, at - 60) : at + 40]!r}")
        self.secrets_found = len(found)
        self.check("no key or message text in logs, errors, metrics", not found, "; ".join(found))

    def check_log(self, log: str) -> None:
        lines = []
        for line in log.splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line)) if line.startswith("{") else None
        access = [x for x in lines if x.get("msg") == "request" and x.get("route") == "chat"]
        errors = Counter(
            f"{x.get('logger')}: {x.get('msg')} {x.get('error', '')}"[:160]
            for x in lines
            if x.get("level") in ("error", "critical")
        )
        warnings = Counter(str(x.get("msg"))[:120] for x in lines if x.get("level") == "warning")
        self.check(
            "one access-log line per request", len(access) == len(self.results),
            f"{len(access)} lines for {len(self.results)} requests",
        )  # fmt: skip
        self.check("no error in the gateway log", not errors, f"{dict(errors.most_common(5))}")
        if warnings:
            self.notes.append(f"gateway warnings: {dict(warnings.most_common(5))}")

    # --- rendering ---

    def rss(self) -> tuple[Sample, Sample]:
        warm_at = int(self.opts.requests * self.opts.warmup_share)
        warm = next((s for s in self.samples if s.done >= warm_at), self.samples[-1])
        return warm, self.samples[-1]

    def render(self) -> str:
        warm, end = self.rss()
        verdicts = Counter(r.verdict for r in self.results)
        upstream = Counter(r.error_key for r in self.results if r.verdict == "upstream")
        n = len(self.results)
        items = self.items
        rows = [
            ("requests", f"{n:,} ({self.opts.concurrency} concurrent)"),
            ("duration", f"{self.duration:.0f} s"),
            ("req/s", f"{n / max(self.duration, 1e-9):.0f}"),
            ("req/s by tenth of the run", self._rates()),
            ("CPU cores used: gateway / worker", self._cpu()),
            ("ok", f"{verdicts['ok']:,}"),
            ("upstream-caused", f"{verdicts['upstream']:,} {dict(upstream)}"),
            ("gateway-caused", f"{verdicts['gateway']:,}"),
            ("latency JSON p50/p95/p99", _pcts(self.results, stream=False)),
            ("latency SSE p50/p95/p99", _pcts(self.results, stream=True)),
            ("SSE time to first byte p50/p95/p99", _pcts(self.results, stream=True, ttft=True)),
            ("memory on, p50/p95/p99", _pcts(self.results, memory=True)),
            ("memory off, p50/p95/p99", _pcts(self.results, memory=False)),
            ("gateway RSS warm-up → end", _rss_row(warm.gateway, end.gateway)),
            ("worker RSS warm-up → end", _rss_row(warm.worker, end.worker)),
            ("items stored / embedded", _items_row(self.drain)),
            ("messages expected / found", f"{items.get('expected', 0):,} / {items.get('found', 0):,}"),  # noqa: E501
            ("recalled items injected (memory-on 200s)", _injected(self.results)),
            ("gateway recall: query embedding p50/p95", _ms_pcts(self.recall_ms.get("embed"))),
            ("gateway recall: whole recall p50/p95", _ms_pcts(self.recall_ms.get("recall"))),
            ("outbox left", f"{self.drain.get('outbox', '?')}"),
            ("secrets / message text found", f"{self.secrets_found}"),
            ("mock attempts", json.dumps(self.ledger_counts)),
        ]  # fmt: skip
        if self.rss_drained is not None:
            d = self.rss_drained
            rows.append(
                ("RSS after the drain", f"gateway {_mb(d.gateway)}, worker {_mb(d.worker)}")
            )
        out = [
            f"# Soak ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
            "",
            "| | |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in rows),
            "",
            "| invariant | | detail |",
            "|---|---|---|",
            *(
                f"| {name} | {'PASS' if ok else 'FAIL'} | {_cell(d)} |"
                for name, ok, d in self.checks
            ),
            "",
            *(f"- {note}" for note in self.notes),
            "",
            "RSS samples (requests done: gateway / worker MB): "
            + ", ".join(f"{s.done}: {s.gateway >> 20}/{s.worker >> 20}" for s in self._spread()),
            "",
        ]
        return "\n".join(out)

    def _rates(self) -> str:
        pairs = zip(self.marks, self.marks[1:], strict=False)
        return " ".join(f"{(d1 - d0) / max(t1 - t0, 1e-9):.0f}" for (d0, t0), (d1, t1) in pairs)

    def _cpu(self) -> str:
        first, last = self.samples[0], self.samples[-1]
        wall = max(last.at - first.at, 1e-9)
        gateway, worker = ((last.cpu[i] - first.cpu[i]) / wall for i in (0, 1))
        return f"{gateway:.2f} / {worker:.2f} (box load {loadavg()} at the end)"

    def _spread(self, count: int = 12) -> list[Sample]:
        step = max(1, len(self.samples) // count)
        return self.samples[::step] + self.samples[-1:]


def _pcts(
    results: list[Result], *, stream: bool | None = None, memory: bool | None = None,
    ttft: bool = False,
) -> str:  # fmt: skip
    values = sorted(
        (r.ttft if ttft else r.latency) or 0.0
        for r in results
        if r.verdict == "ok"
        and (stream is None or r.stream == stream)
        and (memory is None or r.memory == memory)
    )
    if not values:
        return "-"
    cut = [values[min(len(values) - 1, int(q * len(values)))] * 1000 for q in (0.5, 0.95, 0.99)]
    return " / ".join(f"{v:.0f}" for v in cut) + f" ms (n={len(values):,})"


def _ms_pcts(values: list[float] | None) -> str:
    if not values:
        return "-"
    return " / ".join(f"{values[int(q * len(values))]:.0f}" for q in (0.5, 0.95)) + " ms"


def _injected(results: list[Result]) -> str:
    ok = [r.memory_items for r in results if r.memory and r.verdict == "ok"]
    with_any = sum(1 for x in ok if x)
    return f"mean {sum(ok) / max(1, len(ok)):.1f}; {with_any:,} of {len(ok):,} requests got some"


def _items_row(drain: dict[str, float]) -> str:
    items, unembedded = int(drain.get("items", 0)), int(drain.get("unembedded", 0))
    return f"{items:,} / {items - unembedded:,} (drained in {drain.get('waited', 0):.0f} s)"


def _rss_row(start: int, end: int) -> str:
    return f"{_mb(start)} → {_mb(end)} ({(end - start) / max(1, start):+.1%})"


def _mb(value: int) -> str:
    return f"{value / 2**20:.0f} MB"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:400]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--requests", type=int, default=50_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--workspaces", type=int, default=4)
    p.add_argument("--keys", type=int, default=2, help="keys per workspace")
    p.add_argument("--threads", type=int, default=320, help="memory threads, over all workspaces")
    p.add_argument("--memory-share", type=float, default=0.2, help="share with X-Memory: on")
    p.add_argument("--stream-share", type=float, default=0.5, help="share streamed (SSE)")
    p.add_argument("--error-rate", type=float, default=0.03, help="upstream attempts failing")
    p.add_argument("--sticky-rate", type=float, default=0.002, help="requests failing throughout")
    p.add_argument("--warmup-share", type=float, default=0.1, help="RSS baseline after this share")
    p.add_argument("--rss-interval", type=float, default=3.0, help="seconds between RSS samples")
    p.add_argument("--drain-timeout", type=float, default=300.0, help="seconds to wait for jobs")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--tracemalloc", action="store_true",
        help="trace allocations in the gateway and worker; report what grew (slower)",
    )  # fmt: skip
    p.add_argument("--results-dir", type=Path, default=ROOT / "bench-results")
    return p


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
