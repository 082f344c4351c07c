"""Run a notebook top to bottom (full mode, not SMOKE) and save every figure it draws as a PNG.

The notebooks themselves are stored without outputs; this is how the few figures under ``docs/figures`` that the
README shows are made. ``--set NAME=VALUE`` appends ``NAME = VALUE`` (a Python expression) to the parameters cell.

    python notebooks/render_figures.py notebooks/atrous_rates.ipynb --out docs/figures \
        --set 'CHECKPOINT="../runs/context_notebook/checkpoints/last.ckpt"'
"""

from __future__ import annotations

import argparse
import base64
import os
from pathlib import Path

import nbclient
import nbformat


def render(notebook: Path, out: Path, assignments: list[str], timeout: int = 3600) -> list[Path]:
    """Execute ``notebook`` with ``assignments`` added to its parameters cell; write ``<stem>_<n>.png`` per figure."""
    nb = nbformat.read(notebook, as_version=4)
    params = next(cell for cell in nb.cells if cell.cell_type == "code")
    if "parameters" not in params.metadata.get("tags", []):
        raise ValueError(f"{notebook}: the first code cell must be tagged 'parameters'")
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ValueError(f"--set expects NAME=VALUE, got {assignment!r}")
        params.source += f"\n{name.strip()} = {value}"
    saved = {key: os.environ.get(key) for key in ("MPLBACKEND", "WANDB_MODE")}
    # The kernel inherits these: inline figures become PNG outputs; no W&B run is started.
    os.environ.update(MPLBACKEND="module://matplotlib_inline.backend_inline", WANDB_MODE="disabled")
    try:
        client = nbclient.NotebookClient(nb, timeout=timeout, resources={"metadata": {"path": str(notebook.parent)}})
        client.execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    out.mkdir(parents=True, exist_ok=True)
    outputs = [output for cell in nb.cells for output in cell.get("outputs", [])]
    images = [output["data"]["image/png"] for output in outputs if "image/png" in output.get("data", {})]
    paths = []
    for n, data in enumerate(images, start=1):
        path = out / f"{notebook.stem}_{n}.png"
        path.write_bytes(base64.b64decode(data))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="assignments")
    args = parser.parse_args()
    for path in render(args.notebook.resolve(), args.out, args.assignments):
        print(path)


if __name__ == "__main__":
    main()
