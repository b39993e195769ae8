"""Compare COVID-19 bundles on the same validation and test images, per source (issue 6).

    .venv/bin/python -m training.recipes.covid_compare \
        --bundle shipped=models/covid --bundle cand=runs/<run>/bundles/<run> \
        [--manifest runs/manifests/covid_multisource.csv] [--lung-bundle models/lungs] \
        [--out runs/covid_compare.json] [--md runs/covid_compare.md] [--splits validation test]

A split named ``train+validation`` scores the rows of both splits as one set (for a model that trained
on none of them, e.g. the NIH-only measurement of ``nih_finding_transfer.toml``).

Every bundle is loaded the way the pipeline loads it and scored through the pipeline's own
preprocessing (``training.evaluate.classification_scores``) with lung masks from the lungs bundle, so
every figure comes from running the model. A bundle that carries its lungs bundle (``input_lungs/``)
is scored with that one's masks, as the pipeline does; ``--lung-bundle`` is for bundles without one.
For each split it reports:

- ``within_ieee8023_auc``: ieee8023 COVID-19 vs ieee8023 other findings (one collection: the
  collection cannot carry the label), bootstrap 95% CI;
- ``covid_vs_openist_auc``: ieee8023 COVID-19 vs OpenIST normal adults (a collection no candidate
  is trained on), bootstrap 95% CI;
- ``selection_score``: the mean of those two AUCs (the rule written down before the test figures of
  the issue-6 candidates were looked at: the candidate with the highest VALIDATION score ships, and only
  if it beats the shipped model's validation score);
- ``pooled_auc``: all images of the split (ieee8023 + NIH + OpenIST), ``pooled_auc_ieee_nih``: ieee8023 +
  NIH only (the images of the old card's "lungs-only AUC");
- ``lungs_removed_auc`` on ieee8023 + NIH: the lungs blanked before preprocessing (a lungs-only model
  then sees one constant image: 0.5 by construction; measured, not assumed);
- per source: n, positives, AUC, sensitivity/specificity at the bundle's operating threshold with
  Wilson 95% CI, median and mean P(COVID-19);
- ``source_index``: AUC of P(COVID-19) separating ieee8023 non-COVID from NIH (both negative;
  0.5 = the score ignores the collection).

When the rows' findings are known (they are, from the manifest), also, report only:

- ``covid_vs_ieee8023_no_finding_auc``: ieee8023 COVID-19 vs the collection's own "No Finding" pictures:
  COVID-19 against normal-looking lungs from the SAME collection, the situation of a hospital that sends
  both (session 8: 2.1.0's recipe is below chance here out of fold, while it ranks COVID-19 above the
  normals of other collections);
- ``nih_finding_vs_no_finding_auc``: inside NIH (all COVID-19 negative), images with a finding
  ("Pneumonia", ...) vs "No Finding": whether the score sees abnormal lungs at all inside one collection;
- ``within_ieee8023_by_finding``: COVID-19 vs each kind of ieee8023 negative (its first finding), n and AUC.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.metrics import wilson_ci

REPO = Path(__file__).resolve().parents[2]


def auc_ci(y: np.ndarray, s: np.ndarray, n_boot: int, seed: int = 0) -> dict[str, Any] | None:
    from training.metrics import bootstrap_ci, roc_auc

    if len(set(y.tolist())) < 2:
        return None
    lo, hi = bootstrap_ci(roc_auc, y, s, n_boot=n_boot, seed=seed)
    return {"auc": roc_auc(y, s), "ci95": [lo, hi], "n": int(y.size), "positives": int(y.sum())}


def finding_figures(
    y: np.ndarray, s: np.ndarray, ds: np.ndarray, findings: Sequence[Sequence[str]], n_boot: int
) -> dict[str, Any]:
    """The report-only figures that need the findings (see the module docstring)."""
    from training.finding_head import has_finding

    if len(findings) != y.size:
        raise ValueError(f"{len(findings)} findings for {y.size} scores")
    abnormal = np.array([has_finding(f) for f in findings])
    first = np.array([f[0] if f else "No Finding" for f in findings])
    ieee, nih = ds == "ieee8023", ds == "nih_cxr14"
    pos = ieee & (y == 1)
    out: dict[str, Any] = {}
    m = pos | (ieee & (y == 0) & ~abnormal)
    out["covid_vs_ieee8023_no_finding_auc"] = auc_ci(y[m], s[m], n_boot)
    out["nih_finding_vs_no_finding_auc"] = auc_ci(abnormal[nih].astype(int), s[nih], n_boot)
    by: dict[str, Any] = {}
    negatives = ieee & (y == 0)
    for kind in sorted(set(first[negatives].tolist())):
        these = negatives & (first == kind)
        e = auc_ci(y[pos | these], s[pos | these], n_boot)
        by[kind] = {"n": int(these.sum()), "auc": e["auc"] if e else None}
    out["within_ieee8023_by_finding"] = by
    return out


def split_report(
    y: np.ndarray,
    s: np.ndarray,
    ds: np.ndarray,
    threshold: float,
    n_boot: int,
    removed: np.ndarray | None = None,
    findings: Sequence[Sequence[str]] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ieee = ds == "ieee8023"
    pos = ieee & (y == 1)
    openist = (ds == "openist") & (y == 0)
    nih = ds == "nih_cxr14"
    out["within_ieee8023_auc"] = auc_ci(y[ieee], s[ieee], n_boot)
    m = pos | openist
    out["covid_vs_openist_auc"] = auc_ci(y[m], s[m], n_boot) if openist.any() else None
    if out["within_ieee8023_auc"] and out["covid_vs_openist_auc"]:
        pair = (out["within_ieee8023_auc"]["auc"], out["covid_vs_openist_auc"]["auc"])
        out["selection_score"] = 0.5 * (pair[0] + pair[1])
    else:
        out["selection_score"] = None
    out["pooled_auc"] = auc_ci(y, s, n_boot)
    m = ieee | nih
    out["pooled_auc_ieee_nih"] = auc_ci(y[m], s[m], n_boot)
    if removed is not None:
        from training.metrics import roc_auc

        both = len(set(y[m].tolist())) == 2
        out["lungs_removed_auc_ieee_nih"] = roc_auc(y[m], removed[m]) if both else None
        out["lungs_removed_distinct_scores"] = int(np.unique(np.round(removed[m], 6)).size)
    neg = ieee & (y == 0)
    out["source_index"] = (
        auc_ci(np.r_[np.ones(neg.sum()), np.zeros(nih.sum())].astype(int), np.r_[s[neg], s[nih]], n_boot)
        if neg.any() and nih.any()
        else None
    )
    if findings is not None:
        out.update(finding_figures(y, s, ds, findings, n_boot))
    per: dict[str, Any] = {}
    for name in sorted(set(ds.tolist())):
        k = ds == name
        yy, ss = y[k], s[k]
        called = ss >= threshold
        e: dict[str, Any] = {
            "n": int(k.sum()),
            "positives": int(yy.sum()),
            "auc": auc_ci(yy, ss, n_boot)["auc"] if len(set(yy.tolist())) == 2 else None,
            "median_p": float(np.median(ss)),
            "mean_p": float(np.mean(ss)),
        }
        for lab, key in ((1, "sensitivity"), (0, "specificity")):
            sel = yy == lab
            if sel.any():
                hit = int((called[sel] == bool(lab)).sum())
                e[key] = {
                    "value": hit / int(sel.sum()),
                    "k": hit,
                    "n": int(sel.sum()),
                    "wilson_ci95": wilson_ci(hit, int(sel.sum())),
                }
            if lab == 0 and sel.any():
                e["median_p_negatives"] = float(np.median(ss[sel]))
        per[name] = e
    out["per_source"] = per
    return out


def score_bundle(bundle_dir: Path, rows: list, lung_bundle: Path, cache_dir: Path, lungs_removed: bool):
    from pipelines.bundle import input_lungs_dir, load_bundle, read_metadata
    from training.cache import ArrayCache
    from training.evaluate import classification_scores, predict_lung_masks

    meta = read_metadata(bundle_dir)
    bundle = load_bundle(bundle_dir, "covid")
    cache = ArrayCache(cache_dir)
    masks = predict_lung_masks(input_lungs_dir(bundle_dir) or lung_bundle, rows, cache)
    usable = [r for r in rows if r.image_path in masks]
    in_spec = meta.input.to_dict()
    s = classification_scores(bundle.network, usable, cache, in_spec, lung_masks=masks)
    removed = None
    if lungs_removed:
        try:
            removed = classification_scores(
                bundle.network, usable, cache, in_spec, variant="lungs_removed", lung_masks=masks
            )
        except ValueError as exc:  # EmptyLungMaskError is a ValueError
            logging.warning("lungs-removed scores unavailable: %s", exc)
    return meta, usable, s, removed


def fmt_auc(e: dict | None) -> str:
    if not e:
        return "n/a"
    return f"{e['auc']:.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]"


def fmt_spec(e: dict | None) -> str:
    if not e or "specificity" not in e:
        return "n/a"
    sp = e["specificity"]
    called = f"{sp['n'] - sp['k']}/{sp['n']} called COVID-19"
    return f"{sp['value']:.2f} ({called}), median P {e['median_p_negatives']:.2f}"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| candidate | threshold | VAL score (rule) | VAL within-ieee8023 AUC | VAL COVID vs OpenIST AUC "
        "| TEST within-ieee8023 AUC | TEST COVID vs OpenIST AUC | TEST lungs-only AUC (ieee8023+NIH) "
        "| TEST lungs-removed AUC | TEST source index | TEST NIH specificity | TEST OpenIST specificity |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["bundles"].items():
        v, t = r.get("validation", {}), r.get("test", {})
        score = v.get("selection_score")
        lr = t.get("lungs_removed_auc_ieee_nih")
        distinct = t.get("lungs_removed_distinct_scores")
        removed = "n/a" if lr is None else f"{lr:.3f} ({distinct} distinct scores)"
        score_txt = "n/a" if score is None else f"{score:.3f}"
        lines.append(
            f"| {name} (`{r['model']}`) | {r['threshold']:.3f} | {score_txt} | "
            f"{fmt_auc(v.get('within_ieee8023_auc'))} | {fmt_auc(v.get('covid_vs_openist_auc'))} | "
            f"{fmt_auc(t.get('within_ieee8023_auc'))} | {fmt_auc(t.get('covid_vs_openist_auc'))} | "
            f"{fmt_auc(t.get('pooled_auc_ieee_nih'))} | {removed} | "
            f"{fmt_auc(t.get('source_index'))} | "
            f"{fmt_spec(t.get('per_source', {}).get('nih_cxr14'))} | "
            f"{fmt_spec(t.get('per_source', {}).get('openist'))} |"
        )
    return "\n".join(lines) + "\n"


def _met(value: float | None, ok: bool) -> str:
    return "n/a" if value is None else ("met" if ok else "MISSED")


def _p(e: dict | None, key: str) -> str:
    if not e or key not in e:
        return "n/a"
    v = e[key]
    lo, hi = v["wilson_ci95"]
    return f"{v['value']:.2f} ({v['k']}/{v['n']}, Wilson 95% CI [{lo:.2f}, {hi:.2f}])"


def card_section(results: dict[str, Any], new: str, old: str) -> str:
    """Card text for the shipped bundle ``new`` against ``old`` (test split), from the JSON."""
    n, o = results["bundles"][new], results["bundles"][old]
    t, ot = n["test"], o["test"]
    w, lo = t["within_ieee8023_auc"], t["pooled_auc_ieee_nih"]
    lr = t.get("lungs_removed_auc_ieee_nih")
    nih, opn, ie = (t["per_source"].get(k, {}) for k in ("nih_cxr14", "openist", "ieee8023"))
    onih, oopn, oie = (ot["per_source"].get(k, {}) for k in ("nih_cxr14", "openist", "ieee8023"))
    lines = [
        f"## Results against the targets (held-out test, shipped fp16 bundle `{n['model']}`)",
        "",
        "Computed by `training/recipes/covid_compare.py` (numbers in `metadata.json` under `covid_compare`).",
        "",
        "| target | required | measured (bootstrap 95% CI) | |",
        "|---|---|---|---|",
        f"| within-source AUC (ieee8023 COVID-19 vs other findings, {w['positives']} / {w['n']}) | >= 0.80 | "
        f"{fmt_auc(w)} | {_met(w['auc'], w['auc'] >= 0.80)} |",
        f"| lungs-removed AUC (ieee8023 + NIH test) | <= 0.60 | "
        f"{'n/a' if lr is None else f'{lr:.3f}'} "
        f"({t.get('lungs_removed_distinct_scores')} distinct score(s): "
        "the lungs-only input is empty when the lungs are blanked) | "
        f"{_met(lr, lr is not None and lr <= 0.60)} (by construction) |",
        f"| lungs-only AUC (ieee8023 + NIH test, {lo['positives']} / {lo['n']}) | >= 0.80 | {fmt_auc(lo)} | "
        f"{_met(lo['auc'], lo['auc'] >= 0.80)} |",
        f"| lungs-only AUC, all test images incl. OpenIST ({t['pooled_auc']['positives']} / "
        f"{t['pooled_auc']['n']}) | report | {fmt_auc(t['pooled_auc'])} | |",
        f"| ieee8023 COVID-19 vs OpenIST normal adults (unseen collection) | report | "
        f"{fmt_auc(t['covid_vs_openist_auc'])} | |",
        f"| source index (ieee8023 non-COVID vs NIH; 0.5 = ignores the collection) | report | "
        f"{fmt_auc(t['source_index'])} | |",
        "",
        f"Per source, at the operating threshold {n['threshold']:.3f} (test split):",
        "",
        f"- ieee8023: n={ie.get('n')}, {ie.get('positives')} COVID-19, AUC {ie.get('auc', 0):.3f}; "
        f"sensitivity {_p(ie, 'sensitivity')}; specificity {_p(ie, 'specificity')}",
        f"- NIH ChestX-ray14 (all negative, trained-on collection, held-out patients): n={nih.get('n')}; "
        f"specificity {_p(nih, 'specificity')}; median P(COVID-19) {nih.get('median_p', float('nan')):.2f}",
        f"- OpenIST normal adults (collection never trained on): n={opn.get('n')}; specificity "
        f"{_p(opn, 'specificity')}; median P(COVID-19) {opn.get('median_p', float('nan')):.2f}",
        "",
        f"### Against the previous model (`{o['model']}`, threshold {o['threshold']:.3f}) "
        "on the same test images",
        "",
        "| figure | previous | this model |",
        "|---|---|---|",
        f"| within-ieee8023 AUC | {fmt_auc(ot['within_ieee8023_auc'])} | {fmt_auc(w)} |",
        f"| lungs-only AUC (ieee8023 + NIH) | {fmt_auc(ot['pooled_auc_ieee_nih'])} | {fmt_auc(lo)} |",
        f"| ieee8023 COVID-19 vs OpenIST normals AUC | {fmt_auc(ot['covid_vs_openist_auc'])} | "
        f"{fmt_auc(t['covid_vs_openist_auc'])} |",
        f"| source index | {fmt_auc(ot['source_index'])} | {fmt_auc(t['source_index'])} |",
        f"| ieee8023 sensitivity | {_p(oie, 'sensitivity')} | {_p(ie, 'sensitivity')} |",
        f"| ieee8023 specificity (other findings) | {_p(oie, 'specificity')} | {_p(ie, 'specificity')} |",
        f"| NIH specificity | {_p(onih, 'specificity')} | {_p(nih, 'specificity')} |",
        f"| NIH median P | {onih.get('median_p', float('nan')):.2f} | "
        f"{nih.get('median_p', float('nan')):.2f} |",
        f"| OpenIST specificity | {_p(oopn, 'specificity')} | {_p(opn, 'specificity')} |",
        f"| OpenIST median P | {oopn.get('median_p', float('nan')):.2f} | "
        f"{opn.get('median_p', float('nan')):.2f} |",
        "",
        "### Every candidate, validation and test (same images; the rule used the VALIDATION score only)",
        "",
        markdown(results),
    ]
    return "\n".join(lines)


def rows_of_split(rows: Sequence, split: str) -> list:
    """The rows of ``split``; ``a+b`` names the rows of splits a and b together."""
    wanted = set(split.split("+"))
    return [r for r in rows if r.split in wanted]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", action="append", default=[], help="NAME=PATH (repeatable)")
    ap.add_argument("--manifest", type=Path, default=REPO / "runs/manifests/covid_multisource.csv")
    ap.add_argument("--lung-bundle", type=Path, default=REPO / "models/lungs")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "runs/cache")
    ap.add_argument("--splits", nargs="+", default=["validation", "test"])
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=REPO / "runs/covid_compare.json")
    ap.add_argument("--md", type=Path)
    ap.add_argument(
        "--card",
        nargs=3,
        metavar=("NEW", "OLD", "OUT_MD"),
        help="write the card section for bundle NEW against OLD (names given to --bundle)",
    )
    ap.add_argument("--card-only", action="store_true", help="score nothing, render from --out")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from training.manifest import read_manifest
    from training.tasks import COVID

    all_rows = [r for r in read_manifest(args.manifest) if COVID.accepts(r)]
    results: dict[str, Any] = {"manifest": str(args.manifest), "bundles": {}}
    if args.out.is_file():
        results = json.loads(args.out.read_text())
        results.setdefault("bundles", {})
    for item in [] if args.card_only else args.bundle:
        name, _, path = item.partition("=")
        entry: dict[str, Any] = {"path": path}
        for split in args.splits:
            rows = rows_of_split(all_rows, split)
            meta, usable, s, removed = score_bundle(
                Path(path), rows, args.lung_bundle, args.cache_dir, lungs_removed=split == "test"
            )
            y = np.array([COVID.label_of(r) for r in usable], dtype=int)
            ds = np.array([r.dataset for r in usable])
            entry["model"] = f"{meta.name} {meta.version}"
            entry["threshold"] = float(meta.operating_threshold)
            entry[split] = split_report(
                y, s, ds, float(meta.operating_threshold), args.n_boot, removed, [r.findings for r in usable]
            )
            entry[split]["skipped_without_lung_mask"] = len(rows) - len(usable)
            logging.info("%s %s: score %s", name, split, entry[split]["selection_score"])
        results["bundles"][name] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    md = markdown(results)
    if args.md:
        args.md.write_text(md)
    if args.card:
        new, old, out_md = args.card
        Path(out_md).write_text(card_section(results, new, old) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
