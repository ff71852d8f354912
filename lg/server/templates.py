"""The approval page's HTML and CSS: Jinja2 with autoescaping on, so every value from a run (commands, paths,
diffs, comments) is escaped; no JavaScript at all. Commands and diff lines are shown whole and wrapped by CSS
(white-space: pre-wrap; overflow-wrap: anywhere), never cut; hidden characters are shown as escapes
(lg.approvals.card.visible)."""

from __future__ import annotations

from typing import Any

import jinja2

from lg.approvals.card import KIND_TEXT, visible
from lg.runs.states import GateStatus

CSS = """
:root { --green: #1a7f37; --yellow: #9a6700; --orange: #bc4c00; --red: #cf222e; --muted: #57606a; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; background: #f6f8fa; color: #1f2328; }
header.top { background: #24292f; color: #fff; padding: .6em 1.2em; display: flex; gap: 1em; align-items: center; }
header.top h1 { font-size: 1.1em; margin: 0; flex: 1; }
header.top form { margin: 0; }
main { max-width: 1100px; margin: 1em auto; padding: 0 1em; }
.gate { background: #fff; border: 1px solid #d0d7de; border-left: 8px solid var(--muted); border-radius: 6px;
        padding: 1em 1.2em; margin: 0 0 1.5em; }
.gate.level-green { border-left-color: var(--green); } .gate.level-yellow { border-left-color: var(--yellow); }
.gate.level-orange { border-left-color: var(--orange); } .gate.level-red { border-left-color: var(--red); }
.badge { display: inline-block; color: #fff; font-weight: 700; padding: .1em .6em; border-radius: 1em;
         background: var(--muted); }
.badge.level-green { background: var(--green); } .badge.level-yellow { background: var(--yellow); }
.badge.level-orange { background: var(--orange); } .badge.level-red { background: var(--red); }
.gate h2 { display: inline; font-size: 1.15em; margin: 0 .4em; overflow-wrap: anywhere; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1em; margin: .8em 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
pre, code { font: 13px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; word-break: break-word; background: #f6f8fa;
      border: 1px solid #d0d7de; border-radius: 4px; padding: .6em .8em; margin: .3em 0 .8em; }
code.digest { overflow-wrap: anywhere; }
table.rules { border-collapse: collapse; width: 100%; } table.rules td { border-top: 1px solid #d0d7de;
      padding: .2em .4em; vertical-align: top; overflow-wrap: anywhere; }
.lvl-green { color: var(--green); } .lvl-yellow { color: var(--yellow); } .lvl-orange { color: var(--orange); }
.lvl-red { color: var(--red); } .lvl { font-weight: 700; }
.change .path { font-weight: 600; overflow-wrap: anywhere; }
.diff .add { color: #116329; background: #dafbe1; display: block; } .diff .del { color: #82071e;
      background: #ffebe9; display: block; } .diff .hunk { color: #0550ae; display: block; }
.diff .head { font-weight: 700; display: block; } .diff .ctx { display: block; }
.note { color: var(--muted); font-style: italic; }
.decisions li { overflow-wrap: anywhere; }
form.decide { display: flex; flex-direction: column; gap: .4em; margin: .6em 0; padding: .6em; border-radius: 4px; }
form.approve { background: #dafbe1; } form.reject { background: #ffebe9; }
textarea { width: 100%; min-height: 3em; font: inherit; }
button { font: inherit; font-weight: 600; padding: .35em 1.2em; border-radius: 4px; border: 1px solid #1f2328;
         cursor: pointer; align-self: flex-start; }
button.approve { background: var(--green); color: #fff; } button.reject { background: var(--red); color: #fff; }
.banner { padding: .7em 1em; border-radius: 4px; margin: 0 0 1em; overflow-wrap: anywhere; }
.banner.error { background: #ffebe9; border: 1px solid var(--red); }
.banner.ok { background: #dafbe1; border: 1px solid var(--green); }
.login { max-width: 30em; margin: 3em auto; background: #fff; padding: 1.5em; border: 1px solid #d0d7de;
         border-radius: 6px; }
.login input[type=password] { width: 100%; font: inherit; padding: .3em; }
"""

_LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} - lg serve</title><link rel="stylesheet" href="/static/page.css"></head>
<body><header class="top"><h1>LuminaGuard approvals</h1>
{% if who %}<span>signed in as <b>{{ who.name }}</b> ({{ who.role.value }})</span>
<form method="post" action="/logout"><input type="hidden" name="csrf" value="{{ csrf }}">
<button type="submit">Log out</button></form>{% endif %}
</header><main>
{% if error %}<div class="banner error" role="alert"><b>{{ error.status }} {{ error.code }}</b>: {{ error.message }}</div>{% endif %}
{% block body %}{% endblock %}
</main></body></html>
"""

_LOGIN = """{% extends "layout" %}{% block body %}
<form class="login" method="post" action="/login">
<h2>Log in</h2>
<p>Paste an API token (<code>lg token create NAME --role approver</code>). It is kept in an HttpOnly session
cookie for this browser only.</p>
<input type="hidden" name="login_csrf" value="{{ login_csrf }}">
<p><input type="password" name="token" id="token" autocomplete="off" required placeholder="lgt_..."></p>
<button type="submit" id="login">Log in</button>
</form>{% endblock %}
"""

_CARD = """{% macro card(g, csrf, can_decide) %}{% set c = g.card %}
<section class="gate level-{{ g.level }}" id="gate-{{ g.run }}-{{ g.gate }}">
<div><span class="badge level-{{ g.level }}">{{ (g.level or 'green')|upper }}</span>
<h2><a href="{{ g.page }}">gate {{ g.gate|v }}</a></h2> <span class="status">{{ g.status }}</span></div>
<p>{{ kind_text(g.kind) }}</p>
<dl class="facts">
<dt>run</dt><dd>{{ g.run }} ({{ g.pipeline|v }}, started by {{ g.initiator|v }})</dd>
<dt>step</dt><dd>{{ g.step|v }}{% if c.step_name and c.step_name != g.step %} ({{ c.step_name|v }}){% endif %}</dd>
<dt>digest</dt><dd><code class="digest">{{ g.digest }}</code></dd>
<dt>needs</dt><dd>{{ g.count }} approval(s){% if g.approvers %} of {{ g.approvers|join(', ') }}{% endif %}
{%- if g.require_signature %}, SSH-signed{% endif %}{% if not g.allow_self_approval %}; not by who started the run{% endif %}</dd>
{% if g.outcome %}<dt>outcome</dt><dd>{{ g.outcome|v }}</dd>{% endif %}
{% if g.expires %}<dt>expires</dt><dd>{{ g.expires|when }}</dd>{% endif %}
</dl>
{% for reason in c.reasons or [] %}<p class="reason">gate: {{ reason|v }}</p>{% endfor %}
{% if c.rules %}<h3>rules</h3><table class="rules">
{% for rule in c.rules %}<tr><td class="lvl lvl-{{ rule.level }}">{{ rule.level }}</td><td>{{ rule.rule|v }}</td>
<td>{{ rule.reason|v }}{% if rule.span %} <code>[{{ rule.span|v }}]</code>{% endif %}
{%- if rule.program %} (program: <code>{{ rule.program|v }}</code>){% endif %}</td></tr>{% endfor %}
</table>{% endif %}
<h3>command</h3><pre class="command">{{ c.command|v }}</pre>
{% if c.call %}<h3>call {{ c.call.name|v }}</h3><p class="reason">reason (the model's): {{ c.call.reason|v }}</p>
<dl class="facts">{% for key, value in (c.call.arguments or {}).items() %}<dt>{{ key|v }}</dt><dd><pre>{{ value|v }}</pre></dd>{% endfor %}</dl>
{% if c.diff %}<pre class="diff">{% for line in c.diff %}<span class="{{ line|diffclass }}">{{ line|v }}</span>{% endfor %}</pre>{% endif %}{% endif %}
{% set p = c.profile or {} %}
<p>profile <b>{{ p.name|v }}</b> (user {{ p.user|v }}, {{ p.vcpus }} vCPU, {{ p.memory_mib }} MiB);
relaxations: {% if p.relaxations %}<b>{{ p.relaxations|map('v')|join(', ') }}</b>{% else %}none{% endif %}</p>
{% if g.kind == 'effects' %}<h3>changes ({{ (c.changes or [])|length }})</h3>
{% for ch in c.changes or [] %}<div class="change"><div class="path">{{ ch.change }} {{ ch.path|v }}
{%- if ch.size is not none and ch.change != 'delete' %} ({{ ch.size }} B{% if ch.mode %}, mode {{ ch.mode }}{% endif %}){% endif %}
{%- if ch.symlink_target is not none %} -&gt; {{ ch.symlink_target|v }}{% endif %}</div>
{% if ch.note %}<div class="note">{{ ch.note }}</div>{% endif %}
{% if ch.diff %}<pre class="diff">{% for line in ch.diff.rstrip('\\n').split('\\n') %}<span class="{{ line|diffclass }}">{{ line|v }}</span>{% endfor %}</pre>{% endif %}
</div>{% else %}<p>none</p>{% endfor %}
{% if c.outputs %}<h3>outputs</h3><dl class="facts">{% for name, value in c.outputs.items() %}
<dt>{{ name|v }}</dt><dd><pre>{{ value|v }}</pre></dd>{% endfor %}</dl>{% endif %}{% endif %}
<h3>decisions so far</h3>
{% if g.decisions %}<ul class="decisions">{% for d in g.decisions %}<li><b>{{ d.verdict }}</b> by {{ d.approver|v }}
({{ 'SSH-signed' if d.signed else 'unsigned' }}, {{ d.ts|when }}){% if d.comment %}: {{ d.comment|v }}{% endif %}</li>
{% endfor %}</ul>{% else %}<p>none yet</p>{% endif %}
{% if g.status == OPEN and can_decide %}
<form class="decide approve" method="post" action="/runs/{{ g.run }}/gates/{{ g.gate }}/decide">
<input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="digest" value="{{ g.digest }}">
<label>Comment (optional)<textarea name="comment"></textarea></label>
<button type="submit" class="approve" name="verdict" value="approve">Approve</button></form>
<form class="decide reject" method="post" action="/runs/{{ g.run }}/gates/{{ g.gate }}/decide">
<input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="digest" value="{{ g.digest }}">
<label>Reason (required)<textarea name="comment" required></textarea></label>
<button type="submit" class="reject" name="verdict" value="reject">Reject</button></form>
{% elif g.status == OPEN %}<p class="note">Your role ({{ who.role.value }}) cannot decide gates.</p>{% endif %}
</section>{% endmacro %}
"""

_PENDING = """{% extends "layout" %}{% from "card" import card with context %}{% block body %}
<h2>Pending gates ({{ gates|length }})</h2>
{% for g in gates %}{{ card(g, csrf, can_decide) }}{% else %}<p>No gate is waiting for a decision.</p>{% endfor %}
{% endblock %}
"""

_GATE = """{% extends "layout" %}{% from "card" import card with context %}{% block body %}
<p><a href="/">all pending gates</a></p>
{{ card(gate, csrf, can_decide) }}
{% endblock %}
"""


def _diff_class(line: str) -> str:
    if line.startswith(("+++", "---")):
        return "head"
    if line.startswith("+"):
        return "add"
    if line.startswith("-"):
        return "del"
    return "hunk" if line.startswith("@@") else "ctx"


def _when(value: Any) -> str:
    import time  # noqa: PLC0415

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(value))) if value else "-"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.DictLoader({"layout": _LAYOUT, "login": _LOGIN, "card": _CARD, "queue": _PENDING,
                                  "gate": _GATE}),
        autoescape=True, undefined=jinja2.ChainableUndefined)
    env.filters["v"] = lambda value: visible(value) if value is not None else ""
    env.filters["diffclass"] = _diff_class
    env.globals["OPEN"] = GateStatus.OPEN.value
    env.filters["when"] = _when
    env.globals["kind_text"] = lambda kind: KIND_TEXT.get(str(kind), str(kind))
    return env
