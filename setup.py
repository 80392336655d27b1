import re

from setuptools import setup

with open("rawfetch/__init__.py", encoding="utf-8") as init:   # one version: __version__
    VERSION = re.search(r'^__version__ = "([^"]+)"', init.read(), re.M).group(1)
PLOT = ["matplotlib"]   # rawfetch-timeline only; rawfetch itself needs nothing

setup(
    name="rawfetch",
    version=VERSION,
    description="Zero-dependency HTTP/1.1 downloader: byte-exact or a clear error within "
                "the bounds you set",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=["rawfetch", "rawfetch.compat", "rawfetch.metalink"],
    python_requires=">=3.8",
    install_requires=[],
    # matplotlib is in `test` too, so the README's one test command also runs the
    # timeline picture test instead of skipping it.
    extras_require={"test": ["pytest", "pytest-timeout", "trustme"] + PLOT, "plot": PLOT},
    entry_points={"console_scripts": ["rawfetch = rawfetch.cli:main",
                                      "rawfetch-timeline = rawfetch.timeline:main"]},
    license="Apache-2.0",
    classifiers=["Programming Language :: Python :: 3 :: Only",
                 "Topic :: Internet :: WWW/HTTP"],
)
