"""The tutorials of the documentation site run, and say what their scripts print.

Each page docs/tutorials/<name>.md has its code in examples/tutorials/<name>.py.
The test runs the script (small sizes: a few seconds each) and checks

* that every line of every ```python block of the page is a line of the
  script (or of the example modules it imports and calls), so the page
  shows code that runs, and
* that every line of every ```text block (the output the page shows) is a
  line the script printed, so the numbers on the page are gdag's.

R code (```r blocks) and statsmodels/pgmpy code are not run by gdag's tests;
the statsmodels and pgmpy parts of the script run when those packages are
installed (``bash scripts/bench.sh`` installs them) and are skipped otherwise.
The lme4 numbers the lme4 page quotes are checked against
tests/data/*_reference.json here.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["lme4", "statsmodels_pgmpy", "seed_models"]
# the example modules a tutorial script imports and calls: the page may quote them too
SOURCES = {"lme4": ["formulas.py"], "seed_models": ["romcom.py", "students.py", "app_reliability.py"]}


def blocks(page: str, lang: str) -> list[list[str]]:
    text = (ROOT / "docs" / "tutorials" / f"{page}.md").read_text()
    found = re.findall(rf"^[ \t]*```{lang}\n(.*?)^[ \t]*```$", text, flags=re.S | re.M)
    return [textwrap.dedent(b).splitlines() for b in found]


@lru_cache(maxsize=None)
def run(page: str, out: str) -> str:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "tutorials" / f"{page}.py"), out],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tutorials"))


@pytest.mark.parametrize("page", PAGES)
def test_the_code_on_the_page_is_the_script(page):
    script = {line.strip() for f in SOURCES.get(page, []) + [f"tutorials/{page}.py"]
              for line in (ROOT / "examples" / f).read_text().splitlines()}
    code = blocks(page, "python")
    assert code, f"{page}.md shows no python code"
    missing = [line for b in code for line in b if line.strip() and line.strip() not in script]
    assert not missing, f"lines of docs/tutorials/{page}.md not in examples/tutorials/{page}.py: {missing}"


@pytest.mark.parametrize("page", PAGES)
def test_the_output_on_the_page_is_what_the_script_prints(page, outdir):
    printed = {line.strip() for line in run(page, outdir).splitlines()}
    shown = blocks(page, "text")
    assert shown, f"{page}.md shows no output"
    missing = [line for b in shown for line in b if line.strip() and line.strip() not in printed]
    assert not missing, f"output shown on docs/tutorials/{page}.md that the script does not print: {missing}"


def test_the_lme4_numbers_quoted_are_lme4s():
    """The lme4 page quotes lme4 1.1.31 (tests/data/*_reference.json); each quoted number is there."""
    text = (ROOT / "docs" / "tutorials" / "lme4.md").read_text()
    quoted = re.findall(r"\(lme4[^:()]*: (.*?)\)", text, flags=re.S)
    assert quoted, "the lme4 page quotes no lme4 numbers"
    values = []

    def collect(x):
        if isinstance(x, dict):
            for v in x.values():
                collect(v)
        elif isinstance(x, list):
            for v in x:
                collect(v)
        elif isinstance(x, float | int) and not isinstance(x, bool):
            values.append(float(x))

    for f in (ROOT / "tests" / "data").glob("*_reference.json"):
        collect(json.loads(f.read_text()))
    for group in quoted:
        for number in re.findall(r"-?\d+(?:\.\d+)?", group):
            digits = len(number.split(".")[1]) if "." in number else 0
            assert any(abs(v - float(number)) <= 0.51 * 10**-digits for v in values), f"{number} is not lme4's"


def test_the_pages_are_in_the_site():
    nav = (ROOT / "mkdocs.yml").read_text()
    index = (ROOT / "docs" / "index.md").read_text()
    for page in PAGES:
        assert f"tutorials/{page}.md" in nav and f"tutorials/{page}.md" in index
