"""Find every stage's figures (``figures.json``) under a results folder, in pipeline order.

The contract every stage follows: ``figures.json`` in the stage's output folder
is a JSON list of ``{"file": "name.png" (relative to that folder), "title": ...,
"caption": ...}``.  A stage that is absent (the workflow's graph depends on the
config) simply has no ``figures.json``; a listed file that is missing or empty,
or an entry without a title, is reported as a problem instead of a broken image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# Stage folders (first path component under the results folder) in the order the pipeline runs them, with the
# heading each gets in the report.  Folders not listed here (a stage added later) come after these, by name.
STAGES = [
    ("simulate_movies", "Simulated movies"),
    ("import", "Import"),
    ("motion", "Motion correction"),
    ("ctf", "CTF estimation"),
    ("pick", "Particle picking (LoG)"),
    ("template_extract", "Templates: LoG's particles"),
    ("template_class2d", "Templates: 2D classes of LoG's particles"),
    ("template_select", "Templates: the selected class averages"),
    ("pick_template", "Particle picking (templates)"),
    ("pick_agreed", "Picks the pickers agree on (the learned picker's positives)"),
    ("pick_learned", "Particle picking (learned)"),
    ("pick_consensus", "Consensus of pickers"),
    ("clean", "Micrograph cleaning"),
    ("extract", "Particle extraction"),
    ("simulate", "Simulated particles"),
    ("class2d", "2D classification"),
    ("select", "2D class selection"),
    ("initial_model", "Initial model"),
    ("class3d", "3D classification"),
    ("refine3d", "3D refinement"),
    ("reconstruct", "Reconstruction from the true poses"),
    ("fsc", "Resolution (FSC)"),
    ("postprocess", "Postprocessing"),
    ("locres", "Local resolution"),
    ("validate", "Validation"),
    ("summary", "All FSC curves"),
]
STAGE_TITLES = dict(STAGES)
# sub-folders in their own order (others by name, after these)
SUBFOLDERS = {"ctf": ["ctffind", "zeros", "consensus"], "fsc": ["halves", "truth", "ideal"],
              "class3d": ["run1", "run2", "run3", "run4", "run5", "run6", "run7", "run8", "run9", "consensus"]}
SUBTITLES = {"fsc/halves": "gold-standard half maps", "fsc/truth": "refined map vs the truth",
             "fsc/ideal": "map from the true poses vs the truth", "class3d/consensus": "class consensus",
             "ctf/consensus": "consensus of the two estimates", **{f"class3d/run{i}": f"run {i}" for i in range(1, 10)}}


@dataclass
class Figure:
    path: Path  # absolute
    file: str  # as listed, relative to the stage folder
    title: str
    caption: str


@dataclass
class Section:
    """The figures of one stage folder (``folder`` relative to the results, e.g. "fsc/halves")."""

    stage: str
    folder: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def load_figures(folder) -> tuple[list[Figure], list[str]]:
    """The figures ``folder/figures.json`` lists and the problems found with it (missing or empty files,
    entries without file or title, a file that is not a JSON list)."""
    folder = Path(folder)
    index = folder / "figures.json"
    try:
        entries = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [], [f"{index}: cannot be read as JSON ({exc})"]
    if not isinstance(entries, list):
        return [], [f"{index}: not a JSON list of figures"]
    figures, problems = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("file") or not entry.get("title"):
            problems.append(f"{index}: entry {i + 1} has no file or no title")
            continue
        path = (folder / str(entry["file"])).resolve()
        if not path.is_file() or path.stat().st_size == 0:
            problems.append(f"{folder / entry['file']}: listed in figures.json but missing or empty")
            continue
        figures.append(Figure(path, str(entry["file"]), str(entry["title"]), str(entry.get("caption") or "")))
    return figures, problems


def _order(results: Path, index: Path) -> tuple:
    rel = index.parent.relative_to(results).parts
    stage = rel[0] if rel else ""
    names = [s for s, _ in STAGES]
    first = names.index(stage) if stage in names else len(names)
    sub = rel[1] if len(rel) > 1 else ""
    subs = SUBFOLDERS.get(stage, [])
    second = subs.index(sub) if sub in subs else len(subs)
    return first, stage, second, rel[1:]


def collect_sections(results, exclude=()) -> list[Section]:
    """A :class:`Section` per ``figures.json`` under ``results`` (except under the folders in ``exclude``),
    in pipeline order."""
    results = Path(results).resolve()
    skip = [Path(e).resolve() for e in exclude]
    indexes = [p for p in results.rglob("figures.json")
               if not any(p.resolve().is_relative_to(s) for s in skip)]
    sections = []
    for index in sorted(indexes, key=lambda p: _order(results, p)):
        rel = index.parent.relative_to(results)
        stage = rel.parts[0] if rel.parts else ""
        title = STAGE_TITLES.get(stage, stage.replace("_", " ").capitalize() or "Results")
        if len(rel.parts) > 1:
            sub = "/".join(rel.parts[1:])
            title += " — " + SUBTITLES.get(f"{stage}/{sub}", sub)
        figures, problems = load_figures(index.parent)
        sections.append(Section(stage, rel.as_posix(), title, figures, problems))
    return sections
