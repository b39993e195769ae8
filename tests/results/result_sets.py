"""Written result objects and the external validators, shared by the result-writer tests.

A module of its own (not conftest.py): test files import these names, and ``from conftest import``
picks whichever conftest was imported first when several test folders run in one pytest call.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from node.results import ResultSettings, build_result_objects
from pipelines.results import ChestResult

FIXED_NOW = datetime.datetime(2026, 11, 26, 9, 30, 15)

PIXELMED = ["java", "-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0",
            "-Djdk.xml.xpathTotalOpLimit=0", "-cp", "/usr/share/java/pixelmed.jar",
            "com.pixelmed.validate.DicomSRValidator"]


@dataclass
class ResultSet:
    """One source and the objects written for it (paths on disk and the pipeline result)."""

    name: str
    source_path: Path
    result: ChestResult
    paths: dict[str, Path]  # modality ("SEG", "SR", "OT") -> file

    def read(self, modality: str) -> pydicom.Dataset:
        return pydicom.dcmread(self.paths[modality])

    def source(self) -> pydicom.Dataset:
        return pydicom.dcmread(self.source_path)


def write_result_set(out: Path, name: str, source: pydicom.Dataset, source_path: Path, result: ChestResult,
               settings: ResultSettings | None = None) -> ResultSet:
    objects = build_result_objects(source, result, settings=settings, now=FIXED_NOW)
    paths = {}
    for obj in objects:
        path = out / f"{name}_{obj.Modality}.dcm"
        obj.save_as(path, enforce_file_format=True)
        paths[str(obj.Modality)] = path
    return ResultSet(name=name, source_path=source_path, result=result, paths=paths)



def run_tool(args: list[str], timeout: float = 120) -> str:
    """Run a validator and return stdout+stderr (they print findings on either)."""
    tool = shutil.which(args[0])
    if tool is None:
        pytest.fail(f"{args[0]} not installed (dicom3tools / pixelmed-apps, see .ci/run)")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    return proc.stdout + proc.stderr
