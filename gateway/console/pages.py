"""The web console under ``/ui``: usage, keys, memory, search and what each answer was given.

Server-rendered HTML (Jinja2, autoescaped), no JavaScript at all: every page reads with
scripts off, forms post back, charts are SVG drawn here. Each page reads through the services
the APIs use (``usage_report``, ``workspaces``, ``memory.items``, ``Memory.search`` with
``explain``), scoped to the session's workspace: a workspace session never names another one
(ids it does not own are simply not found), a master session picks one with ``?workspace=``
and is marked as such on every page. Sessions, CSRF and the sign-in bound: ``sessions.py``.
Headers on every page: a strict Content-Security-Policy (no script, styles from ``/ui`` only,
``frame-ancestors 'none'``), ``no-store``, ``same-origin`` referrers and ``nosniff``.
"""

from __future__ import annotations

import hmac
import math
import statistics
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from core.errors import BadRequest, Forbidden, GatewayError, NotFound, Unauthorized
from gateway.console import sessions
from gateway.console.charts import bars
from gateway.deps import Deps
from gateway.services import usage_report, workspaces
from gateway.services.auth import caller_of
from memory import items
from memory.recall import Filters

HERE = Path(__file__).parent
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")  # fmt: skip
HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes browsers send Origin: null
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_TEMPLATES.filters["when"] = lambda ts: datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")
Page = Callable[[Request], Awaitable[Response]]


class _SignIn(Exception):
    """No session: the page answers with a redirect to the sign-in form."""


class View:
    """One signed-in request: its session and the workspace it looks at."""

    def __init__(self, request: Request, deps: Deps, session: sessions.Session) -> None:
        self.request, self.deps, self.session = request, deps, session
        self.workspace_id = session.workspace_id
        self.workspace = session.workspace

    def url(self, path: str, **params: Any) -> str:
        if self.session.master and self.workspace:
            params = {"workspace": self.workspace, **params}
        query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
        return f"{path}?{query}" if query else path

    def render(self, name: str, status: int = 200, **context: Any) -> Response:
        return _render(name, status, view=self, **context)

    def require_workspace(self) -> str:
        if self.workspace_id is None:
            raise BadRequest("pick a workspace first", param="workspace")
        return self.workspace_id


def page(handler: Callable[[View], Awaitable[Response]]) -> Page:
    """A signed-in page: session checked, workspace resolved, errors shown as pages."""

    async def run(request: Request) -> Response:
        deps: Deps = request.state.deps
        try:
            if not deps.settings.console:
                return _off()
            session = await sessions.load(deps.redis, request)
            if session is None or not await _still_valid(deps, session):
                await sessions.end(deps.redis, request)
                raise _SignIn
            view = View(request, deps, session)
            if request.method == "POST":
                form = await request.form()
                if not sessions.same_origin(request) or not sessions.csrf_ok(
                    session, form.get("csrf")
                ):
                    return _render(
                        "error.html",
                        403,
                        view=None,
                        message="This form has expired: reload the page and try again.",
                    )
                request.state.form = form
            if session.master:
                await _pick_workspace(view)
            return await handler(view)
        except _SignIn:
            return _headers(RedirectResponse("/ui/login", 303))
        except GatewayError as exc:
            return _render("error.html", exc.status, view=None, message=exc.message)

    return run


async def _still_valid(deps: Deps, session: sessions.Session) -> bool:
    """A workspace session lasts only as long as the key that opened it works."""
    if session.master or session.key_id is None:
        return session.master
    async with deps.sessions() as db:
        return await workspaces.key_is_live(db, session.key_id)


async def _pick_workspace(view: View) -> None:
    form = getattr(view.request.state, "form", None)
    name = view.request.query_params.get("workspace") or (form.get("workspace") if form else None)
    if not isinstance(name, str) or not name:
        return
    async with view.deps.sessions() as session:
        workspace = await workspaces.get_workspace(session, name)
    view.workspace_id, view.workspace = str(workspace.id), workspace.name


def _off() -> Response:
    return _render("error.html", 404, view=None, message="the console is off (CMG_CONSOLE)")


def _render(name: str, status: int, **context: Any) -> Response:
    html = _TEMPLATES.get_template(name).render(**context)
    return _headers(Response(html, status, media_type="text/html; charset=utf-8"))


def _headers(response: Response) -> Response:
    response.headers.update(HEADERS)
    return response


# --- sign-in ---


async def login_form(request: Request) -> Response:
    deps: Deps = request.state.deps
    if not deps.settings.console:
        return _off()
    return _render("login.html", 200, view=None, error=None)


async def login(request: Request) -> Response:
    deps: Deps = request.state.deps
    if not deps.settings.console:
        return _off()
    if not sessions.same_origin(request):
        return _render("login.html", 403, view=None, error="Sign in from this gateway's own page.")
    if await sessions.blocked(deps.redis, request):
        return _render("login.html", 429, view=None, error="Too many attempts: wait a minute.")
    form = await request.form()
    key = form.get("key")
    key = key.strip() if isinstance(key, str) else ""
    master = deps.settings.master_key
    if master and key and hmac.compare_digest(key.encode(), master.encode()):
        session = sessions.Session(True, None, None, sessions.new_csrf())
    else:
        try:
            caller = await caller_of(deps.keys, key) if key.startswith("cmg_") else None
        except Unauthorized:
            caller = None
        if caller is None:
            await sessions.failed(deps.redis, request)
            return _render("login.html", 401, view=None, error="That key is not valid here.")
        session = sessions.Session(
            False, caller.workspace_id, caller.workspace, sessions.new_csrf(),
            caller.key_id, caller.rpm_limit, caller.tpm_limit,
        )  # fmt: skip
    token = await sessions.create(deps.redis, session, deps.settings.console_session_seconds)
    response = _headers(RedirectResponse("/ui", 303))
    response.set_cookie(
        sessions.COOKIE, token, max_age=int(deps.settings.console_session_seconds), path="/ui",
        httponly=True, samesite="strict", secure=request.url.scheme == "https",
    )  # fmt: skip
    return response


@page
async def logout(view: View) -> Response:
    await sessions.end(view.deps.redis, view.request)
    response = _headers(RedirectResponse("/ui/login", 303))
    response.delete_cookie(sessions.COOKIE, path="/ui")
    return response


# --- pages ---


@page
async def overview(view: View) -> Response:
    if view.workspace_id is None:  # a master session that has not picked a workspace
        async with view.deps.sessions() as session:
            names = [w.name for w in await workspaces.list_workspaces(session)]
        return view.render("workspaces.html", names=names)
    today = datetime.now(UTC).date()
    start = today - timedelta(days=29)
    async with view.deps.sessions() as session:
        days = await usage_report.report(
            session, workspace_id=view.workspace_id, start=start, end=today, group_by="day"
        )
        models = await usage_report.report(
            session, workspace_id=view.workspace_id, start=start, end=today, group_by="model"
        )
        month = await usage_report.report(
            session, workspace_id=view.workspace_id, start=today.replace(day=1), end=today,
            group_by="day",
        )  # fmt: skip
        recent = await usage_report.recent(session, view.workspace_id, 200)
        refused = await usage_report.refusals(session, view.workspace_id, start, today)
        workspace = await workspaces.get_workspace(session, view.workspace or "")
    by_day = {row["day"]: row for row in days}
    series = [by_day.get(str(start + timedelta(days=n)), {}) for n in range(30)]
    labels = [str(start + timedelta(days=n))[5:] for n in range(30)]
    requests = sum(int(r.get("requests", 0)) for r in series)
    errors = sum(int(r.get("errors", 0)) for r in series)
    latencies = sorted(e.latency_ms for e in recent)
    p50, p95 = _p50_p95(latencies) if latencies else (None, None)
    budget = (workspace.settings or {}).get("monthly_budget_usd")
    spent = sum(float(r["cost_usd"]) for r in month)
    return view.render(
        "overview.html",
        requests=requests,
        tokens=int(sum(_num(r, "prompt_tokens") + _num(r, "completion_tokens") for r in series)),
        cost=sum(_num(r, "cost_usd") for r in series),
        error_rate=errors / requests if requests else 0.0,
        p50=p50,
        p95=p95,
        budget=budget, spent=spent, refused=refused,
        requests_chart=bars(labels, [_num(r, "requests") for r in series], "requests per day"),
        tokens_chart=bars(labels, [_num(r, "prompt_tokens") + _num(r, "completion_tokens")
                                   for r in series], "tokens per day"),
        errors_chart=bars(labels, [_num(r, "errors") / max(1.0, _num(r, "requests"))
                                   for r in series], "error rate per day"),
        cost_chart=bars(labels, [_num(r, "cost_usd") for r in series], "cost per day (USD)"),
        models=models, recent=recent[:20], latency=_latency_by_model(recent),
        model_chart=bars([str(r["model"]) for r in models], [_num(r, "cost_usd") for r in models],
                         "cost per model (USD)"),
    )  # fmt: skip


@page
async def keys(view: View) -> Response:
    view.require_workspace()
    async with view.deps.sessions() as session:
        listed = await workspaces.list_keys(session, view.workspace)
    return view.render("keys.html", keys=listed, created=None)


@page
async def create_key(view: View) -> Response:
    view.require_workspace()
    form = view.request.state.form
    name = str(form.get("name") or "").strip()[:100] or "console"
    limits = _capped(view, form)
    async with view.deps.sessions.begin() as session:
        secret, info = await workspaces.create_key(
            session, view.workspace or "", name=name, **limits
        )
    async with view.deps.sessions() as session:
        listed = await workspaces.list_keys(session, view.workspace)
    return view.render("keys.html", keys=listed, created={"secret": secret, "info": info})


@page
async def revoke_key(view: View) -> Response:
    view.require_workspace()
    key_id = str(view.request.state.form.get("key_id") or "")
    async with view.deps.sessions.begin() as session:
        await _owned(session, view, key_id)
        await workspaces.revoke_key(session, key_id)
    view.deps.keys.forget()
    return _headers(RedirectResponse(view.url("/ui/keys"), 303))


@page
async def key_limits(view: View) -> Response:
    view.require_workspace()
    form = view.request.state.form
    key_id = str(form.get("key_id") or "")
    limits = _capped(view, form)
    async with view.deps.sessions.begin() as session:
        await _owned(session, view, key_id)
        await workspaces.set_key_limits(session, key_id, **limits)
    view.deps.keys.forget()
    return _headers(RedirectResponse(view.url("/ui/keys"), 303))


async def _owned(session: Any, view: View, key_id: str) -> None:
    owned = {k.id for k in await workspaces.list_keys(session, view.workspace)}
    if key_id not in owned:  # another workspace's key is simply not found
        raise NotFound("no such key in this workspace", code="not_found")


def _capped(view: View, form: Any) -> dict[str, int | None]:
    """The limits asked for, never looser than the signing key's own (a workspace session
    cannot mint a key that escapes the limits it is under); blank means "the same as mine"."""
    limits: dict[str, int | None] = {}
    for field in ("rpm_limit", "tpm_limit"):
        asked = _positive(form.get(field), field)
        own = None if view.session.master else getattr(view.session, field)
        limits[field] = asked if own is None else min(asked or own, own)
    return limits


SETTINGS_FORM = ("memory", "redact_pii", "retention_days", "facts", "rpm", "tpm",
                 "monthly_budget_usd")  # fmt: skip


@page
async def settings_page(view: View) -> Response:
    view.require_workspace()
    async with view.deps.sessions() as session:
        workspace = await workspaces.get_workspace(session, view.workspace or "")
    current = workspace.settings or {}
    fields = [(name, workspaces.WORKSPACE_SETTINGS[name][0], current.get(name))
              for name in SETTINGS_FORM]  # fmt: skip
    saved = view.request.query_params.get("saved")
    return view.render("settings.html", fields=fields, saved=saved)


@page
async def save_settings(view: View) -> Response:
    view.require_workspace()
    if not view.session.master:
        raise Forbidden("only a master session changes workspace settings", code="forbidden")
    form = view.request.state.form
    changes = {name: _setting(form.get(name)) for name in SETTINGS_FORM if name in form}
    async with view.deps.sessions.begin() as session:
        await workspaces.update_settings(session, view.workspace or "", changes)
    view.deps.keys.forget()  # cached callers carry their workspace's settings
    return _headers(RedirectResponse(view.url("/ui/settings", saved="1"), 303))


def _setting(raw: Any) -> Any:
    """A form value as the settings' JSON: blank is null, numbers and true/false parsed."""
    text = str(raw or "").strip()
    if not text:
        return None
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


@page
async def memory(view: View) -> Response:
    workspace_id = view.require_workspace()
    user = view.request.query_params.get("user") or None
    async with view.deps.sessions() as session:
        found = await items.list_threads(session, workspace_id, user=user, limit=50)
    threads = [items.thread_json(t) for t in found.threads] if found else []
    return view.render("memory.html", threads=threads, user=user or "")


@page
async def thread(view: View) -> Response:
    workspace_id = view.require_workspace()
    thread_id = view.request.query_params.get("id", "")
    async with view.deps.sessions() as session:
        body = await items.get_thread(session, workspace_id, thread_id)
    if body is None:
        raise NotFound(f"no thread {thread_id!r}", code="not_found")
    return view.render("thread.html", thread=body)


@page
async def delete_thread(view: View) -> Response:
    workspace_id = view.require_workspace()
    form = view.request.state.form
    thread_id = str(form.get("id") or "")
    if form.get("confirm") != "yes":
        raise BadRequest("tick the box to confirm the deletion", param="confirm")
    async with view.deps.sessions.begin() as session:
        deleted = await items.forget_thread(session, workspace_id, thread_id)
    if deleted is None:
        raise NotFound(f"no thread {thread_id!r}", code="not_found")
    return _headers(RedirectResponse(view.url("/ui/memory"), 303))


@page
async def forget_user(view: View) -> Response:
    workspace_id = view.require_workspace()
    form = view.request.state.form
    user = str(form.get("user") or "").strip()
    if not user:
        raise BadRequest("name the end user whose memory goes", param="user")
    if form.get("confirm") != "yes":
        raise BadRequest("tick the box to confirm the deletion", param="confirm")
    async with view.deps.sessions.begin() as session:
        deleted = await items.forget_user(session, workspace_id, user)
    return view.render("forgotten.html", user=user, deleted=deleted)


@page
async def search(view: View) -> Response:
    workspace_id = view.require_workspace()
    query = (view.request.query_params.get("q") or "").strip()[:4000].replace("\x00", "")
    user = view.request.query_params.get("user") or None
    hits = []
    if query:
        found = await view.deps.memory.search(Filters(workspace_id, user), query, 10, explain=True)
        hits = [h.as_json() for h in found]
    return view.render("search.html", query=query, user=user or "", hits=hits)


@page
async def request_view(view: View) -> Response:
    workspace_id = view.require_workspace()
    request_id = view.request.query_params.get("id", "")[:200]
    async with view.deps.sessions() as session:
        used = await usage_report.of_request(session, workspace_id, request_id)
        injected = await items.injection(session, workspace_id, request_id)
    if used is None and injected is None:
        raise NotFound(f"no request {request_id!r} in this workspace", code="not_found")
    return view.render("request.html", request_id=request_id, used=used, injected=injected)


async def stylesheet(request: Request) -> Response:
    response = _headers(Response(_CSS, media_type="text/css"))
    response.headers["Cache-Control"] = "max-age=3600"
    return response


_CSS = (HERE / "static" / "console.css").read_bytes()


def _latency_by_model(events: list[Any]) -> dict[str, tuple[float, float]]:
    """(p50, p95) upstream ms per model over the latest requests."""
    by: dict[str, list[float]] = {}
    for event in events:
        by.setdefault(str(event.model), []).append(float(event.latency_ms))
    return {model: _p50_p95(sorted(values)) for model, values in by.items()}


def _p50_p95(values: list[float]) -> tuple[float, float]:
    """Median and nearest-rank 95th percentile of sorted ``values``."""
    return statistics.median(values), values[max(0, math.ceil(0.95 * len(values)) - 1)]


def _num(row: dict[str, Any], name: str) -> float:
    return float(row.get(name) or 0)


def _positive(value: Any, field: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1:
        raise BadRequest(f"{field} must be a positive whole number", param=field)
    return number
