"""Shared pytest fixtures: small synthetic NTIRE data written with the project's own writers."""

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from hdr_jax import cli, fileio

# The entry points' CPU XLA flags (YNN fusions off), set before JAX starts its backend: in-process tests
# and the entry points they start compute with the same flags as a user's `python -m hdr_jax.train`.
cli.set_cpu_xla_flags()

REPO_ROOT = Path(__file__).resolve().parents[1]
# The six real HDR photographs lie beside the repository (never inside it): ../shared/data/hdr.
SHARED_HDR = REPO_ROOT.parent / "shared" / "data" / "hdr"
# One persistent XLA compilation cache per test process (each xdist worker has its own, so no two
# processes of different tests write one entry at once), shared by the entry points that tests start:
# the tiny configs' train steps compile once per worker instead of once per test. Removed at the end.
XLA_CACHE_DIR = Path(tempfile.mkdtemp(prefix="hdr_jax_tests_xla_"))


def cli_env(**extra) -> dict:
  """The environment of an entry point that a test starts: CPU only, the repository importable, the
  shared compilation cache; ``extra`` adds or overrides variables."""
  return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu",
          "JAX_COMPILATION_CACHE_DIR": str(XLA_CACHE_DIR), "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
          **extra}


def pytest_unconfigure(config):
  shutil.rmtree(XLA_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_hdr_files():
  """The shared real radiance maps (``../shared/data/hdr/*.exr`` from the repository root), sorted by
  name. Where they are missing the test is skipped with that reason, which CI refuses (.ci/run)."""
  files = sorted(SHARED_HDR.glob("*.exr"))
  if not files:
    pytest.skip(f"no .exr photographs in {SHARED_HDR} (the shared data beside the repository)")
  return files


@pytest.fixture
def tiny_scene_dir(tmp_path):
  """A folder with 3 complete NTIRE scenes (ids 0000-0002, 24x32, exposures [-2, 0, 2]): random
  uint8 frames and a random gamma-domain target in [0, 1.6] (16-bit PNG + alignratio)."""
  folder = tmp_path / "scenes"
  rng = np.random.default_rng(1234)
  for sid in ("0000", "0001", "0002"):
    frames = rng.integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)
    gt = rng.uniform(0.0, 1.6, (24, 32, 3)).astype(np.float32)
    fileio.write_scene(folder, sid, frames, [-2.0, 0.0, 2.0], gt)
  return folder


# --------------------------------------------------------------------------------------------------
# CI's skip policy: `--strict-skips` (used by .ci/run) fails the run when a test skips for a reason
# that is not on this short allow-list. Everything CI needs is installed there, so any other skip
# means a test silently did not run.
# --------------------------------------------------------------------------------------------------

ALLOWED_SKIPS = ("needs a GPU", "needs a TPU")
_disallowed_skips: list[str] = []


def pytest_addoption(parser):
  parser.addoption("--strict-skips", action="store_true",
                   help=f"fail the run when a test skips for a reason not containing one of {ALLOWED_SKIPS}")


def pytest_runtest_logreport(report):
  if report.skipped and not hasattr(report, "wasxfail"):
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not any(a in reason for a in ALLOWED_SKIPS):
      _disallowed_skips.append(f"{report.nodeid}: {reason}")


pytest_collectreport = pytest_runtest_logreport  # a whole module skipped at import counts too


def pytest_sessionfinish(session, exitstatus):
  # The controller (or the only process) decides; pytest-xdist workers forward their reports to it.
  if session.config.getoption("--strict-skips") and _disallowed_skips and not hasattr(session.config, "workerinput"):
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
  if config.getoption("--strict-skips") and _disallowed_skips:
    terminalreporter.section("skips that CI does not allow", sep="=", red=True, bold=True)
    for line in _disallowed_skips:
      terminalreporter.line(line)
    terminalreporter.line(f"{len(_disallowed_skips)} test(s) skipped; allowed reasons: {ALLOWED_SKIPS}")
