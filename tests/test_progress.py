"""Progress: long passes report how far they are (one updating line on a terminal, plain lines in a log
file, never a carriage return there); iterative stages log each iteration's wall time and the time left."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest

from spa.cli import main as spa_main
from spa.progress import progress_printer


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_lines_every_tenth_and_at_the_end():
    out, clock = io.StringIO(), Clock()
    p = progress_printer("stage: pass", stream=out, clock=clock)
    for done in range(1, 201):
        clock.t += 0.4
        p(done, 200)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 10
    assert lines[0] == "stage: pass: 20/200 (10 %), 8 s, about 72 s left"
    assert lines[-1] == "stage: pass: 200/200 (100 %), 80 s"


def test_a_short_pass_logs_one_line():
    lines, clock = [], Clock()
    p = progress_printer("class2d: initial class averages", write=lines.append, clock=clock)
    for done in range(1, 11):
        clock.t += 0.3  # 3 s in all: no line until the end
        p(done, 10)
    assert lines == ["class2d: initial class averages: 10/10 (100 %), 3 s"]


def test_log_lines_at_least_every_minute_in_a_slow_pass():
    lines, clock = [], Clock()
    p = progress_printer("refine3d: image statistics", write=lines.append, clock=clock)
    for done in range(1, 1001):
        clock.t += 1.0  # 1000 s for the pass: a tenth takes 100 s, more than the minute
        p(done, 1000)
    assert len(lines) == 10 + 10  # each tenth, and a minute into each tenth
    assert all("about" in line and "left" in line for line in lines[:-1])


def test_a_terminal_gets_one_updating_line():
    term, clock = Terminal(), Clock()
    p = progress_printer("reconstruct: chunks", stream=term, clock=clock)
    for done in range(1, 51):
        clock.t += 0.1
        p(done, 50)
    text = term.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert 10 <= text.count("\r") <= 30  # at most every 0.2 s, and the last
    assert text.rstrip("\n").split("\r")[-1].startswith("reconstruct: chunks: 50/50 (100 %)")


@pytest.fixture(scope="module")
def particles(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    assert spa_main(["simulate", "--preset", "tiny", "--n-particles", "120", "--box", "24", "--seed", "4",
                     "--output-dir", str(root)]) == 0
    return root


def spa_logged(log_path, *argv):
    """``spa ARGV > log 2>&1``, as a Snakemake rule runs it; returns the log's text."""
    with open(log_path, "w") as log:
        run = subprocess.run([sys.executable, "-m", "spa.cli", *map(str, argv)], stdout=log, stderr=subprocess.STDOUT)
    text = open(log_path, newline="").read()
    assert run.returncode == 0, text
    return text


def test_log_files_have_progress_lines_and_no_carriage_return(particles, tmp_path):
    text = spa_logged(tmp_path / "reconstruct.log", "reconstruct", "--particles",
                      particles / "truth" / "particles.star", "--output", tmp_path / "map.mrc", "--chunk-size", "10")
    assert "\r" not in text
    # a pass of a few seconds gives one line (a long one a line each tenth, as above)
    assert re.search(r"^reconstruct: chunks: 12/12 \(100 %\), \d+ s$", text, flags=re.MULTILINE)

    text = spa_logged(tmp_path / "class2d.log", "class2d", "--particles", particles / "particles.star", "--classes",
                      "2", "--iter", "2", "--noise-decoys", "0", "--chunk-size", "12", "--output-dir", tmp_path / "c2")
    assert "\r" not in text
    assert re.search(r"^class2d: initial class averages: 10/10 \(100 %\), \d+ s$", text, flags=re.MULTILINE)
    # each iteration: its wall time and, until the last, the time left
    assert re.search(r"^class2d: iteration 1/2: .*; \d+ s, about \d+ (s|min) left$", text, flags=re.MULTILINE)
    assert re.search(r"^class2d: iteration 2/2: .*; \d+ s$", text, flags=re.MULTILINE)

    text = spa_logged(tmp_path / "simulate.log", "simulate", "--preset", "tiny", "--n-particles", "600",
                      "--box", "16", "--output-dir", tmp_path / "sim")
    assert "\r" not in text and "simulate: particle images: 600/600 (100 %)" in text
