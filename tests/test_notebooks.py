"""Every notebook under notebooks/ runs top to bottom in SMOKE mode and is stored without outputs.

The parameters cell (tagged ``parameters``) holds ``SMOKE = False``; the run flips it to ``SMOKE = True`` in memory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def read(path: Path):
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(path, as_version=4)


def parameters_cell(nb):
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and "parameters" in code[0].metadata.get("tags", []), "first code cell must be tagged 'parameters'"
    assert "SMOKE = False" in code[0].source, "the parameters cell must hold SMOKE = False"
    return code[0]


def test_notebooks_exist() -> None:
    assert NOTEBOOKS, f"no notebooks under {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_stored_without_outputs(path: Path) -> None:
    nb = read(path)
    parameters_cell(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} has stored outputs; clear them before committing"
            assert cell.execution_count is None, f"cell {i} has an execution count; clear outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    nb = read(path)
    cell = parameters_cell(nb)
    cell.source = cell.source.replace("SMOKE = False", "SMOKE = True")
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell


def test_render_figures_saves_each_figure_with_parameters_set(tmp_path: Path) -> None:
    """``notebooks/render_figures.py`` (how docs/figures are made) applies ``--set`` and writes one PNG per figure."""
    import importlib.util

    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    spec = importlib.util.spec_from_file_location("render_figures", NOTEBOOK_DIR / "render_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("SMOKE = False\nBARS = 1")
    params.metadata["tags"] = ["parameters"]
    plot = "import matplotlib.pyplot as plt\nfor n in range(BARS):\n    plt.bar([0], [n + 1])\n    plt.show()"
    nb.cells = [params, nbformat.v4.new_code_cell(plot)]
    path = tmp_path / "demo.ipynb"
    nbformat.write(nb, path)
    written = module.render(path, tmp_path / "figures", ["BARS=3"])
    assert [p.name for p in written] == ["demo_1.png", "demo_2.png", "demo_3.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
    with pytest.raises(ValueError, match="NAME=VALUE"):
        module.render(path, tmp_path / "figures", ["3"])
