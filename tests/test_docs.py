"""The docs site and the README: a strict build that loads nothing from elsewhere, a configuration reference in
step with conf/, a README that fits on a screen or two with links that work on GitHub and in the site, and
pictures that are there and small."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

from stages.common.config import compose_config

from conftest import REPO_ROOT
from docs_pages import (
    block,
    blocks,
    github_anchor,
    headings,
    images,
    links,
    mkdocs_anchor,
    nav_pages,
    pages,
    section,
    text,
)

README_MAX_LINES = 150
PICTURE_MAX_BYTES = 300_000
# Where a built page can make the browser fetch something: src/href of asset tags, srcset, CSS url() and @import.
ASSET = re.compile(
    r"""<(?:script|img|source|iframe|embed|audio|video|track|input)\b[^>]*?\b(?:src|srcset)=["']([^"']+)["']"""
    r"""|<link\b[^>]*?\bhref=["']([^"']+)["']"""
    r"""|url\(\s*["']?([^"')]+)["']?\s*\)"""
    r"""|@import\s+["']([^"']+)["']""",
    re.I,
)


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=REPO_ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    started = time.perf_counter()
    done = build(REPO_ROOT / "mkdocs.yml", site)
    print(f"mkdocs build --strict: {time.perf_counter() - started:.1f} s")
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return site


def external_assets(site: Path) -> list[str]:
    """Assets a built page or stylesheet would load from another host: (file, URL) of each."""
    found = []
    for path in [*site.rglob("*.html"), *site.rglob("*.css")]:
        for match in ASSET.finditer(path.read_text(encoding="utf-8", errors="replace")):
            url = html.unescape(next(group for group in match.groups() if group))
            for candidate in url.split(","):  # srcset lists several
                address = candidate.strip().split(" ")[0]
                if urlsplit(address).scheme in ("http", "https") or address.startswith("//"):
                    found.append(f"{path.relative_to(site)}: {address}")
    return found


def mkdocs_config() -> dict:
    return yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())


# --- the site ---------------------------------------------------------------------------------------------


def test_the_site_builds_strict_with_every_page(site):
    assert (site / "index.html").is_file() and (site / "search" / "search_index.json").is_file()
    in_nav = nav_pages(mkdocs_config()["nav"])
    assert sorted(in_nav) == sorted(path.name for path in (REPO_ROOT / "docs").glob("*.md")), "nav and docs/ differ"
    for page in in_nav:
        built = site / ("index.html" if page == "index.md" else f"{page.removesuffix('.md')}/index.html")
        assert built.is_file(), page
    assert "docs/team.md" in pages()


def test_no_built_page_loads_anything_from_another_host(site):
    assert external_assets(site) == []
    assert mkdocs_config()["theme"]["font"] is False


def test_the_asset_check_catches_the_themes_web_fonts(tmp_path):
    """With theme.font left at Material's default, the pages load Google Fonts: the check above must see it."""
    config = mkdocs_config()
    del config["theme"]["font"]
    config["docs_dir"] = str(REPO_ROOT / "docs")
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    done = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    assert any("fonts.googleapis.com" in found for found in external_assets(tmp_path / "site"))


def test_links_between_pages_work_on_github_as_in_the_site():
    """mkdocs --strict checks links and anchors with its own slugs; GitHub slugs headings its own way. A link to
    an anchor must find the heading under both."""
    checked = 0
    for page in pages():
        for target in links(page):
            if urlsplit(target).scheme or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            linked = (Path(page).parent / path).as_posix() if path else page
            linked = os.path.normpath(linked)
            assert (REPO_ROOT / linked).is_file(), f"{page}: a link to {target}: no {linked}"
            if anchor:
                assert linked.endswith(".md"), f"{page}: {target}"
                on_github = [github_anchor(heading) for heading in headings(linked)]
                in_site = [mkdocs_anchor(heading) for heading in headings(linked)]
                assert anchor in on_github and anchor in in_site, f"{page}: {target}: no such heading in {linked}"
                checked += 1
    assert checked >= 10


def test_github_and_mkdocs_anchors_agree_on_a_tricky_heading():
    assert github_anchor("Predict, deploy and serve") == mkdocs_anchor("Predict, deploy and serve")
    assert github_anchor("A - B") != mkdocs_anchor("A - B")  # "a---b" on GitHub, "a-b" in MkDocs


# --- the README --------------------------------------------------------------------------------------------


def test_the_readme_fits_on_a_screen_or_two_and_points_into_the_docs():
    readme = text("README.md")
    assert len(readme.splitlines()) <= README_MAX_LINES
    steps = re.findall(r"^\*\*(\d)\. ", section("README.md", "Next steps"), re.M)
    assert steps == ["1", "2", "3", "4", "5"]
    for step in re.split(r"^\*\*\d\. ", section("README.md", "Next steps"), flags=re.M)[1:6]:
        assert re.search(r"\]\(docs/[\w-]+\.md(#[\w-]+)?\)", step), f"a next step without its docs page: {step}"
        assert "```bash\n" in step, f"a next step without its command: {step}"
    assert "make demo" in readme and "make test" in readme and "──convert_json──▶" in readme


# --- the configuration reference ---------------------------------------------------------------------------

ROW = re.compile(
    r"^\| `(?P<key>[\w.]+)` \| `(?P<default>[^`]*)` \| (?P<profiles>[^|]*) \| (?P<meaning>[^|]*) \|$", re.M
)


def flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        return {key: value for name, child in node.items() for key, value in flat(child, f"{prefix}{name}.").items()}
    return {prefix.removesuffix("."): node}


def profile_configs() -> dict[str, dict]:
    names = sorted(path.stem for path in (REPO_ROOT / "conf" / "profile").glob("*.yaml"))
    return {
        name: flat(OmegaConf.to_container(compose_config([f"profile={name}"], REPO_ROOT / "conf"), resolve=True))
        for name in names
    }


def reference_mismatches(page: str, configs: dict[str, dict], default: str) -> list[str]:
    """How the configuration page and the composed profiles disagree: keys, defaults, profiles' values."""
    problems = []
    header = re.findall(r"^\| key \| default \| (.*?) \| meaning \|$", page, re.M)
    others = sorted(name for name in configs if name != default)
    if {tuple(sorted(cell.split(" · "))) for cell in header} != {tuple(others)}:
        problems.append(f"the tables' profile column must name {' · '.join(others)}: {set(header)}")
    rows = {match["key"]: match for match in ROW.finditer(page)}
    expected = configs[default]
    problems += [f"{key}: in conf/, not on the page" for key in expected if key not in rows]
    problems += [f"{key}: on the page, not in conf/" for key in rows if key not in expected]
    for key, row in rows.items():
        if key not in expected:
            continue
        if yaml.safe_load(row["default"]) != expected[key]:
            problems.append(f"{key}: the page says {row['default']}, conf/ composes {expected[key]!r}")
        listed = {name: yaml.safe_load(value) for name, value in re.findall(r"(\w+) `([^`]*)`", row["profiles"])}
        differing = {name: configs[name][key] for name in others if configs[name][key] != expected[key]}
        if listed != differing:
            problems.append(f"{key}: the page lists the profiles' values {listed}, conf/ composes {differing}")
        if len(row["meaning"].strip()) < 8:
            problems.append(f"{key}: no meaning given")
    return problems


def test_the_configuration_reference_lists_every_key_with_its_default_and_profiles():
    assert reference_mismatches(text("docs/configuration.md"), profile_configs(), "demo") == []
    assert len(ROW.findall(text("docs/configuration.md"))) >= 100


def test_the_reference_check_sees_a_renamed_key_a_new_default_and_a_new_profile():
    page, configs = text("docs/configuration.md"), profile_configs()
    renamed = {
        name: {k.replace("train_paddle.epochs", "train_paddle.num_epochs"): v for k, v in c.items()}
        for name, c in configs.items()
    }
    assert reference_mismatches(page, renamed, "demo") == [
        "train_paddle.num_epochs: in conf/, not on the page",
        "train_paddle.epochs: on the page, not in conf/",
    ]
    changed = {name: {**c, "predict.batch_size": 4} for name, c in configs.items()}
    assert reference_mismatches(page, changed, "demo") == ["predict.batch_size: the page says 8, conf/ composes 4"]
    smoke_only = {**configs, "smoke": {**configs["smoke"], "report.grid_samples": 1}}
    assert reference_mismatches(page, smoke_only, "demo") == [
        "report.grid_samples: the page lists the profiles' values {}, conf/ composes {'smoke': 1}"
    ]
    assert reference_mismatches(page, {**configs, "gpu": configs["full"]}, "demo")[0].startswith("the tables'")


# --- what else the pages promise ------------------------------------------------------------------------------


def test_every_make_target_is_in_the_reference():
    makefile = (REPO_ROOT / "Makefile").read_text()
    documented = set(re.findall(r"^([a-z-]+):[^\n#]*##", makefile, re.M))
    listed = set(re.findall(r"^\| `make ([a-z-]+)` \|", section("docs/pipeline.md", "Make targets"), re.M))
    assert documented == listed and "docs" in listed


def test_every_stage_is_in_the_reference():
    stages = set(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])
    table = section("docs/pipeline.md", "Pipeline stages and files")
    for name in (*stages, "preannotate"):
        assert f"| `{name}" in table or f"`{name}@" in table, name


def test_every_bench_has_its_command_on_the_measurements_page():
    page = text("docs/measurements.md")
    for bench in sorted((REPO_ROOT / "bench").glob("*.py")):
        assert f"bench/{bench.name}" in page, f"bench/{bench.name}: its figures, command and machine belong there"


def test_the_pictures_are_there_used_and_small():
    used = {
        os.path.normpath(f"docs/{target}") for page in pages() if page.startswith("docs/") for target in images(page)
    }
    used |= {os.path.normpath(target) for target in images("README.md")}
    committed = {f"docs/images/{path.name}" for path in (REPO_ROOT / "docs" / "images").glob("*")}
    assert used == committed, f"unused: {committed - used}, missing: {used - committed}"
    for picture in committed:
        path = REPO_ROOT / picture
        assert path.suffix == ".png" and path.stat().st_size <= PICTURE_MAX_BYTES, picture
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 200, picture


def test_the_pretrained_weights_fragment_fits_the_pp_liteseg_config():
    """docs/paddleseg-models.md's pretrained: fragment sits where PP-LiteSeg's config has its backbone."""
    fragment = yaml.safe_load(block("docs/paddleseg-models.md", "pretrained: https://"))
    config = yaml.safe_load((REPO_ROOT / "conf" / "paddleseg" / "pp_liteseg_stdc1.yml").read_text())
    backbone = config["model"]["backbone"]
    assert set(fragment["backbone"]) <= set(backbone) and fragment["backbone"]["type"] == backbone["type"]
    assert backbone["pretrained"] is None  # nothing downloads unless asked
    assert fragment["backbone"]["pretrained"].endswith(".tar.gz")


def test_the_code_blocks_are_closed():
    for page in pages():
        assert text(page).count("```") == 2 * len(blocks(page)), f"{page}: an unclosed or indented-away fence"
