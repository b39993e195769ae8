"""Fixtures of the result-writer tests: sources, hand-built pipeline results, written objects.

Everything heavy is built once per session: each source (real samples + synthetic DX/CR) gets a
frontal result set (SEG, SR, SC) and a lateral one (SR), written to a session temp folder and
read back from disk by the tests (write-read-compare).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from factories import SPECS, make_result, make_source  # noqa: E402
from result_sets import ResultSet, write_result_set  # noqa: E402

from node.results import ResultSettings  # noqa: E402
from pipelines.results import ChestResult, Projection  # noqa: E402

# The real CR/DX chest samples (see ../shared/data/README.md); the dog DX is a bad-input case.
REAL_SAMPLES = [
    "pydicomdata_RG1_J2KI_CR_chest.dcm",  # CR, JPEG 2000, MONOCHROME1, PixelSpacing 0\0 (invalid)
    "orthanctests_Monochrome1-Jpeg_CR.dcm",  # CR, JPEG baseline, MONOCHROME1, ISO_IR 192
    "nhsx_nih_cxr_dx_sc.dcm",  # Secondary Capture, modality DX, no Type 2 study attributes
    "txv_siim_ptx_CR_chest_PA.dcm",  # Secondary Capture CR, JPEG baseline, invalid Patient Age
]
@pytest.fixture(scope="session")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="session")
def sources(results_dir: Path, dicom_samples: Path) -> dict[str, Path]:
    """Source files by name: the real samples (as they are) and the synthetic DX/CR variants."""
    found: dict[str, Path] = {}
    for name in REAL_SAMPLES:
        path = dicom_samples / name
        if not path.is_file():
            pytest.fail(f"real sample missing: {path}")
        found[Path(name).stem] = path
    for spec in SPECS:
        path = results_dir / f"src_{spec.name}.dcm"
        make_source(spec).save_as(path, enforce_file_format=True)
        found[spec.name] = path
    return found


@pytest.fixture(scope="session")
def frontal_sets(sources: dict[str, Path], results_dir: Path) -> dict[str, ResultSet]:
    sets = {}
    for name, path in sources.items():
        ds = pydicom.dcmread(path)
        sets[name] = write_result_set(results_dir, f"{name}_frontal", ds, path, make_result(ds))
    return sets


@pytest.fixture(scope="session")
def lateral_sets(sources: dict[str, Path], results_dir: Path) -> dict[str, ResultSet]:
    sets = {}
    for name, path in sources.items():
        ds = pydicom.dcmread(path)
        sets[name] = write_result_set(results_dir, f"{name}_lateral", ds, path,
                                make_result(ds, projection=Projection.LATERAL))
    return sets


@pytest.fixture(scope="session")
def write_set(results_dir: Path):
    """Build and write one extra set (custom result or settings) for a test."""
    def _write(name: str, source_path: Path, result: ChestResult,
               settings: ResultSettings | None = None) -> ResultSet:
        source = pydicom.dcmread(source_path)
        return write_result_set(results_dir, name, source, source_path, result, settings)
    return _write
