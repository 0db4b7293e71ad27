"""Assemble the report of a results folder: summary facts, views of the final map, every stage's figures."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import yaml

from spa.errors import SpaInputError
from spa.report import facts
from spa.report.collect import Figure, collect_sections
from spa.report.page import Summary, render

# the final map shown on top, first one present (relative to the results folder)
MAP_CANDIDATES = ["refine3d/run_class001.mrc", "postprocess/postprocess_masked.mrc", "initial_model/initial_model.mrc"]


def final_map(results: Path, given=None) -> Path | None:
    if given:
        path = Path(given)
        if not path.is_file():
            raise SpaInputError(path, "map not found")
        return path
    for rel in MAP_CANDIDATES:
        if (results / rel).is_file():
            return results / rel
    return None


def read_config(path) -> tuple[dict | None, str | None]:
    """The workflow config (dict) and its text, from a YAML file; (None, None) without one."""
    if not path:
        return None, None
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        config = yaml.safe_load(text) or {}
    except OSError:
        raise SpaInputError(path, "config file not found or unreadable") from None
    except yaml.YAMLError as exc:
        raise SpaInputError(path, f"not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(config, dict):
        raise SpaInputError(path, "config must be a mapping of keys to values")
    return config, text


def map_views(map_path: Path, out_dir: Path) -> list[Figure]:
    """map_slices.png and map_surface.png of the final map in ``out_dir``."""
    from spa.io.mrc import read_mrc
    from spa.report.mapview import write_slices, write_surface

    volume, pixel_size = read_mrc(map_path)
    if volume.ndim != 3:
        raise SpaInputError(map_path, f"not a 3D map (shape {volume.shape})")
    entries = [write_slices(out_dir / "map_slices.png", volume, pixel_size, map_path.name),
               write_surface(out_dir / "map_surface.png", volume, pixel_size, map_path.name)]
    return [Figure(out_dir / e["file"], e["file"], e["title"], e["caption"]) for e in entries]


def build_report(results, out_dir, *, map_path=None, config_path=None, title: str | None = None,
                 log=lambda message: None) -> Path:
    """Write ``out_dir/index.html`` (and the map pictures beside it) for the results folder ``results``;
    returns the page's path.  The page is written last and atomically: it appears only when complete."""
    from spa.io.atomic import atomic_path
    from spa.provenance import config_hash

    results = Path(results)
    if not results.is_dir():
        raise SpaInputError(results, "results folder not found")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config, config_text = read_config(config_path)
    sections = collect_sections(results, exclude=[out_dir])
    log(f"report: {sum(len(s.figures) for s in sections)} figures from {len(sections)} stage folders")
    summary = Summary(
        results=str(results.resolve()),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        counts=facts.particle_counts(results), resolutions=facts.resolutions(results),
        quality=facts.quality(results), rejections=facts.rejections(results),
        seeds=facts.seeds(config, results), config_text=config_text,
        config_hash=config_hash(config) if config is not None else None,
        versions=facts.versions(), provenance=facts.provenance(results))
    chosen = final_map(results, map_path)
    if chosen is not None:
        summary.map_name = str(chosen.relative_to(results)) if chosen.is_relative_to(results) else chosen.name
        summary.map_figures = map_views(chosen, out_dir)
        log(f"report: views of {chosen}")
    page = render(summary, sections, title or f"spa report: {results.resolve().name}")
    index = out_dir / "index.html"
    with atomic_path(index) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    problems = [p for s in sections for p in s.problems]
    for p in problems:
        log(f"report: {p}")
    return index
