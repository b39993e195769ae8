"""Optional Key Object Selection document: selects the source and every result object."""

from __future__ import annotations

import highdicom as hd
from result_sets import ResultSet, run_tool

from node.results import ResultSettings
from node.results.kos import OF_INTEREST


def test_kos_selects_source_and_results(frontal_sets: dict[str, ResultSet],
                                        lateral_sets: dict[str, ResultSet], write_set) -> None:
    settings = ResultSettings(key_object_selection=True)
    for label, rs in (("kos_frontal", frontal_sets["dx_mono1_rle_ips"]),
                      ("kos_lateral", lateral_sets["dx_mono1_rle_ips"])):
        out = write_set(label, rs.source_path, rs.result, settings)
        assert list(out.paths)[-1] == "KO"
        kos = hd.ko.KeyObjectSelectionDocument.from_dataset(out.read("KO"))
        assert kos.SeriesNumber == 9104
        assert kos.ConceptNameCodeSequence[0].CodeValue == OF_INTEREST.value
        selected = {ref.ReferencedSOPInstanceUID for item in kos.ContentSequence
                    if "ReferencedSOPSequence" in item for ref in item.ReferencedSOPSequence}
        expected = {rs.result.sop_instance_uid} | {out.read(m).SOPInstanceUID for m in out.paths if m != "KO"}
        assert selected == expected, label
        errors = [ln for ln in run_tool(["dciodvfy", "-new", str(out.paths["KO"])]).splitlines()
                  if ln.startswith("Error")]
        assert not errors, (label, errors)
