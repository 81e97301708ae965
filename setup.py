"""Installation of the smapd suite: `pip install .`"""

import glob
import os
import re

from setuptools import find_packages, setup

with open(os.path.join("lib", "smapd", "__init__.py"), encoding="utf-8") as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

setup(
    name="smapd-suite",
    version=VERSION,
    description="smap, smapd and ssl-gw: chrooted SMTP and TLS proxies in the FWTK tradition",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="BSD-2-Clause",
    python_requires=">=3.9",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    scripts=sorted(glob.glob("bin/*")),
    data_files=[
        ("share/man/man5", sorted(glob.glob("man/man5/*.5"))),
        ("share/man/man8", sorted(glob.glob("man/man8/*.8"))),
    ],
    install_requires=[
        "python-daemon",
        "setproctitle",
        "pyopenssl",
        "dnspython",
    ],
    classifiers=[
        "Environment :: No Input/Output (Daemon)",
        "Operating System :: POSIX",
        "Topic :: Communications :: Email :: Mail Transport Agents",
        "Topic :: System :: Networking :: Firewalls",
    ],
)
