"""vidrec: a two-stage YouTube-DNN video recommender (candidate generation, then ranking).

The packages `vidrec.features`, `vidrec.candidate_gen`, `vidrec.ranking`, `vidrec.evaluation` and
`vidrec.pipelines` live in the repository's top-level folders of those names; the wheel installs
them under this one namespace. Importing `vidrec` is cheap: the public API below is loaded on
first use, so `vidrec --help` does not import torch.
"""

from __future__ import annotations

from pathlib import Path as _Path

__version__ = "0.1.0"

# In a source checkout the subpackages are the repository's top-level folders (the wheel maps them
# under vidrec/ with setuptools' package-dir); extending __path__ makes `vidrec.features` resolve to
# ./features there too, so a checkout on PYTHONPATH runs the code it holds.
_CHECKOUT = _Path(__file__).resolve().parent.parent
if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "features" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))  # type: ignore[name-defined]  # noqa: F821
