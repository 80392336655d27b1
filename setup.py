from setuptools import setup

setup(
    name="rawfetch",
    version="0.1.0",
    description="Zero-dependency HTTP/1.1 downloader: byte-exact or a clear error within "
                "the bounds you set",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=["rawfetch"],
    python_requires=">=3.8",
    install_requires=[],
    extras_require={"test": ["pytest", "pytest-timeout", "trustme"]},
    entry_points={"console_scripts": ["rawfetch = rawfetch.cli:main"]},
    license="Apache-2.0",
    classifiers=["Programming Language :: Python :: 3 :: Only",
                 "Topic :: Internet :: WWW/HTTP"],
)
