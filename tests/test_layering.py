"""The floors of the code base, read from the imports themselves (lazy ones inside functions included)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"train_v2", "inference", "torch2onnx", "im2rec", "subcenter_clean"}   # command-line entry points
ABOVE_UTILS = SCRIPTS | {"dataset", "losses", "partial_fc_v2", "lr_scheduler", "training", "callbacks",
                         "face_model", "backbones", "eval", "configs"}


def project_imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, wherever the import statement stands."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def library_modules() -> list[Path]:
    top = [p for p in REPO.glob("*.py") if p.stem not in SCRIPTS]
    return sorted(top + list((REPO / "backbones").glob("*.py")) + list((REPO / "eval").glob("*.py"))
                  + list((REPO / "utils").glob("*.py")))


def test_the_reader_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from eval import verification\n    import dataset.sub\n")
    assert project_imports(module) == {"os", "eval", "dataset"}


@pytest.mark.parametrize("path", sorted((REPO / "utils").glob("*.py")), ids=lambda p: p.name)
def test_utils_is_the_ground_floor(path):
    upward = project_imports(path) & ABOVE_UTILS
    assert not upward, f"utils/{path.name} imports {sorted(upward)}: utils/ may import only utils/ and packages"


@pytest.mark.parametrize("path", library_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_library_modules_import_no_script(path):
    scripts = project_imports(path) & SCRIPTS
    assert not scripts, f"{path.relative_to(REPO)} imports the command-line script(s) {sorted(scripts)}"


def test_every_script_is_a_known_entry_point():
    """A new top-level script must be listed above, or the checks miss what imports it."""
    mains = {p.stem for p in REPO.glob("*.py") if "if __name__ == \"__main__\":" in p.read_text()}
    assert mains <= SCRIPTS, sorted(mains - SCRIPTS)
