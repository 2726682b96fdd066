"""Decoupled distillation (MobileSAM paper, arXiv 2306.14289): train a lightweight TinyViT image
encoder to reproduce a SAM teacher's image embeddings, then pair it with the teacher's prompt
encoder and mask decoder.

1. `embed_teacher` runs the teacher once per image (a folder, or SA-1B tar shards read in place:
   `sources`) and stores float16 embeddings in chunk files (`data.TeacherEmbeddingStore`); torchrun shards it.
2. `train.train` fits the student with an MSE loss against them (DDP through torchrun).
3. `export.export_checkpoint` writes student encoder + teacher decoder as an official `mobile_sam.pt`.
4. `evaluate.evaluate` measures the student's masks against the reference model's (mIoU), speed, size.
"""

from .data import TeacherEmbeddingStore
from .export import export_checkpoint
from .sources import list_images, open_source
from .teacher import embed_teacher
from .train import TrainConfig, train

__all__ = [
    "TeacherEmbeddingStore",
    "list_images",
    "open_source",
    "embed_teacher",
    "TrainConfig",
    "train",
    "export_checkpoint",
]
