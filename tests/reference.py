"""The slow, obvious references the metric tests compare against: the VOC devkit's voc_eval.py / voc_ap re-typed
loop for loop, and pycocotools run the standard way, on json files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def devkit_voc_ap(rec, prec, use_07_metric=False):
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def devkit_voc_eval(detections, truths, classidx, ovthresh=0.5, use_07_metric=False):
    """voc_eval.py's AP of class `classidx`: detections, one ndarray[K, 6] (x1, y1, x2, y2, score, class) per image;
    truths, per image, objects with .boxes, .labels and .difficult. NaN without positives, as 0/0 in the devkit."""
    class_recs, npos = {}, 0
    for image, truth in enumerate(truths):
        keep = truth.labels == classidx
        difficult = truth.difficult[keep]
        npos += int(np.sum(~difficult))
        class_recs[image] = {"bbox": truth.boxes[keep], "difficult": difficult, "det": [False] * int(keep.sum())}
    image_ids, confidence, BB = [], [], []
    for image, dets in enumerate(detections):
        for row in dets:
            if int(row[5]) == classidx:
                image_ids.append(image)
                confidence.append(row[4])
                BB.append(row[:4])
    if not BB:
        return 0.0 if npos else float("nan")
    confidence, BB = np.array(confidence), np.array(BB)
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    if npos == 0:
        return float("nan")
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return devkit_voc_ap(rec, prec, use_07_metric)


def standard_pycocotools(gt_json: dict, results: list[dict], tmp_path: Path) -> np.ndarray:
    """COCOeval's stats[:6] (mAP50-95, AP50, AP75, APs, APm, APl; -1 where undefined) for a ground-truth dataset dict
    and detections in results format, both written to json files in tmp_path and read back as pycocotools reads them."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    coco_gt = COCO(str(tmp_path / "gt.json"))
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(tmp_path / "dt.json")), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats[:6]


def to_results(detections, image_ids, category_ids):
    """Detections per image (ndarray[K, 6]) in COCO results format, with the given image and category ids."""
    return [{"image_id": image_ids[i], "category_id": category_ids[int(c)], "bbox": [x1, y1, x2 - x1, y2 - y1],
             "score": s} for i, dets in enumerate(detections) for x1, y1, x2, y2, s, c in dets.tolist()]
