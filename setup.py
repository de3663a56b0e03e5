import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
__version__ = re.search(
    r'__version__ = "([^"]+)"', (HERE / "socketproxyd" / "__init__.py").read_text()
).group(1)

setup(
    name="socketproxyd",
    version=__version__,
    description="Socket-activated stream proxy on Twisted, a drop-in for systemd-socket-proxyd",
    long_description=(HERE / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests*", "benchmarks*"]) + ["twisted.plugins"],
    install_requires=["twisted>=26.10,<27", "prometheus_client>=0.26,<0.27"],
    extras_require={
        "test": [
            "pytest",
            "pytest-twisted",
            "hypothesis",
            "ruff",
            "mypy>=2.4,<2.5",
            "mypy-zope>=1.0.17,<1.1",
        ]
    },
    scripts=["scripts/socketproxyd"],
    data_files=[("share/man/man8", ["man/socketproxyd.8"])],
    classifiers=[
        "Framework :: Twisted",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
    ],
)
