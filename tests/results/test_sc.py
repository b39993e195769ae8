"""Secondary capture: rendered overlay, burned-in text, attributes, geometry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless
from result_sets import ResultSet

from node.results import ResultSettings, build_result_objects
from pipelines.image import load_dicom
from pipelines.overlays import BANNER_RGB, GGO_RGB, LUNG_RGB, heat_colormap, render_overlay


def test_attributes_of_every_capture(frontal_sets: dict[str, ResultSet]) -> None:
    for name, rs in frontal_sets.items():
        sc = rs.read("OT")
        source = rs.source()
        assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7", name
        assert sc.BurnedInAnnotation == "YES" and sc.ConversionType == "WSD"
        assert sc.BodyPartExamined == (source.get("BodyPartExamined") or "CHEST")
        assert sc.SamplesPerPixel == 3 and sc.BitsAllocated == 8
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        pixels = sc.pixel_array
        scale = min(1.0, 2048 / max(source.Rows, source.Columns))  # default sc_max_side
        assert pixels.shape == (round(source.Rows * scale), round(source.Columns * scale), 3), name
        if rs.result.spacing is not None:
            assert [float(v) for v in sc.PixelSpacing] == pytest.approx(
                [rs.result.spacing.row_mm / scale, rs.result.spacing.column_mm / scale], rel=1e-6), name


def test_overlay_draws_boxes_contour_banner_and_heat(frontal_sets: dict[str, ResultSet]) -> None:
    rs = frontal_sets["txv_siim_ptx_CR_chest_PA"]  # 1024 x 1024: drawn on the source grid, scale 1
    pixels = rs.read("OT").pixel_array  # stored losslessly: exactly what was drawn
    box = rs.result.ggo.boxes[0]
    # the right edge of the first box, half-way down, is drawn in the GGO colour
    x, y = int(box.x1) - 1, int((box.y0 + box.y1) / 2)
    assert tuple(pixels[y, x]) == GGO_RGB
    # the lung contour colour appears, and (above the legend's swatch) only on the lung border
    contour = np.all(pixels == LUNG_RGB, axis=-1)
    contour[int(0.82 * contour.shape[0]):] = False
    assert contour.sum() > 100
    lungs = rs.result.lungs.mask
    assert lungs[contour].all()
    # the research-use banner is burned in at the top left, in its own colour
    top = pixels[: pixels.shape[0] // 20, : pixels.shape[1] // 2]
    assert np.all(top == BANNER_RGB, axis=-1).sum() > 50
    # where the heatmap is high the pixel is tinted red
    heat = rs.result.covid.heatmap
    yy, xx = np.unravel_index(np.argmax(heat), heat.shape)
    r, g, b = (int(v) for v in pixels[yy, xx])
    assert r > g + 30 and r > b + 30


def test_large_sources_are_downscaled_with_spacing(frontal_sets: dict[str, ResultSet], write_set) -> None:
    rs = frontal_sets["dx_mono2_raw_ps"]  # 320 x 256, PixelSpacing 0.5
    out = write_set("small_sc", rs.source_path, rs.result, ResultSettings(sc_max_side=160))
    sc = out.read("OT")
    assert (sc.Rows, sc.Columns) == (160, 128)
    assert [float(v) for v in sc.PixelSpacing] == pytest.approx([1.0, 1.0])


def test_render_without_covid_has_no_heat(frontal_sets: dict[str, ResultSet]) -> None:
    rs = frontal_sets["dx_mono2_raw_ps"]
    grey = np.full(rs.result.image_shape, 0.5, dtype=np.float32)
    pixels, scale = render_overlay(grey, dataclasses.replace(rs.result, covid=None), 4096)
    assert scale == 1.0
    heat_colours = {tuple(c) for c in heat_colormap(np.linspace(0.3, 1.0, 8))}
    found = {tuple(c) for c in pixels.reshape(-1, 3)}
    assert not (heat_colours & found)


def test_boxes_at_and_beyond_the_edges_are_drawn_where_they_fall(frontal_sets: dict[str, ResultSet]) -> None:
    """Text, boxes and the legend are drawn on the rectangles they cover: a box at the top edge (its
    score cannot go above it), one running off the right edge and one wholly outside."""
    rs = frontal_sets["dx_mono2_raw_ps"]  # 320 x 256
    grey = np.full(rs.result.image_shape, 0.5, dtype=np.float32)
    edge = dataclasses.replace(rs.result.ggo.boxes[0], x0=20.0, y0=0.0, x1=120.0, y1=60.0)
    off = dataclasses.replace(edge, x0=200.0, y0=150.0, x1=400.0, y1=250.0)
    outside = dataclasses.replace(edge, x0=300.0, y0=400.0, x1=350.0, y1=450.0)
    ggo = dataclasses.replace(rs.result.ggo, boxes=[edge, off, outside])
    pixels, _scale = render_overlay(grey, dataclasses.replace(rs.result, ggo=ggo), 4096)
    assert pixels.shape == (320, 256, 3)
    # the edge box's right side, where the text block (top left, drawn last) leaves it visible
    assert np.all(pixels[:60, 119] == GGO_RGB, axis=-1).sum() >= 5
    assert tuple(pixels[200, 200]) == GGO_RGB  # the clipped box's left side


def test_colormap_ends() -> None:
    assert tuple(heat_colormap(np.array([0.0]))[0]) == (0, 0, 255)
    assert tuple(heat_colormap(np.array([1.0]))[0]) == (255, 0, 0)


def test_default_and_other_storage_syntaxes_and_pipeline_image(frontal_sets: dict[str, ResultSet],
                                                               write_set) -> None:
    """The capture is stored natively (RGB) by default, the SEG in JPEG 2000; both can be native, the
    capture RLE or JPEG 2000 (YBR_RCT), with the same pixels; a given SourceImage is drawn as it is."""
    rs = frontal_sets["cr_mono2_raw_ips_utf8"]
    sc = rs.read("OT")
    assert sc.PhotometricInterpretation == "RGB" and sc.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert rs.read("SEG").file_meta.TransferSyntaxUID == JPEG2000Lossless
    native = ResultSettings(seg_transfer_syntax=ExplicitVRLittleEndian)
    out = write_set("native", rs.source_path, rs.result, native)
    seg = out.read("SEG")
    assert seg.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and seg.BitsAllocated == 1
    assert np.array_equal(seg.pixel_array, rs.read("SEG").pixel_array)
    for syntax, photometric in ((RLELossless, "RGB"), (JPEG2000Lossless, "YBR_RCT")):
        other = write_set(f"sc_{syntax.keyword}", rs.source_path, rs.result,
                          ResultSettings(sc_transfer_syntax=syntax)).read("OT")
        assert other.file_meta.TransferSyntaxUID == syntax and other.PhotometricInterpretation == photometric
        assert np.array_equal(other.pixel_array, out.read("OT").pixel_array)
    with pytest.raises(ValueError, match="sc_transfer_syntax"):
        ResultSettings(sc_transfer_syntax="1.2.840.10008.1.2.4.50")  # lossy JPEG: never for burned-in text
    source = rs.source()
    image = load_dicom(source)
    image.pixels = np.zeros_like(image.pixels)  # a black image: only the overlay is visible
    objects = build_result_objects(source, rs.result, image=image, settings=native)
    drawn = objects[2].pixel_array
    lungs_inside = rs.result.lungs.mask & (rs.result.covid.heatmap < 0.1)
    black = np.all(drawn[lungs_inside] == 0, axis=-1)
    assert black.mean() > 0.8  # only contour, boxes and labels are drawn there, no anatomy
