"""Turn automatic-mask records into what people load elsewhere: an instance label image, or
COCO-style JSON annotations."""

from typing import Any

import numpy as np

from .amg_utils import mask_to_coco_rle, uncompressed_rle_to_mask

LABEL_ORDERS = ("area", "score")


def record_mask(record: dict[str, Any]) -> np.ndarray:
    """(H, W) bool mask of a record in any output mode."""
    segmentation = record["segmentation"]
    if isinstance(segmentation, np.ndarray):
        return segmentation.astype(bool, copy=False)
    counts = segmentation["counts"]
    if isinstance(counts, list):
        return uncompressed_rle_to_mask(segmentation)
    from pycocotools import mask as mask_utils

    rle = dict(segmentation, counts=counts.encode("utf-8") if isinstance(counts, str) else counts)
    return mask_utils.decode(rle).astype(bool)


def records_to_label_image(
    records: list[dict[str, Any]], shape: tuple[int, int] | None = None, order: str = "area"
) -> np.ndarray:
    """(H, W) int32 instance labels: 0 is background, 1..N the records' masks, without overlaps.

    order "area": larger masks are painted first and smaller ones on top, so small objects inside
    large ones stay visible; label i is the i-th largest mask. order "score": higher
    predicted_iou (then stability_score) wins overlaps; label i is the i-th best mask.
    A mask entirely covered by better ones leaves its label unused, so labels may have gaps.
    shape is required when there are no records.
    """
    if order not in LABEL_ORDERS:
        raise ValueError(f"order must be one of {LABEL_ORDERS}, not {order!r}")
    masks = [record_mask(r) for r in records]
    if shape is None:
        if not masks:
            raise ValueError("shape is needed to make a label image from no records")
        shape = masks[0].shape
    shape = tuple(int(s) for s in shape)
    labels = np.zeros(shape, dtype=np.int32)
    if order == "area":
        ranked = sorted(
            range(len(records)), key=lambda i: -int(records[i]["area"])
        )  # stable: ties keep order
    else:
        ranked = sorted(
            range(len(records)), key=lambda i: (-records[i]["predicted_iou"], -records[i]["stability_score"])
        )
    for label, i in enumerate(ranked, start=1):
        if masks[i].shape != shape:
            raise ValueError(f"mask {i} has shape {masks[i].shape}, the label image {shape}")
        if order == "area":
            labels[masks[i]] = label  # later (smaller) masks paint over earlier ones
        else:
            labels[masks[i] & (labels == 0)] = label  # earlier (better) masks keep their pixels
    return labels


def records_to_coco_json(
    records: list[dict[str, Any]], image_id: int = 1, file_name: str | None = None
) -> dict[str, Any]:
    """A COCO-format dict {"images", "annotations", "categories"} with one "object" category.

    Segmentations are compressed COCO RLE (str counts), bbox is [x, y, w, h]; each annotation
    also keeps SAM's predicted_iou, stability_score, point_coords and crop_box.
    """
    annotations = []
    height = width = None
    for index, record in enumerate(records, start=1):
        mask = record_mask(record)
        height, width = mask.shape
        annotations.append(
            {
                "id": index,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": mask_to_coco_rle(mask),
                "area": int(record["area"]),
                "bbox": [float(v) for v in record["bbox"]],
                "iscrowd": 0,
                "score": float(record["predicted_iou"]),
                "predicted_iou": float(record["predicted_iou"]),
                "stability_score": float(record["stability_score"]),
                "point_coords": [[float(v) for v in p] for p in record["point_coords"]],
                "crop_box": [float(v) for v in record["crop_box"]],
            }
        )
    image = {"id": image_id}
    if file_name is not None:
        image["file_name"] = file_name
    if height is not None:
        image.update(height=int(height), width=int(width))
    return {
        "images": [image],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
    }
