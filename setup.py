"""Package layout that setup.cfg cannot express: every subpackage of `wmg` found
automatically, plus two top-level folders shipped inside the package
(`migrations/` as `wmg._migrations`, the bundled dataset `data/` as `wmg._data`).
Metadata, dependencies and extras live in setup.cfg."""
from setuptools import find_packages, setup

MAPPED = {"wmg._migrations": "migrations", "wmg._migrations.versions": "migrations/versions", "wmg._data": "data"}

setup(
    packages=find_packages(include=["wmg", "wmg.*"]) + list(MAPPED),
    package_dir={"wmg._migrations": "migrations", "wmg._data": "data"},
)
