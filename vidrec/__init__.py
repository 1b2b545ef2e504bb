"""vidrec: a two-stage YouTube-DNN video recommender (candidate generation, then ranking).

    import vidrec

    data = vidrec.load_data("my_logs/")            # validated tables
    config = vidrec.Config.for_data("my_logs/")    # settings derived from the log
    report = vidrec.run(config, data="my_logs/", out="runs/mine")
    rec = vidrec.Recommender.load("runs/mine")
    rec.recommend(user_id, k=10)

The packages `vidrec.features`, `vidrec.common`, `vidrec.candidate_gen`, `vidrec.ranking`,
`vidrec.evaluation` and `vidrec.pipelines` live in the repository's top-level folders of those
names; the wheel installs them under this one namespace. Importing `vidrec` is cheap: the API
below is loaded on first use, so `vidrec --help` does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path as _Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# In a source checkout the subpackages are the repository's top-level folders (the wheel maps them
# under vidrec/ with setuptools' package-dir); extending __path__ makes `vidrec.features` resolve to
# ./features there too, so a checkout on PYTHONPATH runs the code it holds.
_CHECKOUT = _Path(__file__).resolve().parent.parent
if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "features" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))  # type: ignore[name-defined]  # noqa: F821

#: public name -> module that defines it
_API = {
    "Config": "vidrec.pipelines.config",
    "ConfigError": "vidrec.pipelines.config",
    "load_data": "vidrec.pipelines.api",
    "run": "vidrec.pipelines.api",
    "fit_candidate_generator": "vidrec.pipelines.api",
    "Recommender": "vidrec.pipelines.serve",
    "DataContractError": "vidrec.features.schema",
}
__all__ = [
    "Config",
    "ConfigError",
    "DataContractError",
    "Recommender",
    "__version__",
    "fit_candidate_generator",
    "load_data",
    "run",
]

if TYPE_CHECKING:
    from vidrec.features.schema import DataContractError
    from vidrec.pipelines.api import fit_candidate_generator, load_data, run
    from vidrec.pipelines.config import Config, ConfigError
    from vidrec.pipelines.serve import Recommender


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vidrec' has no attribute {name!r}")
