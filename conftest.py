"""Root conftest: the tests run against this checkout.

pytest puts this folder on ``sys.path`` (``jhssl``, ``models``, ``tests``, ``benchmarks`` import from
here even when another copy is installed), and ``PYTHONPATH`` carries it to the ``run/*.py``
subprocesses the tests start. Jittor's info lines stay quiet (``models.env``) unless
``JHSSL_VERBOSE=1``.

Lanes (markers in pytest.ini): ``slow`` (end-to-end training runs) and ``mpi`` (``mpirun``).
The fast lane is ``-m "not slow and not mpi"``; CI runs everything.
"""
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
_paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
if ROOT not in _paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT] + _paths)
