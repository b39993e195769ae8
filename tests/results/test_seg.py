"""SEG: written, read back by highdicom, masks and metadata compared with the pipeline result."""

from __future__ import annotations

import dataclasses

import highdicom as hd
import numpy as np
import pytest
from result_sets import ResultSet, run_tool

from node.results import ResultInputError, ResultSettings, build_result_objects, codes
from node.results.seg import GGO_SEGMENT, LUNG_SEGMENT


def _pixels(seg: hd.seg.Segmentation, source_uid: str, segments: list[int]) -> np.ndarray:
    return seg.get_pixels_by_source_instance(source_sop_instance_uids=[source_uid], segment_numbers=segments,
                                             rescale_fractional=True)[0]


def test_binary_masks_round_trip_for_every_source(frontal_sets: dict[str, ResultSet]) -> None:
    for name, rs in frontal_sets.items():
        seg = hd.seg.segread(rs.paths["SEG"])
        assert seg.SegmentationType == "BINARY", name
        pixels = _pixels(seg, rs.result.sop_instance_uid, [LUNG_SEGMENT, GGO_SEGMENT])
        np.testing.assert_array_equal(pixels[..., 0].astype(bool), rs.result.lungs.mask, err_msg=name)
        np.testing.assert_array_equal(pixels[..., 1].astype(bool), rs.result.ggo.mask, err_msg=name)


def test_segment_descriptions_codes_and_algorithm(frontal_sets: dict[str, ResultSet]) -> None:
    rs = frontal_sets["orthanctests_Monochrome1-Jpeg_CR"]
    seg = hd.seg.segread(rs.paths["SEG"])
    lung, ggo = seg.get_segment_description(LUNG_SEGMENT), seg.get_segment_description(GGO_SEGMENT)
    assert (lung.segment_label, ggo.segment_label) == ("Lungs", "Ground glass opacity")
    assert lung.segmented_property_type == codes.LUNG
    assert lung.segmented_property_category == codes.ANATOMICAL_STRUCTURE
    assert ggo.segmented_property_type == codes.GROUND_GLASS_OPACITY
    assert ggo.segmented_property_category == codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE
    for desc, model in ((lung, rs.result.lungs.model), (ggo, rs.result.ggo.segmentation_model)):
        assert desc.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        algo = desc.algorithm_identification[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == (model.name, model.version)
        assert algo.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        assert desc.tracking_uid


def test_geometry_that_ohif_and_highdicom_need(frontal_sets: dict[str, ResultSet]) -> None:
    """IOP in the shared groups, Pixel Measures with the pipeline's spacing, top-level series refs."""
    for name, rs in frontal_sets.items():
        seg = rs.read("SEG")
        shared = seg.SharedFunctionalGroupsSequence[0]
        assert list(shared.PlaneOrientationSequence[0].ImageOrientationPatient) == [1, 0, 0, 0, 1, 0], name
        spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
        if rs.result.spacing is None:
            assert spacing == [1.0, 1.0], name  # nominal, documented
        else:
            assert spacing == pytest.approx([rs.result.spacing.row_mm, rs.result.spacing.column_mm]), name
        source = rs.source()
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        refs = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        assert refs[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
        assert seg.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"


def test_fractional_option_writes_the_probability_map(frontal_sets: dict[str, ResultSet], write_set) -> None:
    rs = frontal_sets["dx_mono1_rle_ips"]
    frac = write_set("frac", rs.source_path, rs.result, ResultSettings(fractional_ggo=True))
    seg = hd.seg.segread(frac.paths["SEG"])
    assert seg.SegmentationType == "FRACTIONAL"
    assert seg.SegmentationFractionalType == "PROBABILITY"
    pixels = _pixels(seg, rs.result.sop_instance_uid, [LUNG_SEGMENT, GGO_SEGMENT])
    np.testing.assert_array_equal(pixels[..., 0] > 0.5, rs.result.lungs.mask)
    # 8-bit quantisation of [0, 1] (MaximumFractionalValue 255): within half a step.
    np.testing.assert_allclose(pixels[..., 1], rs.result.ggo.probability_map, atol=0.5 / 255 + 1e-6)
    output = run_tool(["dciodvfy", "-new", str(frac.paths["SEG"])])
    assert not [ln for ln in output.splitlines() if ln.startswith("Error")], output


def test_without_ggo_stage_only_the_lung_segment(frontal_sets: dict[str, ResultSet], write_set) -> None:
    rs = frontal_sets["dx_mono2_raw_ps"]
    result = dataclasses.replace(rs.result, ggo=None,
                                 warnings=["ggo: skipped, lungs-only input needs a lung mask"])
    out = write_set("noggo", rs.source_path, result)
    seg = hd.seg.segread(out.paths["SEG"])
    assert [d.SegmentNumber for d in seg.SegmentSequence] == [LUNG_SEGMENT]


def test_mask_on_another_grid_is_refused(frontal_sets: dict[str, ResultSet]) -> None:
    rs = frontal_sets["dx_mono2_raw_ps"]
    lungs = dataclasses.replace(rs.result.lungs, mask=rs.result.lungs.mask[:-1])
    with pytest.raises(ResultInputError, match="lung mask shape"):
        build_result_objects(rs.source(), dataclasses.replace(rs.result, lungs=lungs))
