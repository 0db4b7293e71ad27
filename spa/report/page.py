"""The report as one self-contained HTML page: inline CSS, images embedded as base64 data URIs, no scripts,
nothing fetched from a network.  Plain string building; every text from the results goes through
``html.escape``."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from spa.report.collect import Figure, Section

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
        ".gif": "image/gif", ".webp": "image/webp"}

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d232a;
       background: #f6f7f9; }
header, main, footer { max-width: 1150px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 18px; }
h1 { margin: 0 0 4px; font-size: 26px; }
h2 { margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #c9d3de; font-size: 21px; }
h3 { margin: 18px 0 6px; font-size: 16px; }
.sub { color: #5a6572; margin: 0 0 12px; }
.card { background: #fff; border: 1px solid #dde3ea; border-radius: 6px; padding: 12px 16px; margin: 12px 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 12px; }
table { border-collapse: collapse; width: 100%; }
td, th { text-align: left; vertical-align: top; padding: 3px 8px 3px 0; border-bottom: 1px solid #eef1f4; }
th { font-weight: 600; color: #3b4550; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 12px 0 22px; background: #fff; border: 1px solid #dde3ea; border-radius: 6px; padding: 10px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { margin-top: 6px; color: #333d47; }
figcaption b { display: block; color: #1d232a; }
.path { color: #7a8592; font-size: 12px; font-family: ui-monospace, monospace; }
nav ol { columns: 3; margin: 4px 0; }
pre { background: #f1f3f6; padding: 8px; overflow-x: auto; font-size: 12px; }
.problem { color: #a3290f; }
footer { color: #7a8592; font-size: 12px; padding: 24px 20px; }
"""


@dataclass
class Summary:
    """What the top of the page shows; each list is (label, value) rows, empty when the stage is absent."""

    results: str
    created: str
    counts: list = field(default_factory=list)  # (label, count, file)
    resolutions: list = field(default_factory=list)
    quality: list = field(default_factory=list)
    rejections: list = field(default_factory=list)
    seeds: list = field(default_factory=list)
    config_text: str | None = None
    config_hash: str | None = None
    versions: list = field(default_factory=list)
    provenance: list = field(default_factory=list)  # (file, created, command)
    map_figures: list = field(default_factory=list)  # Figures of the final map
    map_name: str | None = None


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def anchor(folder: str) -> str:
    """The id of a stage folder's section: "stage-" + the folder, e.g. "stage-fsc-halves" (never "summary")."""
    return "stage-" + (re.sub(r"[^a-z0-9]+", "-", folder.lower()).strip("-") or "results")


def data_uri(path: Path) -> str:
    mime = MIME.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, None for other files."""
    head = path.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def figure_html(fig: Figure, folder: str) -> str:
    size = png_size(fig.path)
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    return (f'<figure><img src="{data_uri(fig.path)}" alt="{esc(fig.title)}"{dims}>'
            f"<figcaption><b>{esc(fig.title)}</b>{esc(fig.caption)} "
            f'<span class="path">{esc(folder + "/" + fig.file if folder else fig.file)}</span></figcaption></figure>')


def _table(rows, header=None, num_col: int | None = 1) -> str:
    if not rows:
        return '<p class="sub">(not in this run)</p>'
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = "".join(f'<td class="num">{esc(c)}</td>' if i == num_col else f"<td>{esc(c)}</td>"
                        for i, c in enumerate(row))
        out.append(f"<tr>{cells}</tr>")
    out.append("</table>")
    return "".join(out)


def summary_html(s: Summary) -> str:
    counts = [(label, f"{n:,}", file) for label, n, file in s.counts]
    parts = ['<section id="summary"><h2>Summary</h2><div class="grid">',
             f'<div class="card"><h3>Resolution</h3>{_table(s.resolutions)}</div>',
             f'<div class="card"><h3>Particles at each stage</h3>{_table(counts, num_col=1)}</div>',
             f'<div class="card"><h3>Map quality</h3>{_table(s.quality)}</div>',
             f'<div class="card"><h3>Rejected, and why</h3>{_table(s.rejections, num_col=None)}</div>',
             "</div>"]
    if s.map_figures:
        parts.append(f"<h3>The final map{': ' + esc(s.map_name) if s.map_name else ''}</h3>")
        parts += [figure_html(f, "report") for f in s.map_figures]
    config = ""
    if s.config_text is not None:
        config = (f"<details><summary>the workflow config (hash {esc(s.config_hash)})</summary>"
                  f"<pre>{esc(s.config_text)}</pre></details>")
    parts += ['<div class="grid">',
              f'<div class="card"><h3>Config and seeds</h3>{_table(s.seeds)}{config}</div>',
              f'<div class="card"><h3>Software</h3>{_table(s.versions, num_col=None)}</div></div>']
    if s.provenance:
        parts.append('<div class="card"><h3>Provenance of the key outputs</h3>'
                     f'{_table(s.provenance, ["file", "made", "command"], num_col=None)}</div>')
    parts.append("</section>")
    return "".join(parts)


def section_html(section: Section) -> str:
    out = [f'<section id="{anchor(section.folder)}"><h2>{esc(section.title)}</h2>']
    out += [figure_html(f, section.folder) for f in section.figures]
    out += [f'<p class="problem">{esc(p)}</p>' for p in section.problems]
    out.append("</section>")
    return "".join(out)


def render(summary: Summary, sections: list[Section], title: str) -> str:
    """The whole page."""
    nav = "".join(f'<li><a href="#{anchor(s.folder)}">{esc(s.title)}</a></li>' for s in sections)
    return "".join([
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<header><h1>{esc(title)}</h1>",
        f'<p class="sub">results: <span class="path">{esc(summary.results)}</span> · made {esc(summary.created)}</p>',
        f'<nav class="card"><b>Stages</b><ol><li><a href="#summary">Summary</a></li>{nav}</ol></nav></header>',
        "<main>", summary_html(summary), *[section_html(s) for s in sections], "</main>",
        "<footer>Made by <code>spa report</code>; every figure is embedded, the page needs no network.</footer>",
        "</body></html>\n",
    ])
