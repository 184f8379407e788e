"""Render `gateway.conf.tftpl` the way Terraform's `templatefile()` does.

The nginx edge config is one template shared by three users: the Terraform module
(`templatefile()`), the local compose file (`compose.conf`, rendered by this script and
committed) and the Python test suite. This module implements the subset of the HCL template
language that the repo's templates use (this one and the Terraform module's), with the same
whitespace rules, so all of them agree:

    ${name}                       interpolate a variable (lists are not interpolated)
    $${  %%{                      literal `${` and `%{`
    %{ for x in name ~} ... %{ endfor ~}
    %{ if name ~} ... %{ else ~} ... %{ endif ~}      (name must be a bool; `!name` negates)
    `~` after `%{`/`${` or before `}` strips whitespace on that side, up to and including
    one newline, exactly as HCL does.

Like `templatefile()`, every variable the template names must be passed, even in a branch
that is not taken. Standard library only.

    python infra/nginx/render.py                  # rewrite infra/nginx/compose.conf
    python infra/nginx/render.py --check          # exit 1 if compose.conf is out of date
    python infra/nginx/render.py --vars v.json    # render other variables to stdout
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "gateway.conf.tftpl"
COMPOSE_CONF = HERE / "compose.conf"

# What docker-compose.local.yml runs: two gateway replicas, plain HTTP. Prometheus scrapes
# each replica directly on the compose network, so /metrics stays closed at the edge; /admin
# answers loopback and private addresses only (edit admin_allow here, then re-render).
COMPOSE_VARS: dict[str, Any] = {
    "upstreams": ["gateway-1:8080", "gateway-2:8080"],
    "listen_port": 80,
    "server_name": "_",
    "tls_enabled": False,
    "tls_cert_path": "",
    "tls_key_path": "",
    "metrics_allow": [],
    # nginx sees host clients as the compose bridge's gateway (a private address).
    "admin_allow": ["127.0.0.1", "::1", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
    "max_body": "8m",
}

_WS = " \t\r\n\v\f"
_TAG = re.compile(r"(?<![$%])([$%])\{(~?)(.*?)(~?)\}", re.DOTALL)
_IDENT = r"[A-Za-z_][A-Za-z0-9_-]*"


class TemplateError(ValueError):
    """The template uses syntax outside the supported subset, or a variable is missing."""


@dataclass
class _Tag:
    kind: str  # "interp", "for", "endfor", "if", "else", "endif"
    args: tuple[str, ...] = ()


@dataclass
class _Block:
    tag: _Tag
    body: list[Any] = field(default_factory=list)
    orelse: list[Any] = field(default_factory=list)


def render(template_text: str, **variables: Any) -> str:
    """Render `template_text` with `variables`, as `templatefile(path, variables)` would."""
    tokens = _tokenize(template_text)
    _check_variables(tokens, variables)
    tree = _parse(tokens)
    return "".join(_evaluate(tree, dict(variables)))


def _tokenize(text: str) -> list[str | _Tag]:
    tokens: list[str | _Tag] = []
    strip_next = False
    pos = 0
    for match in _TAG.finditer(text):
        literal = text[pos : match.start()]
        if strip_next:
            literal = _strip_leading(literal)
        if match.group(2):
            literal = _strip_trailing(literal)
        tokens.append(_unescape(literal))
        tokens.append(_parse_tag(match.group(1), match.group(3).strip()))
        strip_next = bool(match.group(4))
        pos = match.end()
    tail = text[pos:]
    tokens.append(_unescape(_strip_leading(tail) if strip_next else tail))
    return tokens


def _strip_leading(literal: str) -> str:
    # HCL scans a literal line by line; `~}` trims the first line (newline included).
    cut = literal.find("\n") + 1 or len(literal)
    return literal[:cut].lstrip(_WS) + literal[cut:]


def _strip_trailing(literal: str) -> str:
    # `%{~` trims the last line; when the tag opens a line, that is the previous line.
    body = literal[:-1] if literal.endswith("\n") else literal
    start = body.rfind("\n") + 1
    return literal[:start] + literal[start:].rstrip(_WS)


def _unescape(literal: str) -> str:
    return literal.replace("$${", "${").replace("%%{", "%{")


def _parse_tag(sigil: str, body: str) -> _Tag:
    if sigil == "$":
        if not re.fullmatch(_IDENT, body):
            raise TemplateError(f"only plain variables can be interpolated, got ${{{body}}}")
        return _Tag("interp", (body,))
    words = body.split()
    if len(words) == 4 and words[0] == "for" and words[2] == "in":
        return _Tag("for", (words[1], words[3]))
    if len(words) == 2 and words[0] == "if" and re.fullmatch(f"!?{_IDENT}", words[1]):
        return _Tag("if", (words[1],))
    if len(words) == 1 and words[0] in ("else", "endif", "endfor"):
        return _Tag(words[0])
    raise TemplateError(f"unsupported directive %{{{body}}}")


def _check_variables(tokens: list[str | _Tag], variables: dict[str, Any]) -> None:
    loop_names = {t.args[0] for t in tokens if isinstance(t, _Tag) and t.kind == "for"}
    for token in tokens:
        if not isinstance(token, _Tag) or not token.args:
            continue
        name = token.args[-1].lstrip("!")
        if name not in variables and not (token.kind == "interp" and name in loop_names):
            raise TemplateError(f"vars map does not contain key {name!r}")


def _parse(tokens: list[str | _Tag]) -> list[Any]:
    root: list[Any] = []
    stack: list[tuple[_Block, list[Any]]] = []
    current = root
    for token in tokens:
        if isinstance(token, str) or token.kind == "interp":
            current.append(token)
        elif token.kind in ("for", "if"):
            block = _Block(token)
            current.append(block)
            stack.append((block, current))
            current = block.body
        elif token.kind == "else":
            if not stack or stack[-1][0].tag.kind != "if":
                raise TemplateError("%{ else } outside %{ if }")
            current = stack[-1][0].orelse
        else:
            opener = "for" if token.kind == "endfor" else "if"
            if not stack or stack[-1][0].tag.kind != opener:
                raise TemplateError(f"unexpected %{{ {token.kind} }}")
            current = stack.pop()[1]
    if stack:
        raise TemplateError(f"unclosed %{{ {stack[-1][0].tag.kind} }}")
    return root


def _evaluate(nodes: list[Any], scope: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Tag):
            out.append(_to_string(scope[node.args[0]], node.args[0]))
        elif node.tag.kind == "for":
            name, seq = node.tag.args
            if not isinstance(scope[seq], list | tuple):
                raise TemplateError(f"%{{ for }} needs a list, {seq!r} is {scope[seq]!r}")
            for item in scope[seq]:
                out.extend(_evaluate(node.body, {**scope, name: item}))
        else:
            cond = node.tag.args[0]
            value = scope[cond.lstrip("!")]
            if not isinstance(value, bool):
                raise TemplateError(f"%{{ if }} needs a bool, {cond!r} is {value!r}")
            taken = value != cond.startswith("!")
            out.extend(_evaluate(node.body if taken else node.orelse, scope))
    return out


def _to_string(value: Any, name: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise TemplateError(f"cannot interpolate {name!r} of type {type(value).__name__}")


def render_compose() -> str:
    """The edge config docker-compose.local.yml mounts."""
    return render(TEMPLATE.read_text(), **COMPOSE_VARS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if compose.conf is stale")
    parser.add_argument(
        "--vars", type=Path, help="render with the variables of this JSON file, to stdout"
    )
    args = parser.parse_args(argv)
    if args.vars:
        sys.stdout.write(render(TEMPLATE.read_text(), **json.loads(args.vars.read_text())))
        return 0
    rendered = render_compose()
    if args.check:
        if COMPOSE_CONF.read_text() != rendered:
            print(f"{COMPOSE_CONF} is stale: run python {__file__}", file=sys.stderr)
            return 1
        return 0
    COMPOSE_CONF.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
