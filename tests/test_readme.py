"""What the README tells a new user, checked against what the project really does."""

import re

from tests.helpers import ROOT

README = (ROOT / "README.md").read_text()


def test_the_readme_says_how_to_install_the_cpu_only_torch_before_the_first_command():
    # The first lines stay the two set-up commands; the CPU-only install follows them.
    assert README.startswith(
        '# vae-lightning\n\n```bash\npip install -e ".[dev]" && python train.py'
    )
    first_command = README.index('pip install -e ".[dev]"')
    cpu = README.index("--index-url https://download.pytorch.org/whl/cpu")
    assert first_command < cpu < README.index("\n## ")


def test_the_readme_is_short_and_its_links_lead_to_pages_of_the_site():
    assert len(README.splitlines()) <= 150
    links = re.findall(r"\]\((docs/[^)#]+)", README)
    assert "docs/getting-started.md" in links and "docs/benchmarks/index.md" in links, links
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, missing
    assert "mkdocs serve" in README
