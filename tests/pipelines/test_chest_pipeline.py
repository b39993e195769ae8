"""The chained pipeline end to end with tiny random bundles on real images (plumbing, not accuracy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.image import load_image
from pipelines.results import Projection

REQUIRED_JSON_KEYS = {
    "source", "sop_instance_uid", "projection", "projection_probability", "analysed", "covid_probability",
    "covid_positive", "lung_area_px", "lung_area_mm2", "ggo_extent_percent", "ggo_boxes", "models",
    "timings_ms", "outputs",
}


def test_frontal_dicom_end_to_end(pipeline, chest_dicom: Path) -> None:  # type: ignore[no-untyped-def]
    image = load_image(chest_dicom)
    result = pipeline.analyze(image)
    h, w = image.shape
    assert result.analysed and result.projection.projection is Projection.FRONTAL
    assert result.lungs.mask.shape == (h, w) and result.lungs.mask.dtype == bool
    assert result.lungs.area_px == int(result.lungs.mask.sum()) > 0
    assert result.lungs.area_mm2 == pytest.approx(result.lungs.area_px * 0.168 * 0.168)
    assert result.covid.heatmap.shape == (h, w)
    assert 0.0 <= result.covid.heatmap.min() and result.covid.heatmap.max() <= 1.0
    assert 0.0 <= result.covid.probability <= 1.0
    assert result.covid.positive == (result.covid.probability >= result.covid.threshold)
    assert result.covid.input_mode == "lungs_only"
    assert result.ggo.mask.shape == (h, w) and result.ggo.probability_map.shape == (h, w)
    inside = np.logical_and(result.ggo.mask, result.lungs.mask).sum()
    assert result.ggo.extent_percent == pytest.approx(100.0 * inside / result.lungs.area_px)
    for box in result.ggo.boxes:
        assert 0 <= box.x0 < box.x1 <= w and 0 <= box.y0 < box.y1 <= h and 0 <= box.confidence <= 1
    assert set(result.timings_ms) == {"projection", "lungs", "covid", "ggo_detection", "ggo_segmentation",
                                      "total"}
    record = json.loads(json.dumps(result.to_json(outputs=["x.dcm"])))
    assert REQUIRED_JSON_KEYS <= set(record)
    assert record["sop_instance_uid"] == image.sop_instance_uid
    assert set(record["models"]) == {"random-projection", "random-lungs", "random-covid",
                                     "random-ggo-detection", "random-ggo-segmentation"}
    assert record["model_cautions"] == {}  # random bundles name no failure mode


def test_batch_equals_one_by_one(pipeline, chest_dicom: Path, chest_png: Path) -> None:  # type: ignore[no-untyped-def]
    images = [load_image(chest_png), load_image(chest_dicom), load_image(chest_png)]
    batch = pipeline.analyze_batch(images)
    assert [r.source for r in batch] == [str(chest_png), str(chest_dicom), str(chest_png)]
    for image, together in zip(images, batch, strict=True):
        alone = pipeline.analyze(image)
        assert together.covid.probability == pytest.approx(alone.covid.probability, abs=1e-5)
        assert np.array_equal(together.lungs.mask, alone.lungs.mask)
        np.testing.assert_allclose(together.covid.heatmap, alone.covid.heatmap, atol=1e-4)
        assert len(together.ggo.boxes) == len(alone.ggo.boxes)
    assert batch[0].lungs.area_mm2 is None and batch[0].lungs.spacing_source is None  # PNG: no spacing


def test_lateral_stops_the_chain(tmp_path: Path, state_dir: Path, chest_png: Path) -> None:
    from pipelines.chest import LATERAL_REASON, ChestPipeline
    from pipelines.testing import write_random_bundles

    write_random_bundles(tmp_path, seed=1, lateral=True, state_dir=state_dir)
    lateral = ChestPipeline.from_models_dir(tmp_path, device="cpu", state_dir=state_dir)
    result = lateral.analyze(load_image(chest_png))
    assert result.projection.projection is Projection.LATERAL and result.projection.probability > 0.5
    assert not result.analysed and result.not_analysed_reason == LATERAL_REASON
    assert result.lungs is None and result.covid is None and result.ggo is None
    assert set(result.timings_ms) == {"projection", "total"}
    record = result.to_json()
    assert record["projection"] == "lateral" and record["covid_probability"] is None


def test_empty_lung_mask_skips_lungs_only_stages_with_a_warning(pipeline, chest_png: Path) -> None:  # type: ignore[no-untyped-def]
    from pipelines.chest import ChestPipeline
    from pipelines.tasks.lungs import LungSegmenter

    no_lungs = LungSegmenter(pipeline.lungs.bundle)
    no_lungs.threshold = 1.01  # no probability reaches it: an empty mask, as on a film without lungs
    variant = ChestPipeline(pipeline.projection, no_lungs, pipeline.covid, pipeline.ggo_detection,
                            pipeline.ggo_segmentation, device="cpu")
    result = variant.analyze(load_image(chest_png))
    assert result.analysed and result.lungs.area_px == 0
    assert result.covid is None
    assert any(w.startswith("covid: skipped") for w in result.warnings)
    assert result.ggo is not None and result.ggo.extent_percent is None  # whole-image GGO model still ran


def test_vgg_grad_cam_targets_are_the_last_relu() -> None:
    import torch

    from pipelines import networks

    for architecture in ("vgg16", "vgg19", "vgg16_bn", "vgg19_bn"):
        net = networks.build_network(architecture, width=4)
        relus = [name for name, m in net.named_modules() if isinstance(m, torch.nn.ReLU)]
        assert networks.DEFAULT_TARGET_LAYERS[architecture] == relus[-1], architecture
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == architecture.endswith("_bn")


@pytest.mark.parametrize("architecture", ["vgg19", "vgg16_bn", "densenet121", "resnet18"])
def test_covid_backbones_and_gradcam_on_the_source_grid(tmp_path: Path, architecture: str) -> None:
    import torch

    from pipelines import networks
    from pipelines.bundle import BundleMetadata, load_bundle, save_bundle
    from pipelines.preprocess import InputSpec
    from pipelines.results import SourceImage
    from pipelines.tasks.covid import CovidClassifier

    kwargs = {"width": 4} if architecture != "densenet121" else {}
    torch.manual_seed(0)
    net = networks.build_network(architecture, **kwargs)
    metadata = BundleMetadata(
        name=f"covid-{architecture}", version="1", task="covid", architecture=architecture,
        network_def=networks.network_def(architecture, **kwargs), input=InputSpec(size=64),
        labels=["negative", "covid19"], operating_threshold=0.3,
        target_layer=networks.DEFAULT_TARGET_LAYERS[architecture])
    bundle = load_bundle(save_bundle(tmp_path / "b", metadata, net.state_dict(), "# c"), "covid")
    classifier = CovidClassifier(bundle)
    rng = np.random.default_rng(0)
    images = [SourceImage(pixels=rng.uniform(0, 1, (90, 130)).astype(np.float32), path=f"img{i}")
              for i in range(2)]
    results = classifier.predict(images, [None, None])
    with torch.inference_mode():  # the probability from the Grad-CAM pass is the plain forward's
        from pipelines.preprocess import prepare_input
        from pipelines.runtime import positive_probability

        x = torch.from_numpy(np.stack([prepare_input(im.pixels, metadata.input).array for im in images]))
        expected = positive_probability(bundle.network(x)).tolist()
    for result, p in zip(results, expected, strict=True):
        assert result.probability == pytest.approx(p, abs=1e-5)
        assert result.positive == (p >= 0.3) and result.threshold == 0.3
        assert result.heatmap.shape == (90, 130) and result.heatmap.dtype == np.float32
        assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0
        assert result.input_mode == "whole_image"


def test_lung_postprocessing_keeps_two_largest_and_fills_holes() -> None:
    from pipelines.tasks.lungs import postprocess_lung_mask

    mask = np.zeros((100, 100), dtype=bool)
    mask[10:90, 10:40] = True  # right lung
    mask[10:90, 60:90] = True  # left lung
    mask[40:50, 20:30] = False  # a vessel called background: a hole
    mask[2:5, 95:98] = True  # a speck
    clean = postprocess_lung_mask(mask)
    assert clean[45, 25] and not clean[3, 96]
    assert clean.sum() == 2 * 80 * 30


def test_ggo_extent_counts_only_inside_the_lungs() -> None:
    from pipelines.tasks.ggo import ggo_extent_percent

    lungs = np.zeros((10, 10), dtype=bool)
    lungs[:, :5] = True
    ggo = np.zeros_like(lungs)
    ggo[:2, :] = True  # 10 px inside the lungs, 10 outside
    assert ggo_extent_percent(ggo, lungs) == pytest.approx(20.0)
    assert ggo_extent_percent(ggo, np.zeros_like(lungs)) is None


def test_device_resolution() -> None:
    import torch

    from pipelines.errors import PipelineError
    from pipelines.runtime import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(PipelineError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="CUDA is not available"):
            resolve_device("cuda")


def test_gradcam_heatmap_lands_on_the_evidence_in_source_pixels(tmp_path: Path) -> None:
    """A network whose logit is the sum of its (ReLU'd) input: Grad-CAM must light up the bright patch.

    The patch sits off-centre in a non-square image and the input is lungs-only (cropped), so the
    heatmap only lands on it if letterbox, crop, Grad-CAM upsampling and the inverse all agree.
    """
    import torch
    from torch import nn

    from pipelines.bundle import BundleMetadata, LoadedBundle
    from pipelines.preprocess import InputSpec
    from pipelines.results import SourceImage
    from pipelines.tasks.covid import CovidClassifier

    class SumOfEvidence(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 1, kernel_size=1), nn.ReLU())
            with torch.no_grad():
                self.features[0].weight.fill_(1.0)
                self.features[0].bias.fill_(0.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.features(x).sum(dim=(2, 3)) / 100.0 - 5.0

    h, w = 300, 500
    pixels = np.full((h, w), 0.3, dtype=np.float32)
    pixels[100:140, 350:400] = 0.9  # the evidence
    lungs = np.zeros((h, w), dtype=bool)
    lungs[60:260, 220:460] = True
    metadata = BundleMetadata(
        name="sum", version="1", task="covid", architecture="custom",
        network_def={"_target_": "pipelines.networks.vgg"}, input=InputSpec(size=64, mode="lungs_only"),
        labels=["negative", "covid19"], target_layer="features.1")
    bundle = LoadedBundle(path=tmp_path, metadata=metadata, network=SumOfEvidence().eval(), device="cpu")
    result = CovidClassifier(bundle).predict([SourceImage(pixels=pixels, path="synthetic")], [lungs])[0]
    heat = result.heatmap
    assert heat.shape == (h, w)
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert 100 <= peak[0] < 140 and 350 <= peak[1] < 400
    yy, xx = np.mgrid[0:h, 0:w]
    centre = ((heat * yy).sum() / heat.sum(), (heat * xx).sum() / heat.sum())
    assert centre == pytest.approx((119.5, 374.5), abs=3.0)
    assert heat[~lungs].max() < 0.05  # nothing outside the lungs-only crop (and the lungs)


def test_ensemble_bundle_averages_member_probabilities_and_heatmaps(tmp_path: Path) -> None:
    """A mean_ensemble bundle: built from network_def, P = mean of the members' P, one Grad-CAM each."""
    import torch

    from pipelines import networks
    from pipelines.bundle import BundleMetadata, load_bundle, save_bundle
    from pipelines.preprocess import InputSpec, prepare_input
    from pipelines.results import SourceImage
    from pipelines.runtime import positive_probability
    from pipelines.tasks.covid import CovidClassifier

    torch.manual_seed(0)
    members = [networks.build_network("resnet18", width=4) for _ in range(3)]
    for i, m in enumerate(members):  # spread the members so that their mean differs from each one
        with torch.no_grad():
            m.fc.bias.fill_(float(i) - 1.0)
    ensemble = networks.MeanEnsemble(members)
    member_def = networks.network_def("resnet18", width=4)
    metadata = BundleMetadata(
        name="covid-ensemble", version="1", task="covid", architecture="resnet18",
        network_def={"_target_": "pipelines.networks.mean_ensemble", "members": [member_def] * 3},
        input=InputSpec(size=64), labels=["negative", "covid19"], operating_threshold=0.5,
        target_layer="layer4")
    bundle = load_bundle(save_bundle(tmp_path / "b", metadata, ensemble.state_dict(), "# c"), "covid")
    assert isinstance(bundle.network, networks.MeanEnsemble) and len(bundle.network.members) == 3
    rng = np.random.default_rng(1)
    images = [SourceImage(pixels=rng.uniform(0, 1, (80, 100)).astype(np.float32), path=f"i{i}")
              for i in range(2)]
    results = CovidClassifier(bundle).predict(images, [None, None])
    x = torch.from_numpy(np.stack([prepare_input(im.pixels, metadata.input).array for im in images]))
    with torch.inference_mode():
        member_p = torch.stack([positive_probability(m(x)) for m in bundle.network.members])
        whole_p = positive_probability(bundle.network(x))
    assert torch.allclose(whole_p, member_p.mean(dim=0), atol=1e-5)
    assert not torch.allclose(member_p[0], member_p[2], atol=1e-3)
    for result, p in zip(results, member_p.mean(dim=0).tolist(), strict=True):
        assert result.probability == pytest.approx(p, abs=1e-5)
        assert result.heatmap.shape == (80, 100)
        assert 0.0 <= result.heatmap.min() and result.heatmap.max() <= 1.0
        assert result.heatmap.max() > 0.0


def test_ensemble_of_two_logit_members_averages_softmax() -> None:
    import torch

    from pipelines.networks import MeanEnsemble
    from pipelines.runtime import positive_probability

    a = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    expected = (torch.softmax(a, 1)[:, 1] + torch.softmax(b, 1)[:, 1]) / 2
    assert torch.allclose(positive_probability(MeanEnsemble.combine([a, b])), expected, atol=1e-6)


def test_ensemble_of_segmenters_averages_each_pixel() -> None:
    """(B, 1, H, W) logits: the mean is per pixel, not over a spatial axis."""
    import torch

    from pipelines.networks import MeanEnsemble
    from pipelines.runtime import foreground_probability

    a = torch.tensor([[[[0.0, 2.0, -3.0], [1.0, -1.0, 0.5]]]])
    b = torch.tensor([[[[4.0, -2.0, -1.0], [0.0, 3.0, 0.5]]]])
    combined = MeanEnsemble.combine([a, b])
    assert combined.shape == a.shape
    expected = (torch.sigmoid(a) + torch.sigmoid(b)) / 2
    assert torch.allclose(foreground_probability(combined), expected[:, 0], atol=1e-6)


def test_covid_bundle_cuts_its_input_with_the_lung_model_it_carries(
    tmp_path: Path, state_dir: Path, chest_png: Path, random_models: Path
) -> None:
    """models/<covid>/input_lungs, when present, replaces the pipeline's lung mask for the COVID input."""
    import shutil

    import torch

    from pipelines.bundle import BundleError, load_bundle, read_metadata, save_bundle
    from pipelines.chest import ChestPipeline

    models = tmp_path / "models"
    shutil.copytree(random_models, models)
    image = load_image(chest_png)
    plain = ChestPipeline.from_models_dir(models, device="cpu", state_dir=state_dir).analyze(image)
    assert plain.covid is not None and plain.lungs.area_px > 0

    # The same lung model inside the covid bundle: the same input, the same score.
    shutil.copytree(models / "random-lungs", models / "random-covid" / "input_lungs")
    same = ChestPipeline.from_models_dir(models, device="cpu", state_dir=state_dir)
    assert same.covid.input_lungs is not None
    assert same.analyze(image).covid.probability == pytest.approx(plain.covid.probability, abs=1e-6)

    # A carried lung model that finds no lungs: COVID is skipped although the pipeline's lungs are there.
    lungs_dir = models / "random-covid" / "input_lungs"
    meta = read_metadata(lungs_dir)
    state = torch.load(lungs_dir / "models" / "model.pt", weights_only=True)
    last_bias = [k for k in state if k.endswith("bias")][-1]
    state[last_bias] = torch.full_like(state[last_bias], -50.0)
    save_bundle(lungs_dir, meta, state, "# lungs that never fire")
    own = ChestPipeline.from_models_dir(models, device="cpu", state_dir=state_dir).analyze(image)
    assert own.lungs.area_px == plain.lungs.area_px > 0  # the reported lung mask is the pipeline's
    assert own.covid is None and any(w.startswith("covid: skipped") for w in own.warnings)

    # The carried bundle's weights are sha256-checked like any bundle's.
    (lungs_dir / "models" / "model.pt").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(models / "random-covid", "covid")


def _with_view_position(path: Path, view: str | None):  # type: ignore[no-untyped-def]
    import pydicom

    from pipelines.image import load_dicom

    ds = pydicom.dcmread(path)
    if view is None:
        del ds.ViewPosition
    else:
        ds.ViewPosition = view
    return load_dicom(ds)


@pytest.mark.parametrize(("view", "analysed"), [("PA", True), ("AP", True), (None, True), ("RLD", True),
                                                ("LL", False), ("RL", False), ("LATERAL", False)])
def test_a_lateral_view_position_stops_a_frontal_call(pipeline, chest_dicom: Path, view: str | None,  # type: ignore[no-untyped-def]
                                                      analysed: bool) -> None:
    result = pipeline.analyze(_with_view_position(chest_dicom, view))
    assert result.projection.projection is Projection.FRONTAL  # the model's call is kept as it was
    assert result.projection.view_position == (view.upper() if view else None)
    assert result.to_json()["view_position"] == result.projection.view_position
    assert result.analysed is analysed
    header_warnings = [w for w in result.warnings if w.startswith("projection:")]
    if analysed:
        assert result.not_analysed_reason is None and result.covid is not None and not header_warnings
    else:
        assert result.not_analysed_reason.startswith(f"lateral projection by the DICOM header (View Position "
                                                     f"{view.upper()})")
        assert result.lungs is None and result.covid is None and result.ggo is None
        assert header_warnings == [f"projection: the DICOM View Position {view.upper()} says lateral, the "
                                   f"projection model frontal (P={result.projection.probability:.2f}); "
                                   "not analysed"]


def test_view_position_check_off_lets_the_model_decide(pipeline, chest_dicom: Path) -> None:  # type: ignore[no-untyped-def]
    from pipelines.chest import ChestPipeline

    model_only = ChestPipeline(pipeline.projection, pipeline.lungs, pipeline.covid, pipeline.ggo_detection,
                               pipeline.ggo_segmentation, device="cpu", use_view_position=False)
    result = model_only.analyze(_with_view_position(chest_dicom, "LL"))
    assert result.analysed and result.covid is not None
    assert any(w.endswith("the model's call was used (View Position check off)") for w in result.warnings)


def test_a_frontal_view_position_does_not_restart_a_lateral_call(tmp_path: Path, state_dir: Path,
                                                                 chest_dicom: Path) -> None:
    from pipelines.chest import LATERAL_REASON, ChestPipeline
    from pipelines.testing import write_random_bundles

    write_random_bundles(tmp_path, seed=1, lateral=True, state_dir=state_dir)
    lateral = ChestPipeline.from_models_dir(tmp_path, device="cpu", state_dir=state_dir)
    result = lateral.analyze(_with_view_position(chest_dicom, "PA"))
    assert not result.analysed and result.not_analysed_reason == LATERAL_REASON
    assert [w for w in result.warnings if w.startswith("projection:")] == [
        f"projection: the DICOM View Position PA says frontal, the projection model lateral "
        f"(P={result.projection.probability:.2f}); not analysed"]


@pytest.mark.parametrize(("part", "analysed"), [("CHEST", True), ("PORT CHEST", True), ("TORACE", True),
                                                ("", True), ("HAND", False), ("KNEE", False),
                                                ("LOWER  LEG", False)])
def test_a_body_part_without_lungs_is_not_analysed(pipeline, chest_dicom: Path, part: str,  # type: ignore[no-untyped-def]
                                                   analysed: bool) -> None:
    import pydicom

    from pipelines.chest import BODY_PART_REASON, ChestPipeline
    from pipelines.image import load_dicom

    ds = pydicom.dcmread(chest_dicom)
    ds.BodyPartExamined = part
    result = pipeline.analyze(load_dicom(ds))
    assert result.analysed is analysed
    if not analysed:
        assert result.not_analysed_reason == BODY_PART_REASON.format(part=" ".join(part.split()))
        assert result.lungs is None and result.covid is None and result.ggo is None
        unchecked = ChestPipeline(pipeline.projection, pipeline.lungs, pipeline.covid, pipeline.ggo_detection,
                                  pipeline.ggo_segmentation, device="cpu", use_body_part=False)
        assert unchecked.analyze(load_dicom(ds)).analysed


@pytest.mark.parametrize(("shape", "fit"), [((2048, 2500), True), ((512, 476), True), ((128, 384), True),
                                            ((127, 200), False), ((32, 32), False), ((100, 2048), False),
                                            ((1000, 3001), False)])
def test_only_a_chest_film_shape_is_analysed(shape: tuple[int, int], fit: bool) -> None:
    from pipelines.chest import unfit_geometry

    reason = unfit_geometry(shape)
    assert (reason is None) is fit
    if not fit:
        assert reason.startswith(f"image {shape[0]}x{shape[1]} px is not the shape of a chest radiograph")


def test_a_thumbnail_is_not_analysed(pipeline, chest_png: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    thumb = tmp_path / "thumb.png"
    Image.open(chest_png).resize((96, 96)).save(thumb)
    result = pipeline.analyze(load_image(thumb))
    assert not result.analysed and result.lungs is None and result.covid is None and result.ggo is None
    assert result.not_analysed_reason.startswith("image 96x96 px is not the shape of a chest radiograph")


FREEZE_PROBE = """
import gc, weakref
from pipelines.runtime import freeze_loaded_heap

class Node:
    pass

kept, dropped = Node(), Node()
kept.me, dropped.me = kept, dropped  # two cycles: one alive, one garbage
gone = weakref.ref(dropped)
del dropped
gc.disable()  # only freeze_loaded_heap's own collection may free the garbage
frozen = freeze_loaded_heap()
print(gone() is None, frozen == gc.get_freeze_count() > 0, gc.get_count()[0] < 50)
"""


def test_freezing_the_loaded_heap_collects_garbage_first() -> None:
    """Run apart: freezing the test process's own heap would keep its garbage cycles forever."""
    out = subprocess.run([sys.executable, "-c", FREEZE_PROBE], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["True", "True", "True"], out.stderr
